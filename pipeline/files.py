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
    prefix = f".{base}."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):-len(".partial")] if name.startswith(prefix) and name.endswith(".partial") else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                      # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except OSError:
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
