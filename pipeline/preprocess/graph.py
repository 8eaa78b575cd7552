"""The Beam graph of `preprocess` and the worker side of it: WriteShard decodes one shard's files
and writes its TFRecord file, a summary and heartbeats into the run's temp folder OUT/.tmp-<id>/.

Two shapes of the same work (the output is byte-identical: each shard's file depends only on the
shard's paths, see pipeline/preprocess/job.py):
- portable runners (DirectRunner, Dataflow, Flink, Spark): Create([plan]) -> one element per file
  -> GroupByKey -> WriteShard. The runner's GroupByKey spreads the shards over its workers.
- DaskRunner: Create(one element per shard) -> WriteShard, with a Dask bag partition per shard.
  Beam's Dask translation turns GroupByKey into a bag groupby that keeps the input's partitions:
  a one-element Create would put every shard into one partition, one task, one worker (seen:
  files_per_worker=[52]); and a groupby hashes keys into partitions, so two shards could share one.
  The launcher has already grouped the paths, so the Dask graph needs no shuffle at all.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections import Counter

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
# Beam's own TFRecord framing (length, masked CRC32C of length, payload, masked CRC32C of payload).
# It is an internal helper (leading underscore), used because WriteToTFRecord cannot give us our own
# deterministic sharding and per-shard order, and because it is the framing Beam itself writes and
# reads; it picks google-crc32c (a pinned dependency) for the CRC, so it is fast.
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from pipeline.decode import DecodeError, decode_image, read_error_reason
from pipeline.preprocess import beam_files
from pipeline.preprocess.beam_files import OUTPUT_ERRNOS, read_file
from pipeline.records import encode_example
from pipeline.schema import LABEL_NAMES, shard_name

METRICS_NAMESPACE = "preprocess"
HEARTBEAT_SECONDS = 1.0
PLAN_NAME = "plan.json"          # written by the launcher first; gone = the run was abandoned
PROGRESS_DIR = "progress"
SUMMARY_DIR = "summaries"


def heartbeat_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}.json"


def worker_id() -> str:
    """host:pid of this worker process: how the launcher counts the files each worker handled."""
    return f"{socket.gethostname()}:{os.getpid()}"


class WriteShard(beam.DoFn):
    """One (split, shard): decode its files in path order and stream them into one TFRecord file."""

    def __init__(self, root: str, tmp: str, image_size: int):
        self.root = root
        self.tmp = tmp
        self.image_size = image_size
        self.written_counter = Metrics.counter(METRICS_NAMESPACE, "images_written")
        self.rejected_counter = Metrics.counter(METRICS_NAMESPACE, "images_rejected")

    def _write_json(self, folder: str, name: str, body: dict) -> None:
        path = FileSystems.join(self.tmp, folder, name)
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(json.dumps(body, sort_keys=True).encode("utf-8"))

    def _abandoned(self) -> bool:
        """The launcher removed the temp folder (Ctrl-C, an error): a task still running on a
        cluster (Dask cannot stop a running task) stops writing rather than re-creating it."""
        return not FileSystems.exists(FileSystems.join(self.tmp, PLAN_NAME))

    def process(self, element):
        (split, shard, count), items = element
        items = sorted(i for i in items if i is not None)   # (relpath, label, age), ordered by path
        name = shard_name(split, shard, count)
        summary = {"split": split, "shard": shard, "file": name, "assigned": len(items), "worker": worker_id()}
        try:
            written = self._write_shard(split, shard, name, items)
        except OSError as err:
            # The output location cannot take the records (disk full, quota, read-only...): not a
            # bug, so no retry and no traceback from every worker; the launcher says it in one line.
            if not isinstance(err, BeamIOError) and err.errno not in OUTPUT_ERRNOS:
                raise
            beam_files.delete_files([FileSystems.join(self.tmp, name)])   # frees the space it took
            written = {"written": 0, "by_label": {}, "by_age": {}, "rejects": [],
                       "error": f"cannot write {name}: {err.strerror or err}"}
        if written is None or self._abandoned():
            return
        summary.update(written)
        self._write_json(SUMMARY_DIR, heartbeat_name(split, shard), summary)

    def _write_shard(self, split: str, shard: int, name: str, items: list) -> dict | None:
        """Counts, rejects and what was written; None when the run was abandoned meanwhile."""
        by_label: Counter = Counter()
        by_age: Counter = Counter()
        rejects = []
        last_beat = time.monotonic()
        # A retried bundle simply rewrites the same file: the output does not depend on retries.
        with FileSystems.create(FileSystems.join(self.tmp, name),
                                compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            f = _Hashing(raw)
            for done, (relpath, label, age) in enumerate(items, 1):
                try:
                    data = read_file(FileSystems.join(self.root, relpath))
                except Exception as err:  # noqa: BLE001 - an unreadable file is a reject, not a crash
                    rejects.append((relpath, read_error_reason(err)))
                    self.rejected_counter.inc()
                else:
                    try:
                        image = decode_image(data, self.image_size)
                    except DecodeError as err:
                        rejects.append((relpath, err.reason))
                        self.rejected_counter.inc()
                    else:
                        _TFRecordUtil.write_record(f, encode_example(image, label, age, relpath))
                        by_label[LABEL_NAMES[label]] += 1
                        by_age[str(age)] += 1
                        self.written_counter.inc()
                now = time.monotonic()
                if now - last_beat >= HEARTBEAT_SECONDS:
                    if self._abandoned():
                        return None
                    # The launcher polls these files: workers may be other processes or machines.
                    self._write_json(PROGRESS_DIR, heartbeat_name(split, shard), {"done": done, "worker": worker_id()})
                    last_beat = now
        return {"written": sum(by_label.values()), "by_label": dict(by_label), "by_age": dict(by_age),
                "rejects": rejects, "sha256": f.digest.hexdigest()}


class _Hashing:
    """A file being written, whose bytes are hashed on the way (the shard's sha256 for the manifest,
    without reading the shard back)."""

    def __init__(self, f):
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.f.write(data)


def _explode(plan):
    """The launcher's plan -> one (key, file) element per input file, keys in the planned order."""
    for key, items in plan:
        if not items:
            yield key, None     # an empty shard still gets its (empty) file and its summary
        for item in items:
            yield key, item


def build_graph(pipeline: beam.Pipeline, plan: list, root: str, tmp: str, image_size: int,
                one_element_per_shard: bool) -> None:
    """The job's transforms on `pipeline` (see the module docstring for the two shapes)."""
    if one_element_per_shard:
        shards = pipeline | "PlanPerShard" >> beam.Create(plan)
    else:
        shards = (pipeline
                  | "Plan" >> beam.Create([plan])
                  | "OneElementPerFile" >> beam.FlatMap(_explode)
                  | "GroupByShard" >> beam.GroupByKey())
    _ = shards | "DecodeAndWriteShard" >> beam.ParDo(WriteShard(root, tmp, image_size))
