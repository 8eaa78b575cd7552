"""The tf.data reader: preprocessed records -> batches of (uint8 BGR images, float32 labels).

Order of the pipeline, and why:
- files (sharded across input pipelines; order shuffled by (seed, epoch) in low mode)
  -> interleaved parallel reads with a fixed cycle length (so the order does not depend on the
     machine's core count) and deterministic=True (so it is reproducible);
- high mode: parse -> `.cache()` in RAM; the cached dataset is kept per process and reused by later
  calls (one per epoch), so only the first epoch reads the disk;
- shuffle (deterministic in (seed, epoch)) -> [augmenting: enumerate, each example's index in the
  epoch's order seeding its augmentation] -> skip (exact resume: cheap, before parsing and
  augmenting) -> batch -> parse a whole batch at once (low mode: `tf.io.parse_example` on a batch
  took about 2/3 of the CPU time of parsing record by record, measured) -> augment the uint8 batch
  (pipeline/augment.py) -> prefetch.
Mean subtraction and the float cast are NOT done here: the model does them (on the accelerator).

Records are a contract checked on read: every shard file must hold exactly the records the manifest
says (`tf.data.experimental.assert_cardinality` on each file's stream, inside the interleave, so the
check holds whatever comes after it: file or record sharding across input pipelines, shuffling,
skip, drop_remainder, the RAM cache); a short, long or corrupt shard fails the iteration, and
`pipeline.shard_check.records_error` turns that failure into one line naming the shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from pipeline import files
from pipeline.errors import DataError
from pipeline.manifest import Manifest, join, load_manifest
from pipeline.schema import CHANNELS, LABEL_NAMES, LABEL_RULE, MEMORY_MODES

# Low mode: a bounded shuffle buffer (of serialized records, about 150 KB each at 224x224, so
# about 150 MB at most) plus a shuffled file order gives a good mix with bounded memory.
LOW_SHUFFLE_BUFFER = 1024
# Files read at once by the interleave. Fixed (not AUTOTUNE) because the interleave order depends
# on it, and the same seed must give the same order on every machine.
INTERLEAVE_CYCLE = 8
# High mode parses in chunks of this many records before unbatching into the cache.
PARSE_CHUNK = 256

FEATURE_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "channels": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "age": tf.io.FixedLenFeature([], tf.int64),
    "path": tf.io.FixedLenFeature([], tf.string),
}


def parse_record(serialized: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """Parse serialized records (any shape, usually a batch [B]) into image uint8 [..., S, S, 3],
    label float32, age int64 and path string."""
    f = tf.io.parse_example(serialized, FEATURE_SPEC)
    checks = [
        tf.debugging.assert_equal(
            f[key], tf.constant(expected, tf.int64),
            message=f"a record's {key} differs from the manifest's image size; rerun preprocess --overwrite")
        for key, expected in (("height", image_size), ("width", image_size), ("channels", CHANNELS))
    ]
    # A label outside {0, 1} would train (a sigmoid target of 7) and be scored as if it were a class.
    checks.append(tf.debugging.assert_equal(
        tf.logical_and(f["label"] >= 0, f["label"] < len(LABEL_NAMES)), True,
        message=LABEL_RULE))
    with tf.control_dependencies(checks):
        flat = tf.io.decode_raw(f["image"], tf.uint8)
    shape = tf.concat([tf.shape(serialized), [image_size, image_size, CHANNELS]], axis=0)
    return {
        "image": tf.reshape(flat, shape),
        "label": tf.cast(f["label"], tf.float32),
        "age": f["age"],
        "path": f["path"],
    }


def as_split_list(split: str | Sequence[str]) -> list[str]:
    """A split name or a list of them, as a non-empty list."""
    splits = [split] if isinstance(split, str) else list(split)
    if not splits:
        raise DataError("no split given; name at least one split (e.g. train)")
    return splits


def check_splits(records_dir: str, manifest: Manifest, splits: list[str]) -> None:
    """DataError unless every split is in the manifest and together they hold records."""
    available = sorted(manifest.splits)
    for name in splits:
        if name not in manifest.splits:
            raise DataError(f"{records_dir} has no split {name!r}; available splits: {', '.join(available)}")
    if sum(manifest.splits[name].count for name in splits) == 0:
        raise DataError(f"split {'+'.join(splits)} of {records_dir} holds no records")


def rerun_hint(records_dir: str, manifest: Manifest | None = None) -> str:
    """What to do about damaged records: rewrite them from their source."""
    root = manifest.source_root if manifest is not None else "ROOT"
    return f"rerun `python cli.py preprocess -i {root} -o {records_dir} --overwrite`"


class Shards(NamedTuple):
    """The shard files of some splits, in order, with each one's record count (None when the
    manifest, written by an older preprocess, does not say) and the splits' total."""

    paths: list[str]
    counts: list[int] | None
    total: int


