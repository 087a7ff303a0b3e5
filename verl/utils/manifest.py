"""Integrity manifest of a directory: every file's size and SHA-256, written last.

    DIR/manifest.json   {"format": 1, "files": {"actor/model_world_size_2_rank_0.pt":
                                                  {"size": 123, "sha256": "..."}, ...}}

A checkpoint's writers record the digests of the files they wrote (each rank hashes its own,
in parallel); `write_manifest` hashes whatever else lies in the directory and writes the file
atomically. `verify_manifest` re-hashes and returns a one-line description of the first
problem (missing manifest, missing file, wrong size, wrong checksum, file not listed), naming
the file; None when everything matches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 22
# hashlib releases the GIL on large buffers, so a few threads hash several files at once.
_HASH_THREADS = min(8, os.cpu_count() or 1)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _relative_files(root: str) -> list[str]:
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            relative = os.path.relpath(os.path.join(directory, name), root)
            if relative != MANIFEST:
                found.append(relative.replace(os.sep, "/"))
    return sorted(found)


def digest_files(root: str, relative_paths: Iterable[str]) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of the given files under root (hashed in parallel)."""
    paths = list(relative_paths)
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        digests = list(pool.map(lambda rel: sha256_of(os.path.join(root, rel)), paths))
    return {rel: {"size": os.path.getsize(os.path.join(root, rel)), "sha256": d} for rel, d in zip(paths, digests)}


def write_manifest(root: str, known: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """Writes root/manifest.json covering every file under root: entries in `known` (digests
    their writers computed) are taken when the size still matches, the rest are hashed here."""
    known = dict(known or {})
    files = _relative_files(root)
    entries = {rel: known[rel] for rel in files if rel in known and known[rel]["size"] == os.path.getsize(os.path.join(root, rel))}
    entries.update(digest_files(root, [rel for rel in files if rel not in entries]))
    tmp = os.path.join(root, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, "files": dict(sorted(entries.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, MANIFEST))
    return entries


def read_manifest(root: str) -> dict[str, dict] | None:
    """The manifest's file entries; None when there is no manifest. ValueError if unreadable."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable manifest ({error})") from None
    return files


def verify_manifest(root: str, only: Iterable[str] | None = None) -> str | None:
    """None when every file the manifest lists (or, with `only`, the listed subset of relative
    paths) exists with its recorded size and SHA-256, and no unlisted file lies among them;
    otherwise the first problem, naming the file."""
    try:
        entries = read_manifest(root)
    except ValueError as error:
        return str(error)
    if entries is None:
        return f"{os.path.join(root, MANIFEST)} is missing"
    wanted = sorted(entries) if only is None else sorted(only)
    unlisted = [rel for rel in (_relative_files(root) if only is None else wanted) if rel not in entries]
    if unlisted:
        return f"{os.path.join(root, unlisted[0])} is not in {MANIFEST} ({len(unlisted)} unlisted file(s))"
    for rel in wanted:
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            return f"{path} is missing (listed in {MANIFEST})"
        size = os.path.getsize(path)
        if size != entries[rel]["size"]:
            return f"{path} has {size} bytes, {MANIFEST} records {entries[rel]['size']} (truncated or rewritten)"
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        digests = list(pool.map(lambda rel: sha256_of(os.path.join(root, rel)), wanted))
    for rel, digest in zip(wanted, digests):
        if digest != entries[rel]["sha256"]:
            return f"{os.path.join(root, rel)} fails its SHA-256 check (content differs from when it was written)"
    return None
