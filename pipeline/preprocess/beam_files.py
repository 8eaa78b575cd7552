"""File operations of the `preprocess` job with LITERAL path semantics, and its temp folders.

Beam's FileSystems.match (and LocalFileSystem.delete, and GCS's file delete, which call it) read
every path as a glob pattern, so a user path holding `*`, `?` or `[` would list or delete other
folders' files. Here local paths go through `os` (names are names), and remote paths (gs://,
s3://) are listed with their glob characters escaped. Used by the launcher and by discovery; the
workers write through FileSystems.create, which is literal.

Temp folders: each run writes into OUT/.tmp-<id>/ and holds an exclusive lock on a file in it
(local OUT) while it runs. A later run removes the temp folders of runs that were killed: a local
one whose lock nobody holds (the kernel drops a lock when its process dies), a remote one not
written to for STALE_REMOTE_SECONDS.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.decode import MAX_IMAGE_BYTES, file_kind, read_bytes
from pipeline.errors import DataError
from pipeline.files import is_remote

TMP_PREFIX = ".tmp-"
LOCK_NAME = "lock"
# A remote temp folder untouched this long belongs to a dead run (a live one writes a heartbeat
# every second while its workers run; an hour covers a cluster's slowest start-up).
STALE_REMOTE_SECONDS = 3600
# A local temp folder without a lock file (an older version's, or one caught between its creation
# and its lock) is only taken for stale after this long.
UNLOCKED_GRACE_SECONDS = 60
DANGLING_REASON = "dangling symbolic link (its target does not exist)"
# Write errors that mean "this output location cannot take the records" (not a bug): one line.
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO)


def escape_glob(path: str) -> str:
    """A pattern matching exactly `path` under Beam's translate_pattern: [c] is the character c."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def beam_open(path: str):
    """A remote file opened for reading through Beam (never decompressed by its name)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_file(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """decode.read_bytes with Beam serving remote paths (so Beam workers need no TensorFlow)."""
    return read_bytes(path, max_bytes, opener=beam_open)


def write_file(path: str, data: bytes) -> None:
    """Write a whole file (parents created) on any Beam file system."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def _entry_problem(path: str) -> str | None:
    """Why a listed local entry cannot be an input file, or None for a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return DANGLING_REASON if os.path.islink(path) else "vanished while listing"
    except OSError as err:
        return f"unreadable entry ({err.strerror or err})"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({file_kind(st.st_mode)})"
    return None


@dataclass
class Listing:
    """Every entry below a folder: regular files, and the others with why they cannot be used."""

    files: list[str]                       # full '/'-separated paths
    problems: list[tuple[str, str]]        # (full path, reason)
    unlistable: list[str]                  # folders that could not be listed, symlinked folders


def list_tree(folder: str) -> Listing:
    """Every entry below `folder`, recursively, names taken literally; symlinked folders are not
    followed but reported in `unlistable` (their files would otherwise be silently missed)."""
    if is_remote(folder):
        # (A listing error propagates: discovery turns it into one line with its cause.)
        metas = FileSystems.match([f"{escape_glob(folder.rstrip('/'))}/**"])[0].metadata_list
        return Listing(sorted(m.path for m in metas), [], [])
    listing = Listing([], [], [])
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=errors.append):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                listing.unlistable.append(f"{os.path.join(dirpath, d)} is a symbolic link to a folder")
        for name in filenames:
            full = os.path.join(dirpath, name).replace("\\", "/")
            problem = _entry_problem(full)
            if problem is None:
                listing.files.append(full)
            else:
                listing.problems.append((full, problem))
    listing.unlistable += [f"{e.filename}: {e.strerror}" for e in errors if e.filename != folder]
    listing.files.sort()
    listing.problems.sort()
    return listing


def list_names(folder: str) -> list[str]:
    """Names directly in `folder` (files and folders), literally; [] when it does not exist."""
    if not is_remote(folder):
        try:
            return sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
    prefix = folder.rstrip("/") + "/"
    try:
        metas = FileSystems.match([escape_glob(prefix) + "**"])[0].metadata_list
    except Exception:  # noqa: BLE001 - an empty or missing prefix holds nothing
        return []
    return sorted({m.path[len(prefix):].split("/", 1)[0] for m in metas if m.path.startswith(prefix)})


def delete_files(paths: list[str]) -> None:
    """Delete files (already gone is fine)."""
    for path in paths:
        if is_remote(path):
            # GCS's file delete matches its argument as a pattern; S3's takes it literally.
            FileSystems.delete([escape_glob(path) if path.startswith("gs://") else path])
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def remove_tree(folder: str) -> None:
    """Delete a folder and everything in it (best effort: a leftover is found by the next run)."""
    if is_remote(folder):
        try:
            FileSystems.delete([folder.rstrip("/") + "/"])   # a trailing "/" = the whole prefix
        except Exception:  # noqa: BLE001
            pass
    else:
        shutil.rmtree(folder, ignore_errors=True)


def rename(sources: list[str], destinations: list[str]) -> None:
    if not sources:
        return
    if is_remote(sources[0]):
        FileSystems.rename(sources, destinations)
    else:
        for source, destination in zip(sources, destinations):
            os.replace(source, destination)


# ------------------------------------------------------------------ temp folders
class TempFolder:
    """OUT/.tmp-<id>/ of this run, locked while it lives (local OUT); removed by close()."""

    def __init__(self, out: str):
        self.path = FileSystems.join(out, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
        self._lock = None

    def lock(self) -> None:
        """Create the folder and take its lock (call right after the first write into it)."""
        if is_remote(self.path):
            return
        import fcntl

        os.makedirs(self.path, exist_ok=True)
        self._lock = open(os.path.join(self.path, LOCK_NAME), "w")
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        remove_tree(self.path)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _local_is_stale(folder: str, out_locked: bool = False) -> bool:
    import fcntl

    lock_path = os.path.join(folder, LOCK_NAME)
    if not os.path.exists(lock_path):
        # Under OUT's lock no other run can be between creating its temp folder and locking it:
        # a temp folder without a lock is a dead run's (or its orphaned workers'), never skipped.
        return out_locked or time.time() - os.path.getmtime(folder) > UNLOCKED_GRACE_SECONDS
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False      # a live run holds it
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


def _tree_bytes_and_age(folder: str) -> tuple[int, float]:
    """(bytes, seconds since the last write) of everything below a folder."""
    if is_remote(folder):
        metas = FileSystems.match([f"{escape_glob(folder.rstrip('/'))}/**"])[0].metadata_list
        newest = max((m.last_updated_in_seconds for m in metas), default=0.0)
        return sum(m.size_in_bytes for m in metas), time.time() - newest
    total, newest = 0, os.path.getmtime(folder)
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
            newest = max(newest, st.st_mtime)
    return total, time.time() - newest


def remove_stale_temp_folders(out: str, out_locked: bool = False) -> tuple[list[str], int, list[str]]:
    """Remove the temp folders that killed runs left in OUT: (removed names, bytes freed, names
    of temp folders still in use by a running preprocess, left alone). out_locked: the caller holds
    OUT's lock (pipeline.files.output_lock), so an unlocked temp folder is stale at once."""
    removed, freed, busy = [], 0, []
    for name in list_names(out):
        if not name.startswith(TMP_PREFIX):
            continue
        folder = FileSystems.join(out, name)
        if not is_remote(folder) and not os.path.isdir(folder):
            continue
        size, age = _tree_bytes_and_age(folder)
        stale = age > STALE_REMOTE_SECONDS if is_remote(folder) else _local_is_stale(folder, out_locked)
        if not stale:
            busy.append(name)
            continue
        remove_tree(folder)
        removed.append(name)
        freed += size
    return removed, freed, busy


# ------------------------------------------------------------------ output errors
def output_error(where: str, err: Exception) -> DataError:
    """One line for an output location that cannot take the records (disk full, permissions...)."""
    detail = getattr(err, "strerror", None) or getattr(err, "exception_details", None) or err
    return DataError(f"cannot write into {where}: {detail}; nothing was replaced (free space or fix the "
                     f"folder's permissions, or choose another -o)")


def check_free_space(out: str, need: int, what: str) -> None:
    """A local OUT must have room for `need` bytes (the new records, next to the old ones, which
    are replaced only at the end): found before any image is decoded."""
    if is_remote(out):
        return
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if need > free:
        raise DataError(f"{out} has {free / 2**20:,.1f} MiB free but {what} need about {need / 2**20:,.1f} MiB; "
                        f"free space or choose another -o (nothing was written)")


def pipeline_failure(err: BaseException, out: str) -> BaseException:
    """A worker that could not even report its write error (the disk still full) fails the
    pipeline, and Beam hands back its error as text: such an error becomes one DataError line;
    any other failure is a bug and keeps its traceback."""
    text = str(err)
    for code in OUTPUT_ERRNOS:
        if f"[Errno {code}]" in text:
            return output_error(out, OSError(code, os.strerror(code)))
    return err
