"""The `preprocess` Beam job: Adience folders -> sharded TFRecords of decoded uint8 BGR faces.

Shape of the job (only paths cross the runner; pixels are decoded and written by the same worker):

    launcher: discover files (FileSystems.match), assign each to shard crc32(relpath) % N
    runner:   the graph of pipeline/preprocess/graph.py: each (split, shard) goes to one worker's
              WriteShard, which sorts its paths, decodes each, writes one TFRecord file, plus a
              summary JSON and heartbeat files in OUT/.tmp-<id>/ (the launcher's progress: the
              DaskRunner and others answer no metrics queries)
    launcher: read the summaries, check found == written + rejected (reconcile.py), write
              rejects.jsonl and manifest.json into the temp folder, then move the shards, the
              rejects and last the manifest (the commit point) into OUT (commit.py).

The modules: runners.py (which runner, its options), dask_cluster.py and worker_checks.py
(`--runner dask`), graph.py (the Beam graph, the worker side), reconcile.py, commit.py, events.py.

Before any work: stale temp folders of killed runs are removed, existing outputs are found by a
literal listing (pipeline/preprocess/beam_files.py: `-o 'a/rec*'` is a name, not a pattern), and a local OUT
must have room for the records. A disk that fills up anyway is one DataError, the previous output
untouched.

Byte-identical output on every run and runner setting: shard membership is a stable hash of the
relative path, records inside a shard are sorted by path, decoding is deterministic, and the
record encoding is deterministic protobuf serialization.
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import DataError
from pipeline.files import is_remote, output_lock
from pipeline.folds import FOLD_SPLITS
from pipeline.manifest import Manifest
from pipeline.preprocess.beam_files import (TempFolder, check_free_space, output_error,
                                            remove_stale_temp_folders)
from pipeline.preprocess.commit import commit, existing_outputs, write_launcher_file
from pipeline.preprocess.discover import Discovery, discover
from pipeline.preprocess.events import Advanced, Committed, Progress
from pipeline.preprocess.execute import Job, read_json_files
from pipeline.preprocess.graph import PLAN_NAME, SUMMARY_DIR
from pipeline.preprocess.reconcile import files_per_worker, reason_kind, reconcile
from pipeline.preprocess.runners import choose_runner
from pipeline.schema import CHANNELS, DEFAULT_IMAGE_SIZE, LAYOUT_ALIGNED_VALID, LAYOUT_FOLDS, REJECTS_NAME

# Default shard size: about this many bytes of raw pixels per shard (the TFRecord guide's
# 100-200 MB), and at least two shards per split so that two workers have something to do.
TARGET_SHARD_BYTES = 128 * 1024 * 1024
MIN_SHARDS = 2
# Bytes a record adds to its pixels (protobuf fields, the path, TFRecord framing), for the
# free-space check; generous (a path of 200 characters and the framing are about 260 bytes).
RECORD_OVERHEAD_BYTES = 512


@dataclass
class PreprocessSummary:
    """What a run wrote; `manifest` is exactly what OUT/manifest.json says."""

    out: str
    root: str
    manifest: Manifest
    found: int
    written: int
    rejected: int
    rejects_path: str
    reject_reasons: dict[str, int]           # reason (without details) -> count
    skipped_folders: list[str]
    seconds: float
    images_per_second: float                 # inputs handled (written + rejected) per second
    runner: str
    layout: str = LAYOUT_ALIGNED_VALID
    unlisted: list[str] = field(default_factory=list)    # adience-folds: images no fold row names
    workers: dict[str, int] = field(default_factory=dict)   # worker process (host:pid) -> files it handled
    counters: dict[str, int] | None = None   # Beam Metrics, when the runner answers metrics queries

    replaced: list[str] = field(default_factory=list)   # old output files that were removed
    stale_removed: list[str] = field(default_factory=list)   # temp folders of killed runs, removed
    stale_bytes: int = 0                                     # what they held
    busy_temp: list[str] = field(default_factory=list)       # temp folders of runs still running

    @property
    def files_per_worker(self) -> list[int]:
        """Files each worker process handled, most first."""
        return sorted(self.workers.values(), reverse=True)

    @property
    def worker_processes(self) -> int:
        return len(self.workers)


def stable_shard(relpath: str, shards: int) -> int:
    """Shard of a file: a hash that is the same in every process and on every machine (unlike hash())."""
    return zlib.crc32(relpath.encode("utf-8")) % shards


def default_shards(count: int, image_size: int) -> int:
    """About TARGET_SHARD_BYTES of raw pixels per shard, at least MIN_SHARDS (fewer only if fewer files)."""
    raw = count * image_size * image_size * CHANNELS
    return max(1, min(count, max(MIN_SHARDS, math.ceil(raw / TARGET_SHARD_BYTES))))


def _shard_counts(discovery: Discovery, image_size: int, requested: dict[str, int | None]) -> dict[str, int]:
    per_split = Counter(c.split for c in discovery.candidates)
    if discovery.layout == LAYOUT_FOLDS:
        # Every fold is in the output, even one without a usable row: the protocol has five.
        per_split = Counter({split: per_split.get(split, 0) for split in FOLD_SPLITS})
    return {split: requested.get(split) or default_shards(n, image_size) for split, n in sorted(per_split.items())}


def _plan(discovery: Discovery, shard_counts: dict[str, int]):
    """[(key, [(relpath, label, age), ...])] for every shard, largest first: the DirectRunner hands
    grouped keys to its workers round-robin in arrival order, so this order balances the cores
    (and a Dask scheduler starts the largest shards first)."""
    groups: dict[tuple, list] = {}
    for split, count in shard_counts.items():
        for shard in range(count):
            groups[(split, shard, count)] = []
    for c in discovery.candidates:
        count = shard_counts[c.split]
        groups[(c.split, stable_shard(c.relpath, count), count)].append((c.relpath, c.label, c.age))
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _check_arguments(image_size: int, shards: dict[str, int | None]) -> None:
    if image_size < 1:
        raise DataError(f"`image_size` must be a positive number of pixels, got {image_size}", field="image_size")
    for name, value in shards.items():
        if value is not None and value < 1:
            raise DataError(f"`{name}` must be at least 1, got {value}", field=name)


def _existing_outputs(out: str, overwrite: bool) -> list[str]:
    """The files of an earlier run in OUT; DataError when there are some and `overwrite` is off."""
    old = existing_outputs(out)
    if old and not overwrite:
        raise DataError(f"{out} already holds records ({len(old)} files: manifest, shards or rejects); "
                        f"pass `overwrite` to replace them", field="overwrite")
    return old


# Over 60 lines on purpose: the launcher's steps in the order they must happen (check, discover,
# lock out stale runs, plan, run, reconcile, commit); each is a function of its own.
def run_preprocess(root: str, out: str, image_size: int = DEFAULT_IMAGE_SIZE, train_shards: int | None = None,
                   valid_shards: int | None = None, beam_args: list[str] | None = None,
                   overwrite: bool = False, progress: Progress | None = None,
                   layout: str = "auto", fold_shards: int | None = None) -> PreprocessSummary:
    """Convert ROOT (any Beam file system) into records in OUT.

    layout: "aligned-valid" (agegender_cleaned: splits train, valid), "adience-folds" (the official
    fold files: splits fold0 … fold4, each fold's shards counted by fold_shards) or "auto" (the
    fold files decide, see discover.detect_layout).

    progress, if given, receives the typed events of pipeline/preprocess/events.py: Started, then
    Advanced about twice a second, then Committed.
    """
    start = time.monotonic()
    _check_arguments(image_size, {"train_shards": train_shards, "valid_shards": valid_shards,
                                  "fold_shards": fold_shards})
    out = out.rstrip("/") or out
    choice = choose_runner(beam_args)
    discovery = discover(root, layout)
    root = discovery.root
    if FileSystems.exists(out) and "://" not in out and not os.path.isdir(out):
        raise DataError(f"`out` {out} is a file; a folder is needed", field="out")
    old = _existing_outputs(out, overwrite)
    requested = {"train": train_shards, "valid": valid_shards, **{split: fold_shards for split in FOLD_SPLITS}}
    shard_counts = _shard_counts(discovery, image_size, requested)
    plan = _plan(discovery, shard_counts)
    total = len(discovery.candidates)
    check_free_space(out, total * (image_size * image_size * CHANNELS + RECORD_OVERHEAD_BYTES),
                     f"the {total} records")

    # One run at a time into OUT, for the whole run (two would mix their shards): the lock is held
    # from before the stale temp folders are removed until the new output is in place.
    with output_lock(out, f"`out` {out}", folder=True, field="out"):
        stale, stale_bytes, busy = remove_stale_temp_folders(out, out_locked=not is_remote(out))
        old = _existing_outputs(out, overwrite)     # again under the lock: a run that just ended may have written
        temp = TempFolder(out)
        try:
            try:
                temp.lock()
            except OSError as err:
                raise output_error(out, err) from None
            plan_summary = {"root": root, "layout": discovery.layout, "files": total, "shards": shard_counts}
            write_launcher_file(out, FileSystems.join(temp.path, PLAN_NAME),
                                json.dumps(plan_summary, sort_keys=True).encode("utf-8"))
            job = Job(plan, root, temp.path, image_size, total, start, progress)
            runner, counters = job.run(choice)
            summaries = read_json_files(FileSystems.join(temp.path, SUMMARY_DIR))
            failed = sorted(body["error"] for body in summaries.values() if body.get("error"))
            if failed:
                raise DataError(f"{failed[0]} in {out}; nothing was replaced (free space or fix the folder, then rerun)")
            manifest, rejects = _reconcile(discovery, plan, shard_counts, summaries, image_size)
            replaced = commit(out, temp.path, old, manifest, rejects)
        finally:
            temp.close()
    seconds = time.monotonic() - start
    written = manifest.found - manifest.rejected
    if progress is not None:
        progress(Advanced(total, total, total / max(seconds, 1e-9)))
        progress(Committed(out, written, manifest.rejected, seconds))
    return PreprocessSummary(
        out=out, root=root, manifest=manifest, found=manifest.found, written=written, rejected=manifest.rejected,
        rejects_path=FileSystems.join(out, REJECTS_NAME),
        reject_reasons=dict(sorted(Counter(reason_kind(r) for _, r in rejects).items())),
        skipped_folders=discovery.skipped_folders, seconds=seconds,
        images_per_second=manifest.found / max(seconds, 1e-9), runner=runner,
        layout=discovery.layout, unlisted=discovery.unlisted, workers=files_per_worker(summaries),
        counters=counters, replaced=replaced, stale_removed=stale, stale_bytes=stale_bytes, busy_temp=busy)


# The check, by this name, so that a test can make it fail.
_reconcile = reconcile
