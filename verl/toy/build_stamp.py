"""What a generated folder (the tiny model, the synthetic data) was built from, kept inside it.

The recipes build their inputs only when needed. Without a record, a folder left by an older
checkout (older defaults: another rotary base, another shape placement) would be reused silently
and the run would measure the old inputs. ``DIR/build_stamp.json`` holds the builder's arguments;
``stamp_mismatch`` names what differs.
"""

from __future__ import annotations

import json
import os
from typing import Any

BUILD_STAMP = "build_stamp.json"


def _normalised(stamp: dict[str, Any]) -> dict[str, Any]:
    """The stamp as it reads back from JSON (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(stamp, sort_keys=True))


def write_build_stamp(folder: str, stamp: dict[str, Any]) -> None:
    """Writes the stamp last and atomically: a build that dies midway leaves no stamp."""
    path = os.path.join(folder, BUILD_STAMP)
    with open(path + ".tmp", "w") as f:
        json.dump(_normalised(stamp), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def stamp_mismatch(folder: str, stamp: dict[str, Any]) -> str | None:
    """None when ``folder`` holds a complete build of exactly ``stamp``; otherwise why not, one line."""
    path = os.path.join(folder, BUILD_STAMP)
    if not os.path.isdir(folder):
        return f"{folder} does not exist"
    if not os.path.exists(path):
        return f"{folder} has no {BUILD_STAMP} (an unfinished build, one by an older version, or not a build of this script)"
    with open(path) as f:
        built = json.load(f)
    wanted = _normalised(stamp)
    changed = [
        f"{key}: {built.get(key)!r} -> {wanted.get(key)!r}"
        for key in sorted(set(built) | set(wanted))
        if built.get(key) != wanted.get(key)
    ]
    return f"{folder} was built with other arguments ({'; '.join(changed)})" if changed else None


class UnstampedFolderError(RuntimeError):
    """The output folder holds files but no stamp: nothing says what built them."""


def needs_build(folder: str, stamp: dict[str, Any]) -> bool:
    """The builders' ``--reuse`` rule. False when ``folder`` holds a complete build of exactly
    ``stamp`` (keep it). True when it is absent or empty, or holds a stamped build of other
    arguments: then its stamp is removed first, so a rebuild that dies midway is not taken for
    complete. A non-empty folder without a stamp is refused (it may be someone's own files)."""
    reason = stamp_mismatch(folder, stamp)
    if reason is None:
        return False
    if os.path.isdir(folder) and os.listdir(folder):
        path = os.path.join(folder, BUILD_STAMP)
        if not os.path.exists(path):
            raise UnstampedFolderError(f"{reason}; remove it (or choose another folder) to build there")
        print(f"rebuilding: {reason}", flush=True)
        os.remove(path)
    return True


def keep_existing_build(folder: str, stamp: dict[str, Any], builder: str) -> bool:
    """The builder scripts' ``--reuse``: True (and says so) when ``folder`` already holds this
    build; False when the caller must build; exits naming ``builder`` and the folder for unstamped files."""
    try:
        if needs_build(folder, stamp):
            return False
    except UnstampedFolderError as error:
        raise SystemExit(f"{builder}: {error}") from None
    print(f"{folder} is up to date ({BUILD_STAMP})", flush=True)
    return True
