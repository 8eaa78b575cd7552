"""File access for training, evaluation and classification: TensorFlow's tf.io.gfile, which reads
local paths and gs:// itself. Only `preprocess` needs Apache Beam (its FileSystems serve the Beam
job); nothing here imports Beam, and TensorFlow is imported only when a file is touched, so the
Beam workers that import pipeline modules do not pay for it.

s3://: TensorFlow 2.21 no longer has an S3 file system (it moved to the tensorflow-io package);
when tensorflow-io is installed it is imported to register it, otherwise s3:// paths get one
clear line saying so.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from typing import Iterator, TextIO

from pipeline.errors import DataError

_S3_HINT = ("TensorFlow 2.21 cannot read s3:// paths by itself (its S3 file system moved to the "
            "tensorflow-io package, which is not installed); copy the records to a local folder or gs://")


def is_remote(path: str) -> bool:
    """A URL of a file system (gs://, s3://, ...) rather than a local path."""
    return "://" in path


def join(directory: str, name: str) -> str:
    """directory/name for local paths and URLs alike."""
    if not directory:
        return name
    return f"{directory.rstrip('/')}/{name}"


def gfile(path: str = ""):
    """tf.io.gfile, with the S3 file system registered first when `path` needs it."""
    import tensorflow as tf

    if path.startswith("s3://"):
        try:
            import tensorflow_io  # noqa: F401  (registers s3:// with tf.io.gfile)
        except ImportError:
            raise DataError(f"{path}: {_S3_HINT}") from None
    return tf.io.gfile


def exists(path: str) -> bool:
    return gfile(path).exists(path)


def size(path: str) -> int:
    """Size in bytes of a file."""
    return int(gfile(path).stat(path).length)


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open_read(path) as f:
        while True:
            block = f.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def read_text(path: str) -> str:
    with gfile(path).GFile(path, "rb") as f:
        return f.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    with gfile(path).GFile(path, "wb") as f:
        f.write(text.encode("utf-8"))


@contextmanager
def replacing(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` to write a file or a folder to; when the block ends without an
    exception, it replaces `path` whole, so a reader (or a crash) never sees half of one; otherwise
    it is removed and `path` is untouched. suffix: what the temporary name must end with (Keras
    insists on ".keras"). Local paths only."""
    path = os.path.normpath(path)
    folder, base = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    partial = os.path.join(folder, f".{base}.{os.getpid()}.partial{suffix}")
    previous = os.path.join(folder, f".{base}.{os.getpid()}.previous")
    try:
        yield partial
        if os.path.isdir(partial) and os.path.isdir(path):
            # os.replace cannot replace a folder that is not empty: move the old one aside first.
            os.replace(path, previous)
            os.replace(partial, path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(partial, path)
    finally:
        for leftover in (partial, previous):
            if os.path.isdir(leftover) and not os.path.islink(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
            elif os.path.lexists(leftover):
                os.remove(leftover)


def _remove_dead_partials(folder: str, base: str) -> None:
    """Remove the `.partial` files of `base` that killed processes left (`replacing` names them
    .BASE.PID.partial); a live process's is left alone."""
    from pipeline.preprocess.worker import process_alive     # stdlib only: no Beam imported

    prefix = f".{base}."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):-len(".partial")] if name.startswith(prefix) and name.endswith(".partial") else ""
        if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


@contextmanager
def open_replacing(path: str, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text file to stream into that appears at `path` only when the block ends without an
    exception (see `replacing`): until then `path` keeps what it held, and a killed process leaves
    no truncated file there that looks complete (only its hidden `.partial` beside it). Unlike
    `replacing`, it creates no folder: FileNotFoundError when `path`'s folder is missing."""
    folder = os.path.dirname(os.path.normpath(path)) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    _remove_dead_partials(folder, os.path.basename(os.path.normpath(path)))
    with replacing(path) as partial, open(partial, "w", encoding=encoding) as f:
        yield f


def write_text_atomically(path: str, text: str) -> None:
    """Write a local text file whole or not at all (see `replacing`)."""
    with replacing(path) as partial, open(partial, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomically(path: str, body: dict) -> None:
    """`body` as indented JSON, written whole or not at all."""
    write_text_atomically(path, json.dumps(body, indent=2) + "\n")


def open_read(path: str):
    """A binary file object for reading (tf.io.gfile.GFile)."""
    return gfile(path).GFile(path, "rb")


# ------------------------------------------------------------------ output locks
LOCK_NAME = ".gender-classifier.lock"


def lock_file_of(path: str, folder: bool) -> str:
    """Where the lock of an output lives: inside a folder output (OUT/.gender-classifier.lock),
    beside a file output (.model.keras.lock)."""
    path = os.path.normpath(path)
    if folder:
        return os.path.join(path, LOCK_NAME)
    parent, base = os.path.split(path)
    return os.path.join(parent, f".{base}.lock")


def _holder(lock_path: str) -> str:
    """Who holds a lock, as its file says: "pid 123 on host h, since 2026-12-06T20:00:00Z"."""
    try:
        with open(lock_path, encoding="utf-8") as f:
            body = json.loads(f.read() or "{}")
        return f"pid {body['pid']} on host {body['host']}, since {body['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that has not written its details yet"


@contextmanager
def output_lock(path: str, what: str, folder: bool = False, field: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on an output for the whole block: a second run writing the
    same output is refused with one line saying who holds it (pid, host and start time are written
    into the lock file). The kernel drops the lock when its process dies (`flock`), so a killed run
    never blocks the next one; the lock file is removed when the block ends. Local paths only (a
    remote output is not locked). what: how messages name the output, e.g. "`output` model.keras"."""
    if is_remote(path):
        yield
        return
    import fcntl
    import socket
    import time

    lock_path = lock_file_of(path, folder)
    try:
        os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
        while True:
            handle = open(lock_path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise DataError(f"{what} is in use by another run ({_holder(lock_path)}; lock file {lock_path}): "
                                f"wait for it to end, or write somewhere else", field=field) from None
            # The holder before us may have removed the file between our open and our lock: then
            # we hold a lock on a file nobody else sees; take the one on the path instead.
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
    except OSError as err:
        raise DataError(f"cannot write into {what} (its lock file {lock_path}: {err.strerror or err}); nothing "
                        f"was written: fix the folder's permissions or write somewhere else", field=field) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        handle.flush()
        yield
    finally:
        try:
            os.remove(lock_path)      # while still held: nobody can have taken it meanwhile
        except OSError:
            pass
        handle.close()
