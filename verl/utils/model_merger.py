"""Merges a sharded FSDP2 checkpoint (EasyR1 layout) into a Hugging Face model folder.

Input, as written by `verl.utils.checkpoint.save_rank_state` on W ranks:

    ACTOR_DIR/model_world_size_W_rank_R.pt   R = 0..W-1: dict[name, Tensor], the rank's local
                                             dim-0 pieces of the FSDP2 model's state_dict()
    ACTOR_DIR/huggingface/                   config, generation config, tokenizer, processor

FSDP2 (`fully_shard`, placement Shard(0)) splits every parameter along dim 0 with
`torch.chunk` semantics: ranks get ceil(d0 / W) rows in order, trailing ranks may get fewer or a
(0, ...) piece. Concatenating the pieces in rank order along dim 0 therefore restores the full
tensor exactly (checked bit for bit against `get_model_state_dict(full_state_dict=True)` in
tests/utils/test_model_merger.py).

Output: a folder `AutoModelForImageTextToText` / `AutoProcessor` / vLLM load directly, built in
`TARGET.tmp` and renamed into place, so an interrupted merge never leaves a partial TARGET.

A LoRA run's checkpoint (ACTOR_DIR/lora_config.json beside the shards) holds the adapter matrices
alone; the frozen base weights are read from the base model folder the run started from (its
`base_model`, or `base_model_dir` when that folder has moved; checkpoints written before
adapter-only saving hold the base weights too). The adapters are folded into plain weights
(W + alpha/r B A), and with `adapter_dir` the adapter alone is also written in PEFT's format.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig, PretrainedConfig, PreTrainedModel

from verl.models.qwen_vl import checkpoint_weight_name
from verl.utils.checkpoint import save_hf_metadata, shard_file
from verl.models.lora import (
    LORA_CONFIG_FILE,
    apply_lora,
    fold_adapters,
    is_adapter_name,
    load_lora_config,
    lora_scale,
    peft_adapter,
)
from verl.models.value_head import attach_value_head, is_value_checkpoint, mark_value_checkpoint
from verl.utils.manifest import MANIFEST, read_manifest, verify_manifest

logger = logging.getLogger(__name__)

HF_SUBDIR = "huggingface"
MODEL_SHARD = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# How many names an error message lists before it only counts the rest.
NAMES_SHOWN = 10


@dataclass(frozen=True)
class ShardLayout:
    """The model shard files of one checkpoint, in rank order."""

    local_dir: str
    world_size: int
    paths: tuple[str, ...]

    @property
    def hf_dir(self) -> str:
        return os.path.join(self.local_dir, HF_SUBDIR)


@dataclass(frozen=True)
class MergeResult:
    """What `merge_checkpoint` wrote."""

    target_dir: str
    world_size: int
    num_tensors: int  # merged state-dict entries, tied aliases included (lm_head.weight)
    weight_bytes: int  # size of the safetensors files written
    dtypes: tuple[str, ...]
    seconds: float
    adapter_dir: str | None = None  # where the PEFT adapter went (LoRA checkpoints with adapter_dir)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" ... ({len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else "")


def find_model_shards(local_dir: str) -> ShardLayout:
    """Finds `model_world_size_W_rank_R.pt` for R = 0..W-1 and the `huggingface/` folder.

    Raises FileNotFoundError for a missing directory, no shard files, a missing rank (naming the
    missing files) or a missing `huggingface/` config folder; ValueError when files of several
    world sizes are mixed or a rank lies outside 0..W-1.
    """
    if not os.path.isdir(local_dir):
        raise FileNotFoundError(f"checkpoint directory {local_dir} does not exist")
    ranks_by_world_size: dict[int, set[int]] = collections.defaultdict(set)
    for name in os.listdir(local_dir):
        if match := MODEL_SHARD.match(name):
            ranks_by_world_size[int(match.group(1))].add(int(match.group(2)))
    if not ranks_by_world_size:
        hint = (
            f"; it has an actor/ folder: did you mean {os.path.join(local_dir, 'actor')}?"
            if os.path.isdir(os.path.join(local_dir, "actor"))
            else ""
        )
        raise FileNotFoundError(
            f"no model_world_size_W_rank_R.pt files in {local_dir}: --local_dir must be a checkpoint's "
            f"actor folder (CKPT/global_step_N/actor){hint}"
        )
    if len(ranks_by_world_size) > 1:
        found = {w: sorted(r) for w, r in sorted(ranks_by_world_size.items())}
        raise ValueError(
            f"{local_dir} mixes model shards of several world sizes {sorted(found)} (ranks found: {found}); "
            "keep only the files of the run you want to merge"
        )
    (world_size, ranks), = ranks_by_world_size.items()
    missing = [shard_file("model", world_size, r) for r in range(world_size) if r not in ranks]
    if missing:
        raise FileNotFoundError(f"{local_dir} lacks {_listing(missing)} (world size {world_size})")
    stray = sorted(r for r in ranks if r >= world_size)
    if stray:
        raise ValueError(f"{local_dir} holds ranks {stray} beyond world size {world_size}")
    layout = ShardLayout(
        local_dir=local_dir,
        world_size=world_size,
        paths=tuple(os.path.join(local_dir, shard_file("model", world_size, r)) for r in range(world_size)),
    )
    if not os.path.isfile(os.path.join(layout.hf_dir, "config.json")):
        raise FileNotFoundError(
            f"{layout.hf_dir}/config.json is missing: the checkpoint's {HF_SUBDIR}/ folder (config, tokenizer, "
            "processor) is needed to rebuild the model"
        )
    return layout


class UnverifiedCheckpointError(ValueError):
    """The checkpoint has no manifest to check its files against (see `verify_shards`)."""


def verify_shards(layout: ShardLayout, allow_unverified: bool = False) -> None:
    """Checks the model shards (and, before a first merge into it, the huggingface/ metadata)
    against the checkpoint's manifest (CKPT/global_step_N/manifest.json): ValueError naming the
    file that is missing, truncated or altered. Without a manifest (a checkpoint written before
    manifests existed, or an actor/ folder copied out of its global_step_N) nothing can be
    checked: UnverifiedCheckpointError saying what went unchecked, unless `allow_unverified`,
    which merges with a warning saying the same."""
    step_dir = os.path.dirname(layout.local_dir)
    relative = [os.path.relpath(path, step_dir) for path in layout.paths]
    if os.path.isfile(os.path.join(layout.local_dir, LORA_CONFIG_FILE)):  # rank/alpha the fold uses
        relative.append(os.path.relpath(os.path.join(layout.local_dir, LORA_CONFIG_FILE), step_dir))
    hf_files = sorted(os.listdir(layout.hf_dir))
    if not any(name.endswith(".safetensors") for name in hf_files):  # not yet replaced by a merge
        relative += [os.path.relpath(os.path.join(layout.hf_dir, name), step_dir) for name in hf_files]
    try:
        has_manifest = read_manifest(step_dir) is not None
    except ValueError as error:
        raise ValueError(f"cannot verify {layout.local_dir}: {error}") from None
    if not has_manifest:
        unchecked = (
            f"{os.path.join(step_dir, MANIFEST)} does not exist, so the {len(relative)} files to merge "
            f"({_listing([os.path.basename(rel) for rel in relative])}) were not checked for truncation or "
            "altered bytes (a checkpoint written before integrity manifests, or an actor/ folder copied without "
            "its global_step_N/manifest.json)"
        )
        if not allow_unverified:
            raise UnverifiedCheckpointError(
                f"refusing to merge unverified {layout.local_dir}: {unchecked}; copy the whole global_step_N folder, "
                "or pass --allow_unverified to merge it anyway"
            )
        logger.warning("merging unverified %s (--allow_unverified): %s", layout.local_dir, unchecked)
        return
    problem = verify_manifest(step_dir, only=relative)
    if problem is not None:
        raise ValueError(f"checkpoint integrity check failed: {problem}")


def load_shard(path: str) -> dict[str, torch.Tensor]:
    """One rank's local pieces, memory-mapped so W shards of a large model need not fit in RAM
    at once. Raises ValueError naming the file when it is not a dict of plain tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError) as error:
        raise ValueError(
            f"cannot read {path} as a dict of plain tensors (as save_rank_state writes): {error}"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected dict[str, Tensor]")
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path} has non-tensor entries: {_listing(not_tensors)}")
    return state