def _shard_paths(records_dir: str, manifest: Manifest, splits: list[str]) -> Shards:
    paths, counts = [], []
    for name in splits:
        info = manifest.splits[name]
        for shard in info.shards:
            path = join(records_dir, shard)
            if not files.is_remote(path) and os.path.islink(path):
                raise DataError(f"shard {path} listed in the manifest is a symbolic link; shards must be files inside "
                                f"the records folder: {rerun_hint(records_dir, manifest)}")
            if not files.exists(path):
                raise DataError(f"shard {path} listed in the manifest is missing; the records directory is "
                                f"incomplete: {rerun_hint(records_dir, manifest)}")
            paths.append(path)
        counts = None if counts is None or info.shard_counts is None else counts + list(info.shard_counts)
    return Shards(paths, counts, sum(manifest.splits[name].count for name in splits))


def describe_dataset(records_dir: str, split: str | Sequence[str], image_size: int | None = None) -> dict:
    """Count, shards and the RAM the high memory mode needs (count x S x S x 3 bytes, before caching)."""
    splits = as_split_list(split)
    manifest = load_manifest(records_dir, image_size)
    check_splits(records_dir, manifest, splits)
    count = sum(manifest.splits[name].count for name in splits)
    by_label: dict[str, int] = {}
    for name in splits:
        for label, n in manifest.splits[name].by_label.items():
            by_label[label] = by_label.get(label, 0) + int(n)
    size = manifest.image_size
    return {
        "splits": splits,
        "count": count,
        "by_label": by_label,
        "shards": sum(len(manifest.splits[name].shards) for name in splits),
        "image_size": size,
        "bytes_in_memory": count * size * size * CHANNELS,
    }


def derive_seed(seed: int, epoch: int, purpose: str) -> int:
    """A 31-bit seed that is a fixed function of (seed, epoch, purpose)."""
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([int(seed), int(epoch), tag]).generate_state(1)[0] & 0x7FFFFFFF)


def _pipeline_position(input_context) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)


