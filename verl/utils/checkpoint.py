"""Checkpoints in EasyR1's layout, written crash-safe.

    ROOT/
      latest_global_step.txt            written last, atomically (os.replace)
      global_step_N/
        actor/model_world_size_W_rank_R.pt     this rank's parameter shards (dim-0 pieces)
        actor/optim_world_size_W_rank_R.pt     this rank's optimizer state (local pieces)
        actor/extra_state_world_size_W_rank_R.pt  lr scheduler, RNG states
        actor/huggingface/                     config, tokenizer, processor (no weights)
        dataloader.pt                          sampler position
        manifest.json                          size + SHA-256 of every file above, written last

Every rank writes into `global_step_N.tmp`; the driver renames it to `global_step_N` only once
all ranks have finished and the manifest is written, then replaces `latest_global_step.txt`. A
crash at any point leaves either the previous complete checkpoint or a `.tmp` directory that
resume ignores. Damage after the fact (a truncated or altered file) fails the manifest check:
resume then falls back to the newest intact checkpoint, and the merger refuses, naming the file.
A checkpoint without a manifest is loaded (unverified) only in a folder where no checkpoint has
one (written before manifests existed); beside checkpoints that have one it counts as damaged.
A write that fails (disk full, no permission) raises `CheckpointWriteError` naming the folder,
the file and the OS cause, and leaves only the `.tmp` directory behind.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from verl.utils.manifest import MANIFEST, read_manifest, verify_manifest

LATEST_FILE = "latest_global_step.txt"
STEP_DIR = re.compile(r"^global_step_(\d+)$")


RANK_FILES = ("model", "optim", "extra_state")


class CheckpointError(RuntimeError):
    """A checkpoint folder problem the user has to resolve (damaged checkpoints, a folder in use
    by another run, a refused resume); the message is written for the user."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed: names the folder, the file and the OS cause (ENOSPC, EACCES)."""

    def __init__(self, folder: str, file: str | None, cause: str):
        self.folder, self.file, self.cause = folder, file, cause
        super().__init__(
            f"checkpoint write failed in {folder}: {file or 'a file'} ({cause}); no checkpoint was published for "
            "this step (resume ignores the unfinished global_step_N.tmp) and earlier checkpoints are untouched"
        )

    def __reduce__(self):  # raised in a Ray worker, rebuilt in the driver
        return type(self), (self.folder, self.file, self.cause)

    @classmethod
    def from_error(cls, path: str, error: BaseException) -> CheckpointWriteError:
        """From the exception a write of `path` (a file, or the folder being written) raised."""
        os_error = _os_error_in(error)
        if os_error is None:
            return cls(os.path.dirname(path), os.path.basename(path), f"{type(error).__name__}: {error}")
        code = errno.errorcode.get(os_error.errno, str(os_error.errno))
        failed = os_error.filename if isinstance(os_error.filename, str) else path
        return cls(os.path.dirname(failed), os.path.basename(failed), f"{code}: {os_error.strerror}")