def merge_shards(
    rank_states: Sequence[Mapping[str, torch.Tensor]],
    expected_shapes: Mapping[str, torch.Size],
    shard_names: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Full tensors from the ranks' local pieces.

    rank_states[r][name]: rank r's piece of `name`, shape (rows_r, *rest) with sum(rows_r) = d0.
    Returns name -> tensor of shape expected_shapes[name] (d0, *rest): the pieces concatenated
    along dim 0 in rank order. A tensor FSDP does not shard (a persistent buffer, a scalar) is
    saved whole by every rank; it is recognised by every piece having the full shape and kept
    once after checking the copies agree.

    Every rank must hold exactly the names of `expected_shapes`; errors name the key, the shard
    file (`shard_names[r]`) and the shapes involved.
    """
    expected = set(expected_shapes)
    for rank_state, shard_name in zip(rank_states, shard_names):
        missing = sorted(expected - set(rank_state))
        unexpected = sorted(set(rank_state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"{shard_name} does not match the model built from the config: "
                f"missing {len(missing)} [{_listing(missing)}], unexpected {len(unexpected)} [{_listing(unexpected)}]"
            )
    merged = {}
    for name, shape in expected_shapes.items():
        pieces = [rank_state[name] for rank_state in rank_states]
        dtypes = {piece.dtype for piece in pieces}
        if len(dtypes) > 1:
            raise ValueError(f"{name}: ranks saved different dtypes {[str(p.dtype) for p in pieces]} ({shard_names})")
        # Dim-0 pieces of W > 1 ranks sum to d0, so full-shape pieces on every rank mean a copy.
        if all(piece.shape == shape for piece in pieces):
            if not all(torch.equal(pieces[0], piece) for piece in pieces[1:]):
                raise ValueError(f"{name}: every rank saved the full shape {tuple(shape)} but the copies differ")
            merged[name] = pieces[0]
            continue
        concatenates = (
            len(shape) > 0
            and all(piece.dim() > 0 and piece.shape[1:] == shape[1:] for piece in pieces)
            and sum(piece.shape[0] for piece in pieces) == shape[0]
        )
        if not concatenates:
            raise ValueError(
                f"{name}: pieces {[tuple(p.shape) for p in pieces]} from {list(shard_names)} do not concatenate "
                f"along dim 0 to the model's shape {tuple(shape)}"
            )
        merged[name] = torch.cat(pieces, dim=0)
    return merged


def _tied_parameter_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that alias one parameter (e.g. [model.language_model.embed_tokens.weight, lm_head.weight])."""
    names_by_param: dict[int, list[str]] = collections.defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_param[id(param)].append(name)
    return [names for names in names_by_param.values() if len(names) > 1]


def _check_tied_equal(state: Mapping[str, torch.Tensor], groups: list[list[str]]) -> None:
    for names in groups:
        first = state[names[0]]
        differing = [name for name in names[1:] if not torch.equal(first, state[name])]
        if differing:
            raise ValueError(
                f"the config ties {names} but the checkpoint's {differing} differ from {names[0]}; "
                "set tie_word_embeddings in huggingface/config.json to match how the model was trained"
            )


def _prepare_target(target_dir: str, local_dir: str) -> None:
    """Refuses targets a merge must not replace: the checkpoint itself (or a folder holding it)
    and non-empty folders that are not model folders (no config.json)."""
    target, source = os.path.realpath(target_dir), os.path.realpath(local_dir)
    if os.path.commonpath([target, source]) == target:
        raise ValueError(f"target {target_dir} contains the checkpoint {local_dir}; choose another --target_dir")
    is_model_folder = os.path.isfile(os.path.join(target_dir, "config.json"))
    if os.path.isdir(target_dir) and os.listdir(target_dir) and not is_model_folder:
        raise FileExistsError(
            f"target {target_dir} exists, is not empty and is not a model folder (no config.json); "
            "refusing to replace it"
        )


def _publish(tmp_dir: str, target_dir: str) -> None:
    """Moves the finished folder into place. A previous TARGET is moved aside first (a directory
    cannot be renamed over a non-empty one) and deleted only once the new one is in place."""
    if not os.path.exists(target_dir):
        os.replace(tmp_dir, target_dir)
        return
    replaced = target_dir.rstrip(os.sep) + ".replaced"
    shutil.rmtree(replaced, ignore_errors=True)
    os.replace(target_dir, replaced)
    os.replace(tmp_dir, target_dir)
    shutil.rmtree(replaced)


def _most_common_float_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype most weights (by element count) have: config.json records only one."""
    counts: collections.Counter[torch.dtype] = collections.Counter()
    for tensor in state.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32


def _set_config_dtype(config: PretrainedConfig, dtype: torch.dtype) -> None:
    """Records the saved dtype in config.json, sub-configs (text, vision) included, so loaders
    reading any of them pick the dtype the weights have."""
    config.dtype = dtype
    for key in config.sub_configs:
        if (sub_config := getattr(config, key, None)) is not None:
            sub_config.dtype = dtype


def write_peft_adapter(adapter_dir: str, adapter_config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """`adapter_config.json` + `adapter_model.safetensors` (PEFT's layout), written atomically."""
    import json

    from safetensors.torch import save_file

    tmp_dir = adapter_dir.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    with open(os.path.join(tmp_dir, "adapter_config.json"), "w") as f:
        json.dump(adapter_config, f, indent=2)
    save_file(tensors, os.path.join(tmp_dir, "adapter_model.safetensors"))
    _publish(tmp_dir, adapter_dir)


def base_weights(base_model_dir: str, lora_config_path: str) -> dict[str, torch.Tensor]:
    """The frozen base of an adapter-only LoRA checkpoint, as the actor held it: the model
    folder's weights in fp32 (the actor's master dtype), by in-memory parameter name."""
    if not os.path.isfile(os.path.join(base_model_dir, "config.json")):
        raise FileNotFoundError(
            f"{lora_config_path} holds adapters only; their base model folder {base_model_dir} (its base_model) "
            "has no config.json: pass the base model folder with --base_model_dir"
        )
    base = AutoModelForImageTextToText.from_pretrained(base_model_dir, dtype=torch.float32)
    return dict(base.state_dict())


def merge_checkpoint(
    local_dir: str, target_dir: str | None = None, dtype: torch.dtype | None = None, adapter_dir: str | None = None,
    base_model_dir: str | None = None, allow_unverified: bool = False,
) -> MergeResult:
    """Merges `local_dir` (CKPT/global_step_N/actor, or .../critic: a value model, see
    `verl.models.value_head`) into a Hugging Face folder at `target_dir`
    (default `local_dir/huggingface`, as EasyR1 does). Tensors keep their saved dtype unless
    `dtype` is given. Keys are checked strictly against the model the config builds (with the
    run's adapters for a LoRA checkpoint, whose adapters are then folded into the base read from
    `base_model_dir` (default: the base model the checkpoint records); `adapter_dir` additionally
    receives the adapter alone in PEFT format). A checkpoint without a manifest is refused
    unless `allow_unverified` (see `verify_shards`).
    """
    start = time.perf_counter()
    local_dir = os.path.abspath(local_dir)
    layout = find_model_shards(local_dir)
    verify_shards(layout, allow_unverified)
    target_dir = os.path.abspath(target_dir) if target_dir else layout.hf_dir
    _prepare_target(target_dir, local_dir)

    config = AutoConfig.from_pretrained(layout.hf_dir)
    # Parameters on the meta device cost no memory; the merged tensors are assigned into them.
    with torch.device("meta"):
        model: PreTrainedModel = AutoModelForImageTextToText.from_config(config)
        if is_value_checkpoint(local_dir):  # a GAE critic: the LM head is a scalar value head
            attach_value_head(model)
    saved_lora = load_lora_config(local_dir)
    lora = saved_lora.config if saved_lora else None
    lora_config_path = os.path.join(local_dir, LORA_CONFIG_FILE)
    if lora is None and (adapter_dir is not None or base_model_dir is not None):
        option = "--adapter_dir" if adapter_dir is not None else "--base_model_dir"
        raise ValueError(f"{option} given but {local_dir} has no {LORA_CONFIG_FILE}: it was not a LoRA run")
    with torch.device("meta"):
        trained = AutoModelForImageTextToText.from_config(config) if lora else model
        if lora:
            apply_lora(trained, lora, lora_config_path)
    trained_shapes = {name: tensor.shape for name, tensor in trained.state_dict().items()}
    # An adapter-only LoRA checkpoint's shards hold the adapters; every other weight is the base folder's.
    adapters_only = saved_lora is not None and saved_lora.adapters_only
    saved_shapes = {n: s for n, s in trained_shapes.items() if is_adapter_name(n)} if adapters_only else trained_shapes
    rank_states = [load_shard(path) for path in layout.paths]
    state = merge_shards(rank_states, saved_shapes, [os.path.basename(p) for p in layout.paths])
    del rank_states
    if adapters_only:
        base_dir = base_model_dir or saved_lora.base_model
        base = base_weights(base_dir, lora_config_path)
        missing = sorted(name for name in trained_shapes if name not in state and name not in base)
        if missing:
            raise KeyError(f"base model {base_dir} lacks weights the run had: {_listing(missing)}")
        state = {name: state[name] if name in state else base[name] for name in trained_shapes}
    if lora:
        if adapter_dir is not None:
            adapter_dir = os.path.abspath(adapter_dir)
            write_peft_adapter(
                adapter_dir,
                *peft_adapter(
                    state, lora, lambda name: checkpoint_weight_name(name, config.model_type), saved_lora.base_model
                ),
            )
        state = fold_adapters(state, lora_scale(lora))
    if dtype is not None:
        state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    tied_groups = _tied_parameter_groups(model)
    _check_tied_equal(state, tied_groups)
    model.load_state_dict(state, strict=True, assign=True)
    # assign=True gives every name its own tensor; re-tie so lm_head is saved as an alias again.
    model.tie_weights()
    _set_config_dtype(model.config, _most_common_float_dtype(state))
    generation_config_path = os.path.join(layout.hf_dir, "generation_config.json")
    if os.path.isfile(generation_config_path):
        model.generation_config = GenerationConfig.from_pretrained(layout.hf_dir)

    tmp_dir = target_dir.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    save_hf_metadata(layout.hf_dir, tmp_dir)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    if is_value_checkpoint(local_dir):  # `load_value_model` reads the merged folder
        mark_value_checkpoint(tmp_dir)
    weight_bytes = sum(
        os.path.getsize(os.path.join(tmp_dir, name)) for name in os.listdir(tmp_dir) if name.endswith(".safetensors")
    )
    _publish(tmp_dir, target_dir)
    return MergeResult(
        target_dir=target_dir,
        world_size=layout.world_size,
        num_tensors=len(state),
        weight_bytes=weight_bytes,
        dtypes=tuple(sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})),
        seconds=time.perf_counter() - start,
        adapter_dir=adapter_dir,
    )


def upload_to_hub(folder: str, repo_id: str) -> None:
    """Pushes a merged folder to the Hugging Face Hub (EasyR1's --hf_upload_path); needs a token
    in the environment (HF_TOKEN) or from `hf auth login`. A new repo is created private (EasyR1
    makes it public): publishing a training checkpoint should be a deliberate step."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id=repo_id, private=True, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model")
