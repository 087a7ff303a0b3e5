"""Where a model path comes from, checked before anything loads: one line saying what to do.

A ``model_path`` is a local folder or a Hugging Face hub id (``org/name``). Without this check a
missing folder such as ``models/tiny_qwen25vl`` (which looks like a hub id) reaches
``from_pretrained`` and fails with a long traceback about connecting to the hub.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

TINY_MODEL_SCRIPT = "scripts/make_tiny_model.py"
_HUB_PROBE_TIMEOUT_S = 3.0


class ModelPathError(FileNotFoundError):
    """The model path is neither a folder here nor a hub model this machine can get; the message says what to do."""


def check_model_path(path: str, key: str) -> None:
    """Raise ModelPathError (one line: the config key, the path, what to do) unless ``path`` can load.

    Passes: an existing folder; a hub id already in the local Hugging Face cache; a hub id on a
    machine that can reach the hub. Fails: a local-looking path that does not exist (with the
    command that builds it when it names the tiny model), a hub id on an offline machine
    (``HF_HUB_OFFLINE=1`` or the hub unreachable) that is not cached.
    """
    if not isinstance(path, str) or not path.strip():
        raise ModelPathError(f"{key} is empty: give a model folder or a hub id (org/name)")
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        return
    if os.path.exists(expanded):
        raise ModelPathError(f"{key}={path} is a file, not a model folder")
    hint = _build_hint(path, key)
    looks_local = path.startswith(("/", "./", "../", "~")) or path.count("/") != 1 or bool(hint)
    if looks_local:
        raise ModelPathError(f"{key}={path}: no such model folder{hint or ' (and not a hub id of the form org/name)'}")
    if _in_hub_cache(path):
        return
    if hub_offline():
        raise ModelPathError(
            f"{key}={path}: not a local folder and not in the Hugging Face cache, and this machine is offline "
            f"(HF_HUB_OFFLINE or {_hub_endpoint()} unreachable): download it where the hub is reachable "
            f"(huggingface-cli download {path} --local-dir DIR) and pass {key}=DIR"
        )


def _build_hint(path: str, key: str) -> str:
    """What to run for the project's own model folders (empty when the path is not one of them)."""
    name = os.path.basename(os.path.normpath(path))
    if "tiny" in name:
        return f": build it with `python3 {TINY_MODEL_SCRIPT} --out {path}` (a few seconds)"
    first = os.path.normpath(path).split(os.sep)[0]
    if first == "checkpoints":
        return f": train it first (docs/recipes.md), merge a sharded checkpoint with scripts/model_merger.py, or pass {key}=DIR"
    if first == "outputs":
        return f": merge a checkpoint into it (scripts/model_merger.py --target_dir {path}) or pass {key}=DIR"
    if first == "models":
        return f": pass {key}=DIR (a model folder) or a hub id (org/name)"
    return ""


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable from the cache"
        return False


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_offline() -> bool:
    """Whether the Hugging Face hub is out of reach: HF_HUB_OFFLINE set, or its host not answering in 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return True
    url = urlparse(_hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=_HUB_PROBE_TIMEOUT_S):
            return False
    except OSError:
        return True