def _os_error_in(error: BaseException | None) -> OSError | None:
    """The OSError with an errno behind `error`: torch's zip writer reports a failed write as a
    RuntimeError ("unexpected pos ...") whose context holds the file object's OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def naming_write_errors(path: str):
    """Turns a failed write under `path` (OSError, or torch's RuntimeError hiding one) into a
    `CheckpointWriteError` naming the file and the OS cause."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except (OSError, RuntimeError) as error:
        raise CheckpointWriteError.from_error(path, error) from error


def save_file(obj, path: str) -> None:
    """`torch.save` through a Python file object, so a failed write keeps its OS cause (ENOSPC,
    EACCES) for the `CheckpointWriteError` it becomes (writing to a path, torch drops it)."""
    with naming_write_errors(path), open(path, "wb") as f:
        torch.save(obj, f)


def shard_file(kind: str, world_size: int, rank: int) -> str:
    return f"{kind}_world_size_{world_size}_rank_{rank}.pt"


def to_local(value):
    """DTensor -> its local piece (plain tensor); recurses through dicts/lists."""
    if hasattr(value, "to_local"):
        return value.to_local().detach().cpu().clone()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: to_local(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_local(v) for v in value)
    return value


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rank_state(
    actor_dir: str, world_size: int, rank: int, model: torch.nn.Module, optimizer, extra: dict,
    keep: Callable[[str], bool] | None = None,
) -> None:
    """Writes this rank's model shards, optimizer state and extra state into `actor_dir`.
    `keep(name)`: which state-dict entries to write (None: all); a LoRA run keeps only its
    adapters, since the frozen base is the model folder the run starts from."""
    with naming_write_errors(actor_dir):
        os.makedirs(actor_dir, exist_ok=True)
    state = model.state_dict()
    if keep is not None:
        state = {name: value for name, value in state.items() if keep(name)}
    save_file(to_local(state), os.path.join(actor_dir, shard_file("model", world_size, rank)))
    save_file(to_local(optimizer.state_dict()), os.path.join(actor_dir, shard_file("optim", world_size, rank)))
    save_file({**extra, "rng": rng_state()}, os.path.join(actor_dir, shard_file("extra_state", world_size, rank)))


def _like(local: torch.Tensor, reference) -> torch.Tensor:
    """Wraps a saved local piece back into the DTensor layout of `reference` (a live parameter
    or state tensor); plain tensors pass through."""
    if hasattr(reference, "device_mesh"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(
            local.to(reference.to_local().device), reference.device_mesh, reference.placements,
            shape=reference.shape, stride=reference.stride(),
        )
    return local.to(reference.device)


def load_rank_state(
    actor_dir: str, world_size: int, rank: int, model: torch.nn.Module, optimizer,
    keep: Callable[[str], bool] | None = None,
) -> dict:
    """Restores what save_rank_state wrote (with the same `keep`: the other entries keep the
    values `model` was loaded with); returns the extra state (RNG already restored). Errors name
    the missing file and the world size the checkpoint was written with."""
    paths = {kind: os.path.join(actor_dir, shard_file(kind, world_size, rank)) for kind in RANK_FILES}
    for kind, path in paths.items():
        if not os.path.isfile(path):
            found = sorted(f for f in os.listdir(actor_dir) if f.endswith(".pt")) if os.path.isdir(actor_dir) else []
            raise FileNotFoundError(
                f"checkpoint {actor_dir} lacks {os.path.basename(path)} (this run has world size {world_size}); "
                f"found: {found[:6]}{' ...' if len(found) > 6 else ''}"
            )
    live = model.state_dict()
    wanted = [name for name in live if keep is None or keep(name)]
    saved = torch.load(paths["model"], map_location="cpu", weights_only=False)
    missing = set(wanted) - set(saved)
    if missing:
        raise KeyError(f"{paths['model']} lacks parameters: {sorted(missing)[:5]}")
    model.load_state_dict({name: _like(saved[name], live[name]) for name in wanted}, strict=keep is None)
    optim_state = torch.load(paths["optim"], map_location="cpu", weights_only=False)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in optim_state["state"].items():
        param = params[int(index)]
        optim_state["state"][index] = {
            k: (_like(v, param) if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in state.items()
        }
    optimizer.load_state_dict(optim_state)
    extra = torch.load(paths["extra_state"], map_location="cpu", weights_only=False)
    set_rng_state(extra.pop("rng"))
    return extra


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"global_step_{step}")


def temporary_step_dir(root: str, step: int) -> str:
    """Fresh directory the ranks write into; a leftover from a crashed save is removed."""
    path = step_dir(root, step) + ".tmp"
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def commit_checkpoint(root: str, step: int, tmp_dir: str, save_limit: int) -> str:
    """Publishes a fully written checkpoint: rename, then point latest_global_step.txt at it,
    then prune old ones beyond `save_limit` (-1 keeps all)."""
    final = step_dir(root, step)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp_dir, final)
    latest_tmp = os.path.join(root, LATEST_FILE + ".tmp")
    with open(latest_tmp, "w") as f:
        f.write(str(step))
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, os.path.join(root, LATEST_FILE))
    if save_limit > 0:
        for old in list_checkpoints(root)[:-save_limit]:
            shutil.rmtree(step_dir(root, old))
    return final