def _read_records(shards: Shards, num_pipelines: int, pipeline_id: int, file_seed: int | None) -> tf.data.Dataset:
    """Serialized records of this input pipeline: files sharded when there are enough, else records.

    shards.counts: the records of each file (the manifest's shard_counts). Each file's stream must hold
    exactly that many, checked as the file is read to its end, so the check covers every consumer
    that reads the epoch to its end. Without counts (an older manifest) the whole stream is checked
    against their total where it holds every file (one pipeline, or record sharding)."""
    paths, counts = shards.paths, shards.counts
    shard_records = num_pipelines > 1 and len(paths) < num_pipelines
    order = list(range(len(paths)))
    if num_pipelines > 1 and not shard_records:
        order = order[pipeline_id::num_pipelines]
    # With record sharding the file order stays fixed, so each pipeline keeps the same records in
    # every epoch and memory mode (there are fewer files than pipelines: little to shuffle anyway).
    if file_seed is not None and not shard_records:
        order = [order[i] for i in np.random.default_rng(file_seed).permutation(len(order))]
    chosen = [paths[i] for i in order]
    cycle = min(len(chosen), INTERLEAVE_CYCLE)
    # TFRecordDataset's default read buffer (256 KB): a 4 MB one cost more CPU per record here.
    if counts is not None:
        names = tf.data.Dataset.from_tensor_slices((chosen, tf.constant([counts[i] for i in order], tf.int64)))
        ds = names.interleave(
            lambda p, n: tf.data.TFRecordDataset(p).apply(tf.data.experimental.assert_cardinality(n)),
            cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = tf.data.Dataset.from_tensor_slices(chosen).interleave(
            tf.data.TFRecordDataset, cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
        if num_pipelines == 1 or shard_records:
            ds = ds.apply(tf.data.experimental.assert_cardinality(shards.total))
    if shard_records:
        ds = ds.shard(num_pipelines, pipeline_id)
    return ds


# High mode: the decoded, cached dataset per (records, splits, pipeline position), reused by later
# calls so that epoch 2.. read from RAM (tf.data keeps a memory cache with the dataset object).
_HIGH_CACHE: dict[tuple, tf.data.Dataset] = {}
_HIGH_CACHE_LOCK = threading.Lock()


def clear_memory_cache() -> None:
    """Drop the decoded images kept for the high memory mode (frees the RAM)."""
    with _HIGH_CACHE_LOCK:
        _HIGH_CACHE.clear()


def _cached_decoded(records_dir: str, manifest: Manifest, splits: list[str], shards: Shards,
                    num_pipelines: int, pipeline_id: int) -> tf.data.Dataset:
    # The manifest's content is part of the key: records rewritten in place are not served stale.
    key = (records_dir, tuple(splits), num_pipelines, pipeline_id, manifest.to_json())
    with _HIGH_CACHE_LOCK:
        ds = _HIGH_CACHE.get(key)
        if ds is None:
            size = manifest.image_size
            ds = (_read_records(shards, num_pipelines, pipeline_id, file_seed=None)
                  .batch(PARSE_CHUNK)
                  .map(lambda s: parse_record(s, size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                  .unbatch()
                  .cache())
            _HIGH_CACHE[key] = ds
        return ds


def _cache_prefix(cache_file: str, manifest: Manifest, splits: list[str], num_pipelines: int,
                  pipeline_id: int) -> str:
    """The file cache's prefix for exactly this content: a fingerprint of the records, splits and
    pipeline position is appended, so a cache file made for other data is never served.
    A lock left by a killed run (no finished cache yet) is removed: one cache file, one process."""
    key = json.dumps([manifest.to_json(), splits, num_pipelines, pipeline_id])
    prefix = f"{cache_file}.{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not tf.io.gfile.exists(prefix + ".index"):
        # Listed and matched literally (no glob: the user's path may hold * ? [ ]).
        folder, base = prefix.rsplit("/", 1) if "/" in prefix else (".", prefix)
        names = tf.io.gfile.listdir(folder) if tf.io.gfile.isdir(folder) else []
        for name in names:
            if name.startswith(base + "_") and (name.endswith(".lockfile") or ".tempstate" in name):
                tf.io.gfile.remove(join(folder, name))
    return prefix


# Over 60 lines on purpose: one tf.data pipeline, stage after stage, in the order the data goes
# through them (files, interleave, cache, shuffle, parse, augment, batch, prefetch).
def make_dataset(records_dir: str, split: str | Sequence[str], batch_size: int, memory: str = "low",
                 augment: bool = False, shuffle: bool = False, seed: int = 0, epoch: int = 0, skip: int = 0,
                 with_meta: bool = False, input_context: tf.distribute.InputContext | None = None,
                 drop_remainder: bool = False, cache_file: str | None = None,
                 image_size: int | None = None, augment_params=None, augment_on_device: bool = False) -> tf.data.Dataset:
    """One epoch of (images uint8 [B,S,S,3] BGR, labels float32 [B]) or, with_meta,
    (images, labels, ages int64 [B], paths string [B]).

    split: a split name or a list of them (read as one split, in the given order).
    batch_size: with input_context, the PER-REPLICA batch (the strategy hands out consecutive batches).
    memory: "high" caches the decoded images in RAM (describe_dataset says how much); "low" streams
      with bounded memory. cache_file (low mode): also cache the serialized records in files with
      this prefix (e.g. on a local disk when the records are remote); the file order is then fixed,
      only the shuffle buffer mixes. One process per cache file.
    shuffle/augment: deterministic functions of (seed, epoch); augmentation is for training only, the
      caller leaves it off for validation. augment_params: an augment.AugmentParams (tests inject
      e.g. flip-only settings); None means augment.DEFAULT_PARAMS. augment_on_device: do not warp
      here; yield each batch's draws [B, NUM_DRAWS] as a third element instead, for the training
      step to apply augment_batch on the accelerator (the host then only moves uint8 bytes).
    skip: examples of this epoch (of this input pipeline's stream) already consumed, for exact resume.
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    splits = as_split_list(split)
    manifest = load_manifest(records_dir, image_size)
    check_splits(records_dir, manifest, splits)
    shards = _shard_paths(records_dir, manifest, splits)
    size = manifest.image_size
    num_pipelines, pipeline_id = _pipeline_position(input_context)

    if memory == "high":
        ds = _cached_decoded(records_dir, manifest, splits, shards, num_pipelines, pipeline_id)
        if shuffle:
            # Everything is in RAM already: a full shuffle buffer gives a uniform permutation.
            count = sum(manifest.splits[name].count for name in splits)
            ds = ds.shuffle(max(count, 1), seed=derive_seed(seed, epoch, "shuffle"), reshuffle_each_iteration=False)
    else:
        file_seed = derive_seed(seed, epoch, "files") if shuffle and cache_file is None else None
        ds = _read_records(shards, num_pipelines, pipeline_id, file_seed)
        if cache_file:
            ds = ds.cache(_cache_prefix(cache_file, manifest, splits, num_pipelines, pipeline_id))
        if shuffle:
            ds = ds.shuffle(LOW_SHUFFLE_BUFFER, seed=derive_seed(seed, epoch, "shuffle"),
                            reshuffle_each_iteration=False)

    if augment:
        from pipeline.augment import DEFAULT_PARAMS, augment_batch, example_draws

        params = augment_params if augment_params is not None else DEFAULT_PARAMS
        key = derive_seed(seed, epoch, "augment")
        # Each example's draws depend on its index in this epoch's order, numbered before the skip,
        # so a resumed epoch augments the remaining examples exactly as an uninterrupted one would.
        # The draws are a few scalars per example (cheap); the image work is done per batch.
        ds = ds.enumerate().skip(skip)
        ds = ds.map(lambda i, x: (x, example_draws(i, key)), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    elif skip:
        ds = ds.skip(skip)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def finish(element, draws=None):
        example = parse_record(element, size) if memory == "low" else element
        images = example["image"]
        if draws is not None and augment_on_device:
            return images, example["label"], draws
        if draws is not None:
            images = augment_batch(images, draws, params)
        if with_meta:
            return images, example["label"], example["age"], example["path"]
        return images, example["label"]

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
