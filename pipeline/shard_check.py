"""Which shard breaks the records contract, and the one line that says so.

The reader (pipeline/reader.py) makes a short, long or corrupt shard fail the iteration; tf.data's
error does not say which file. After such a failure, `records_error` reads every shard of the
splits once more, names the first bad one and says to rerun preprocess. Used by `evaluate` and by
the training loop (catch tf.errors.OpError around the iteration).
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import tensorflow as tf

from pipeline import files
from pipeline.errors import DataError
from pipeline.manifest import check_shard_hashes, join, load_manifest, shard_hash_problem
from pipeline.reader import PARSE_CHUNK, as_split_list, check_splits, parse_record, rerun_hint


def _broken_rule(message: str) -> str | None:
    """The message of parse_record's failed check (e.g. pipeline.schema.LABEL_RULE) inside
    TensorFlow's error text, or None when the failure is not one of them."""
    match = re.search(r"assertion failed: \[(.*?)\]", message)
    return match.group(1).replace("\\'", "'")[:200] if match else None


def _shard_problem(path: str, expected: int | None, image_size: int,
                   sha256: str | None = None) -> tuple[int, str | None]:
    """(records read, what is wrong or None): a symbolic link is refused; else every record of the
    shard is read and parsed, then its bytes are compared with the manifest's hash."""
    if not files.exists(path) and not os.path.islink(path):
        return 0, "is missing"
    if not files.is_remote(path) and os.path.islink(path):
        return 0, shard_hash_problem(path, None)
    n, problem = _read_problem(path, expected, image_size)
    # What the records say first (short, corrupt: the more telling line), then their bytes.
    return n, problem or shard_hash_problem(path, sha256)


def _read_problem(path: str, expected: int | None, image_size: int) -> tuple[int, str | None]:
    ds = tf.data.TFRecordDataset(path).batch(PARSE_CHUNK).map(
        lambda s: tf.shape(parse_record(s, image_size)["image"], out_type=tf.int64)[0])
    try:
        n = int(ds.reduce(tf.constant(0, tf.int64), lambda total, k: total + k))
    except tf.errors.OpError as err:
        rule = _broken_rule(err.message or "")
        if rule:
            return 0, f"holds a record that breaks the records contract ({rule})"
        detail = (err.message or type(err).__name__).strip().splitlines()[0][:200]
        return 0, f"is corrupt ({detail})"
    if expected is not None and n != expected:
        return n, f"holds {n} records but the manifest says {expected}"
    return n, None


def verify_shards(records_dir: str, splits: str | Sequence[str]) -> None:
    """DataError naming the first shard of the splits that is a symbolic link or does not hold the
    bytes the manifest's sha256 says (swapped, changed); read before training or scoring them."""
    splits = as_split_list(splits)
    manifest = load_manifest(records_dir)
    check_splits(records_dir, manifest, splits)
    try:
        check_shard_hashes(records_dir, manifest, splits)
    except DataError as problem:
        # Say what differs when the records show it (a cut or damaged shard), else the hash line.
        found = find_corrupt_shard(records_dir, splits)
        if found is None:
            raise
        path, what = found
        where = f"{path}:" if path == records_dir else f"shard {path}"
        raise DataError(f"{where} {what}: the records are damaged; {rerun_hint(records_dir, manifest)}") from problem


def find_corrupt_shard(records_dir: str, splits: str | Sequence[str]) -> tuple[str, str] | None:
    """(shard path, what is wrong) for the first shard of the splits that is missing, a symbolic
    link, not the bytes of the manifest's sha256, corrupt (a
    damaged or truncated record, a record that does not parse or has another image size) or holds
    another number of records than the manifest says; None when every shard reads as promised.
    A manifest without per-shard counts (older preprocess) can only tell a split's total: then the
    path is the records folder. Reads every record of the splits: for diagnosing a failure, not for
    the hot path."""
    splits = as_split_list(splits)
    manifest = load_manifest(records_dir)
    check_splits(records_dir, manifest, splits)
    for split in splits:
        info = manifest.splits[split]
        counts = info.shard_counts or [None] * len(info.shards)
        hashes = info.shard_sha256 or [None] * len(info.shards)
        read = 0
        for name, expected, sha256 in zip(info.shards, counts, hashes):
            n, problem = _shard_problem(join(records_dir, name), expected, manifest.image_size, sha256)
            if problem is not None:
                return join(records_dir, name), problem
            read += n
        if read != info.count:
            return records_dir, f"split {split} holds {read} records in its shards but the manifest says {info.count}"
    return None


def records_error(err: Exception, records_dir: str, splits: str | Sequence[str]) -> DataError | None:
    """The one-line DataError for a failure while iterating a dataset of these splits, naming the
    shard and what to do, when the records are to blame (find_corrupt_shard finds a bad shard);
    None otherwise (the caller re-raises `err`). Catch tf.errors.OpError around the iteration."""
    try:
        found = find_corrupt_shard(records_dir, splits)
        manifest = load_manifest(records_dir)
    except DataError as problem:
        return problem
    if found is None:
        return None
    path, problem = found
    where = f"{path}:" if path == records_dir else f"shard {path}"
    return DataError(f"{where} {problem}: the records are damaged; {rerun_hint(records_dir, manifest)}")