def list_checkpoints(root: str) -> list[int]:
    """Steps of complete checkpoints under root, ascending (`.tmp` leftovers are not complete)."""
    if not os.path.isdir(root):
        return []
    steps = [int(m.group(1)) for name in os.listdir(root) if (m := STEP_DIR.match(name))]
    return sorted(steps)


def has_manifests(root: str) -> bool:
    """Whether any complete checkpoint under root has a manifest: from then on, every checkpoint
    of that folder must have one."""
    return any(os.path.isfile(os.path.join(step_dir(root, step), MANIFEST)) for step in list_checkpoints(root))


def verify_checkpoint(path: str, manifest_required: bool = False) -> tuple[bool, str | None]:
    """(usable, note): a checkpoint whose manifest matches is (True, None); one without a manifest
    is (True, note saying it is unverified) when written before manifests existed, but damaged
    when `manifest_required` (its folder's other checkpoints have one: the manifest was lost);
    a damaged one is (False, the problem naming the file)."""
    try:
        has_manifest = read_manifest(path) is not None
    except ValueError as error:
        return False, str(error)
    if not has_manifest:
        if manifest_required:
            return False, (
                f"{os.path.join(path, MANIFEST)} is missing while other checkpoints in {os.path.dirname(path)} have "
                "one: its files cannot be checked"
            )
        return True, f"{path} has no {MANIFEST} (written before integrity manifests): loaded unverified"
    problem = verify_manifest(path)
    return problem is None, problem


def find_latest_intact_checkpoint(root: str) -> tuple[str | None, list[str]]:
    """The newest checkpoint under root that passes `verify_checkpoint` (the one
    latest_global_step.txt names first), and a warning for each one skipped or unverified."""
    warnings = []
    latest = find_latest_checkpoint(root)
    candidates = ([latest] if latest else []) + [
        step_dir(root, step) for step in reversed(list_checkpoints(root)) if step_dir(root, step) != latest
    ]
    manifest_required = has_manifests(root)
    for path in candidates:
        usable, note = verify_checkpoint(path, manifest_required)
        if usable:
            return path, warnings + ([note] if note else [])
        warnings.append(f"checkpoint {path} is damaged, skipped: {note}")
    return None, warnings


def set_aside_damaged(root: str) -> list[str]:
    """Renames every checkpoint under root to global_step_N.damaged (kept as evidence; a fresh
    start would otherwise overwrite them step by step); returns the new paths."""
    moved = []
    for step in list_checkpoints(root):
        target, copies = step_dir(root, step) + ".damaged", 1
        while os.path.exists(target):  # set aside before by an earlier fresh start: keep that too
            target, copies = f"{step_dir(root, step)}.damaged.{copies}", copies + 1
        os.replace(step_dir(root, step), target)
        moved.append(target)
    latest = os.path.join(root, LATEST_FILE)
    if os.path.isfile(latest):
        os.remove(latest)
    return moved


def find_latest_checkpoint(root: str) -> str | None:
    """The checkpoint latest_global_step.txt names, or the newest complete one if that file is
    missing or stale; None when there is none."""
    latest = os.path.join(root, LATEST_FILE)
    if os.path.isfile(latest):
        with open(latest) as f:
            text = f.read().strip()
        if text.isdigit() and os.path.isdir(step_dir(root, int(text))):
            return step_dir(root, int(text))
    steps = list_checkpoints(root)
    return step_dir(root, steps[-1]) if steps else None


def step_of(checkpoint_dir: str) -> int:
    match = STEP_DIR.match(os.path.basename(os.path.normpath(checkpoint_dir)))
    if not match:
        raise ValueError(f"{checkpoint_dir} is not a global_step_N checkpoint directory")
    return int(match.group(1))


WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth)$|\.safetensors\.index\.json$|\.bin\.index\.json$")


def save_hf_metadata(model_dir: str, target_dir: str) -> None:
    """Copies everything of a Hugging Face folder except the weights (config, generation
    config, tokenizer, processor, chat template) so a merge can rebuild a loadable folder."""
    os.makedirs(target_dir, exist_ok=True)
    for name in os.listdir(model_dir):
        source = os.path.join(model_dir, name)
        if os.path.isfile(source) and not WEIGHT_FILE.search(name):
            shutil.copy2(source, os.path.join(target_dir, name))
