"""Every command's outputs checked against its inputs BEFORE any work starts.

Nothing a command writes may replace or land inside what it reads (an output folder inside the
input tree is read back as input on the next run; `-o` naming the model overwrites it), no input
may sit inside an output folder, and an output that cannot be written is found now, not after an
hour of work: its parent must exist or be creatable and writable, and a folder must not stand where
a file goes (nor the reverse). Paths are compared after resolving symbolic links, and existing
local files also by identity (device and inode), so a hard link to an input is that input. Remote
paths (gs://, s3://) are compared as strings (a folder there is a prefix) and not probed.
"""
from __future__ import annotations

import os
from typing import Sequence, Union

from pipeline.errors import DataError
from pipeline.files import is_remote

FILE = "file"
DIR = "dir"

# (path, FILE | DIR) or (path, FILE | DIR, how the user named it, e.g. "-o")
Output = Union[tuple[str, str], tuple[str, str, str]]
# path, or (path, how the user named it, e.g. "-w")
Input = Union[str, tuple[str, str]]


def _resolved(path: str) -> str:
    """The absolute path with every symbolic link of its existing part resolved."""
    return path.rstrip("/") if is_remote(path) else os.path.realpath(os.path.abspath(path))


def _inside(path: str, folder: str) -> bool:
    """path is folder or below it (both resolved)."""
    sep = "/" if is_remote(folder) else os.sep
    return path == folder or path.startswith(folder.rstrip(sep) + sep)


def _identity(real: str) -> tuple[int, int] | None:
    """(device, inode) of an existing local path, None otherwise: two names of one file (a hard
    link, a bind mount) share it."""
    if is_remote(real):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _named(what: str, path: str) -> str:
    return f"{what} {path}" if what else path


def _check_location(path: str, real: str, kind: str, what: str) -> None:
    """The output can be written: the right kind of thing there (or nothing), writable parent."""
    name = _named(what, path)
    if os.path.exists(real):
        if kind == FILE and os.path.isdir(real):
            raise DataError(f"{name} is an existing directory, but a file is written there; "
                            f"pass a file path (or remove the directory)")
        if kind == DIR and not os.path.isdir(real):
            raise DataError(f"{name} is an existing file, but a folder is written there; pass a folder path")
        access = os.W_OK | (os.X_OK if kind == DIR else 0)
        if not os.access(real, access):
            raise DataError(f"{name} is not writable (permission denied); fix its permissions or choose "
                            f"another path")
        return
    parent = os.path.dirname(real)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DataError(f"cannot create {name}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"cannot create {name}: no permission to write in {parent}; choose another path")


def check_outputs(outputs: Sequence[Output], inputs: Sequence[Input]) -> None:
    """DataError (one line saying what to change) when an output equals or lies inside an input,
    an input lies inside an output folder, two outputs are one path, or an output cannot be written.

    outputs: (path, "file" | "dir"[, flag]); inputs: path or (path, flag). Empty paths are ignored.
    Call it before any work: it only reads the file system.
    """
    given = [(i, "") if isinstance(i, str) else (i[0], i[1]) for i in inputs]
    resolved_inputs = [(path, what, _resolved(path)) for path, what in given if path]
    identities = [_identity(real) for _, _, real in resolved_inputs]
    seen: dict[str, str] = {}
    seen_ids: dict[tuple[int, int], str] = {}
    for entry in outputs:
        path, kind = entry[0], entry[1]
        what = entry[2] if len(entry) > 2 else ""
        if kind not in (FILE, DIR):
            raise ValueError(f"output kind must be {FILE!r} or {DIR!r}, got {kind!r}")
        if not path:
            continue
        real = _resolved(path)
        name = _named(what, path)
        identity = _identity(real)
        for (in_path, in_what, in_real), in_identity in zip(resolved_inputs, identities):
            in_name = _named(in_what, in_path)
            if is_remote(real) != is_remote(in_real):
                continue
            if real == in_real or (identity is not None and identity == in_identity):
                raise DataError(f"{name} is the input {in_name}: it would be overwritten; choose another "
                                f"output path")
            in_is_folder = is_remote(in_real) or os.path.isdir(in_real)
            if in_is_folder and _inside(real, in_real):
                raise DataError(f"{name} is inside the input folder {in_name}: it would be read back as "
                                f"input or overwrite it; choose an output outside {in_path}")
            if kind == DIR and _inside(in_real, real):
                raise DataError(f"the input {in_name} is inside the output folder {name}; choose an output "
                                f"folder that does not hold the inputs")
        other = seen.get(real) or (seen_ids.get(identity) if identity is not None else None)
        if other is not None:
            raise DataError(f"{name} and {other} are the same path; give them different paths")
        seen[real] = name
        if identity is not None:
            seen_ids[identity] = name
        if not is_remote(real):
            _check_location(path, real, kind, what)
