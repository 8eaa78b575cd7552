"""The `preprocess` Beam job: Adience folders -> sharded TFRecords of decoded uint8 BGR faces.

Shape of the job (only paths cross the runner; pixels are decoded and written by the same worker):

    launcher: discover files (FileSystems.match), assign each to shard crc32(relpath) % N
    Create([plan]) -> FlatMap: ((split, shard, N), (relpath, label, age))
                   -> GroupByKey
                   -> ParDo(WriteShard): sort paths, decode each, write one TFRecord file, plus a
                      summary JSON and a heartbeat file in OUT/.tmp-<id>/
    launcher: read the summaries, check found == written + rejected, write rejects.jsonl and
              manifest.json into the temp folder, then move the shards, the rejects and last the
              manifest (the commit point) into OUT.

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
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
# Beam's own TFRecord framing (length, masked CRC32C of length, payload, masked CRC32C of payload).
# It is an internal helper (leading underscore), used because WriteToTFRecord cannot give us our own
# deterministic sharding and per-shard order, and because it is the framing Beam itself writes and
# reads; it picks google-crc32c (a pinned dependency) for the CRC, so it is fast.
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

from pipeline.preprocess import beam_files
from pipeline.preprocess.beam_files import (OUTPUT_ERRNOS, TempFolder, check_free_space, output_error, pipeline_failure,
                                 read_file, remove_stale_temp_folders)
from pipeline.decode import DecodeError, decode_image, read_error_reason
from pipeline.preprocess.discover import Discovery, discover
from pipeline.errors import DataError
from pipeline.folds import FOLD_SPLITS
from pipeline.manifest import Manifest, SplitInfo
from pipeline.records import encode_example
from pipeline.schema import (CHANNELS, DEFAULT_IMAGE_SIZE, LABEL_NAMES, LAYOUT_ALIGNED_VALID, LAYOUT_FOLDS,
                             MANIFEST_NAME, REJECTS_NAME, RECORD_SUFFIX, SPLIT_DIRS, shard_name)

METRICS_NAMESPACE = "preprocess"
# Default shard size: about this many bytes of raw pixels per shard (the TFRecord guide's
# 100-200 MB), and at least two shards per split so that two workers have something to do.
TARGET_SHARD_BYTES = 128 * 1024 * 1024
MIN_SHARDS = 2
HEARTBEAT_SECONDS = 1.0
POLL_SECONDS = 0.5
SHARDING = "zlib.crc32(utf-8 relative path) mod shard count; records sorted by path within a shard"
# Shard files of either layout (so --overwrite replaces a run of the other layout completely).
_SHARD_FILE = re.compile(r"^(" + "|".join((*SPLIT_DIRS, *FOLD_SPLITS)) + r")-\d+-of-\d+"
                         + re.escape(RECORD_SUFFIX) + r"$")
_OUTPUT_NAMES = (MANIFEST_NAME, REJECTS_NAME)
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
    files_per_worker: list[int] = field(default_factory=list)   # files each worker process handled
    counters: dict[str, int] | None = None   # Beam Metrics, when the runner answers metrics queries

    replaced: list[str] = field(default_factory=list)   # old output files that were removed
    stale_removed: list[str] = field(default_factory=list)   # temp folders of killed runs, removed
    stale_bytes: int = 0                                     # what they held
    busy_temp: list[str] = field(default_factory=list)       # temp folders of runs still running

    @property
    def worker_processes(self) -> int:
        return len(self.files_per_worker)


def stable_shard(relpath: str, shards: int) -> int:
    """Shard of a file: a hash that is the same in every process and on every machine (unlike hash())."""
    return zlib.crc32(relpath.encode("utf-8")) % shards


def default_shards(count: int, image_size: int) -> int:
    """About TARGET_SHARD_BYTES of raw pixels per shard, at least MIN_SHARDS (fewer only if fewer files)."""
    raw = count * image_size * image_size * CHANNELS
    return max(1, min(count, max(MIN_SHARDS, math.ceil(raw / TARGET_SHARD_BYTES))))


# ------------------------------------------------------------------------------- worker side
def _heartbeat_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}.json"


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

    def process(self, element):
        (split, shard, count), items = element
        items = sorted(i for i in items if i is not None)   # (relpath, label, age), ordered by path
        name = shard_name(split, shard, count)
        summary = {"split": split, "shard": shard, "file": name, "assigned": len(items),
                   "worker": f"{socket.gethostname()}:{os.getpid()}"}
        try:
            summary.update(self._write_shard(split, shard, name, items))
        except OSError as err:
            # The output location cannot take the records (disk full, quota, read-only...): not a
            # bug, so no retry and no traceback from every worker; the launcher says it in one line.
            if not isinstance(err, BeamIOError) and err.errno not in OUTPUT_ERRNOS:
                raise
            beam_files.delete_files([FileSystems.join(self.tmp, name)])   # frees the space it took
            summary.update(written=0, by_label={}, by_age={}, rejects=[],
                           error=f"cannot write {name}: {err.strerror or err}")
        self._write_json("summaries", _heartbeat_name(split, shard), summary)

    def _write_shard(self, split: str, shard: int, name: str, items: list) -> dict:
        by_label: Counter = Counter()
        by_age: Counter = Counter()
        rejects = []
        last_beat = time.monotonic()
        # A retried bundle simply rewrites the same file: the output does not depend on retries.
        with FileSystems.create(FileSystems.join(self.tmp, name),
                                compression_type=CompressionTypes.UNCOMPRESSED) as f:
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
                    # The launcher polls these files: workers may be other processes or machines.
                    self._write_json("progress", _heartbeat_name(split, shard), {"done": done})
                    last_beat = now
        return {"written": sum(by_label.values()), "by_label": dict(by_label), "by_age": dict(by_age),
                "rejects": rejects}


def _explode(plan):
    """The launcher's plan -> one (key, file) element per input file, keys in the planned order."""
    for key, items in plan:
        if not items:
            yield key, None     # an empty shard still gets its (empty) file and its summary
        for item in items:
            yield key, item


# ------------------------------------------------------------------------------- launcher side
def _beam_options(beam_args: list[str] | None) -> tuple[PipelineOptions, str, bool]:
    """Pipeline options with our DirectRunner defaults (multi-processing on every core) unless the
    user chose; DataError for options that neither the CLI nor Beam knows (they would be dropped)."""
    args = list(beam_args or [])
    options = PipelineOptions(args)
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_logger.level
    beam_logger.setLevel(logging.ERROR)   # its "Discarding unparseable args" warning: we raise instead
    try:
        known = set(options.get_all_options())
        unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - known)
    finally:
        beam_logger.setLevel(level)
    if unknown:
        raise DataError(f"unknown option(s) {', '.join('--' + u for u in unknown)}: neither preprocess "
                        f"nor Beam's PipelineOptions knows them (see `python cli.py preprocess --help`)")
    runner = options.view_as(StandardOptions).runner
    direct = runner is None or runner.lower() in ("directrunner", "direct")
    if direct:
        given = {a.split("=", 1)[0] for a in args}
        if "--direct_running_mode" not in given:
            args.append("--direct_running_mode=multi_processing")
        if "--direct_num_workers" not in given:
            args.append(f"--direct_num_workers={os.cpu_count() or 1}")
        if "--default_sdk_harness_log_level" not in given:
            # Local worker processes otherwise log their start, stop and Beam-internal warnings on
            # our terminal; errors still show.
            args.append("--default_sdk_harness_log_level=ERROR")
        options = PipelineOptions(args)
        d = options.view_as(DirectOptions)
        workers = d.direct_num_workers or (os.cpu_count() or 1)
        description = f"DirectRunner ({d.direct_running_mode}, {workers} worker{'s' * (workers != 1)})"
    else:
        description = str(runner)
    return options, description, direct


class _QuietWorkersRunner(FnApiRunner):
    """The FnApiRunner with its multi_processing workers started through `pipeline.preprocess.worker`
    (Beam's own worker, with Python logging set up before Beam is imported: see there) instead of
    `python -m apache_beam.runners.worker.sdk_worker_main`. The worker command is the payload of
    the pipeline's subprocess environment, which is how Beam tells a runner how to start workers."""

    def run_via_runner_api(self, pipeline_proto, options):
        worker = [sys.executable, "-m", "pipeline.preprocess.worker", "--launcher-pid", str(os.getpid())]
        # Beam runs the command with the shell; `exec` keeps the launcher thread's signal mask
        # (SIGINT blocked, see _run_pipeline) for the worker, where dash would reset it.
        command = (f"exec {shlex.join(worker)}" if os.name == "posix" else subprocess.list2cmdline(worker)).encode()
        for environment in pipeline_proto.components.environments.values():
            if environment.urn == python_urns.SUBPROCESS_SDK and environment.payload.endswith(b"sdk_worker_main"):
                environment.payload = command
        return super().run_via_runner_api(pipeline_proto, options)


def _local_runner(options: PipelineOptions) -> FnApiRunner:
    """The FnApiRunner, built the way Beam's DirectRunner builds it. Beam 2.77's DirectRunner first
    tries the Prism runner, which it downloads from GitHub at run time and which does not honour
    --direct_running_mode / --direct_num_workers; the FnApiRunner runs offline with our settings."""
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return _QuietWorkersRunner(provision_info=provision)


@contextmanager
def _workers_can_import_us() -> Iterator[None]:
    """Local worker processes (DirectRunner multi_processing) inherit the environment and must
    import `pipeline` to unpickle the DoFn, also when the CLI was started from another folder
    without installing the package: put the project root on their PYTHONPATH while the job runs.
    (Remote runners get the code through --setup_file or a container, as Beam documents.)"""
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before = os.environ.get("PYTHONPATH")
    parts = [p for p in (before or "").split(os.pathsep) if p]
    if project not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([project, *parts])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _existing_outputs(out: str) -> list[str]:
    """Files in OUT that a previous run wrote (manifest, rejects, shards), as full paths: OUT is
    listed and the names matched literally (never a glob on the user's path)."""
    # No exists() check first: on object stores (gs://, s3://) a folder is only a prefix and
    # "does not exist" even when it holds files.
    return [FileSystems.join(out, name) for name in beam_files.list_names(out)
            if name in _OUTPUT_NAMES or _SHARD_FILE.match(name)]


def _write_launcher_file(out: str, path: str, data: bytes) -> None:
    """A file the launcher writes into the temp folder: an unwritable OUT is one clear error."""
    try:
        beam_files.write_file(path, data)
    except Exception as err:  # noqa: BLE001 - permission denied, read-only file system, disk full, bad bucket...
        raise output_error(out, err) from None


def _read_json_files(folder: str) -> dict[str, dict]:
    """name -> parsed JSON of every file in a folder; files being rewritten right now are skipped."""
    bodies = {}
    for name in beam_files.list_names(folder):
        try:
            bodies[name] = json.loads(read_file(FileSystems.join(folder, name)))
        except Exception:  # noqa: BLE001 - a heartbeat caught mid-write: use the next poll's value
            continue
    return bodies


def _plan(discovery: Discovery, shard_counts: dict[str, int]):
    """[(key, [(relpath, label, age), ...])] for every shard, largest first: the DirectRunner hands
    grouped keys to its workers round-robin in arrival order, so this order balances the cores."""
    groups: dict[tuple, list] = {}
    for split, count in shard_counts.items():
        for shard in range(count):
            groups[(split, shard, count)] = []
    for c in discovery.candidates:
        count = shard_counts[c.split]
        groups[(c.split, stable_shard(c.relpath, count), count)].append((c.relpath, c.label, c.age))
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].split(" (", 1)[0]


def run_preprocess(root: str, out: str, image_size: int = DEFAULT_IMAGE_SIZE, train_shards: int | None = None,
                   valid_shards: int | None = None, beam_args: list[str] | None = None,
                   overwrite: bool = False, progress: Callable[[dict], None] | None = None,
                   layout: str = "auto", fold_shards: int | None = None) -> PreprocessSummary:
    """Convert ROOT (any Beam file system) into records in OUT.

    layout: "aligned-valid" (agegender_cleaned: splits train, valid), "adience-folds" (the official
    fold files: splits fold0 … fold4, each fold's shards counted by fold_shards) or "auto" (the
    fold files decide, see discover.detect_layout).

    progress, if given, is called about twice a second with {"done", "total", "rate"} (images
    handled so far, images to handle, images/s since the start, start-up included).
    """
    start = time.monotonic()
    if image_size < 1:
        raise DataError(f"--image-size must be a positive number of pixels, got {image_size}")
    for flag, value in (("--train-shards", train_shards), ("--valid-shards", valid_shards),
                        ("--fold-shards", fold_shards)):
        if value is not None and value < 1:
            raise DataError(f"{flag} must be at least 1, got {value}")
    out = out.rstrip("/") or out
    options, runner, local = _beam_options(beam_args)
    discovery = discover(root, layout)
    root = discovery.root
    if FileSystems.exists(out) and "://" not in out and not os.path.isdir(out):
        raise DataError(f"output {out} is a file; -o needs a folder")
    stale, stale_bytes, busy = remove_stale_temp_folders(out)
    old = _existing_outputs(out)
    if old and not overwrite:
        raise DataError(f"{out} already holds records ({len(old)} files: manifest, shards or rejects); "
                        f"pass --overwrite to replace them")

    per_split = Counter(c.split for c in discovery.candidates)
    if discovery.layout == LAYOUT_FOLDS:
        # Every fold is in the output, even one without a usable row: the protocol has five.
        per_split = Counter({split: per_split.get(split, 0) for split in FOLD_SPLITS})
    requested = {"train": train_shards, "valid": valid_shards, **{split: fold_shards for split in FOLD_SPLITS}}
    shard_counts = {split: requested.get(split) or default_shards(n, image_size)
                    for split, n in sorted(per_split.items())}
    plan = _plan(discovery, shard_counts)
    total = len(discovery.candidates)
    check_free_space(out, total * (image_size * image_size * CHANNELS + RECORD_OVERHEAD_BYTES),
                     f"the {total} records")

    temp = TempFolder(out)
    tmp = temp.path
    try:
        try:
            temp.lock()
        except OSError as err:
            raise output_error(out, err) from None
        plan_summary = {"root": root, "layout": discovery.layout, "files": total, "shards": shard_counts}
        _write_launcher_file(out, FileSystems.join(tmp, "plan.json"),
                             json.dumps(plan_summary, sort_keys=True).encode("utf-8"))
        result, counters = _run_pipeline(plan, root, tmp, image_size, options, local, total, start, progress)
        summaries = _read_json_files(FileSystems.join(tmp, "summaries"))
        failed = sorted(body["error"] for body in summaries.values() if body.get("error"))
        if failed:
            raise DataError(f"{failed[0]} in {out}; nothing was replaced (free space or fix the folder, then rerun)")
        manifest, rejects = _reconcile(discovery, plan, shard_counts, summaries, image_size)
        replaced = _commit(out, tmp, old, manifest, rejects)
    finally:
        temp.close()
    seconds = time.monotonic() - start
    if progress is not None:
        progress({"done": total, "total": total, "rate": total / max(seconds, 1e-9)})
    return PreprocessSummary(
        out=out, root=root, manifest=manifest, found=manifest.found,
        written=manifest.found - manifest.rejected, rejected=manifest.rejected,
        rejects_path=FileSystems.join(out, REJECTS_NAME),
        reject_reasons=dict(sorted(Counter(_reason_kind(r) for _, r in rejects).items())),
        skipped_folders=discovery.skipped_folders, seconds=seconds,
        images_per_second=manifest.found / max(seconds, 1e-9), runner=runner,
        layout=discovery.layout, unlisted=discovery.unlisted, files_per_worker=_files_per_worker(summaries),
        counters=counters, replaced=replaced, stale_removed=stale, stale_bytes=stale_bytes, busy_temp=busy)


def _files_per_worker(summaries: dict[str, dict]) -> list[int]:
    """How the shards were spread: files handled by each worker process, most first."""
    per_worker: Counter = Counter()
    for body in summaries.values():
        per_worker[body.get("worker")] += body["assigned"]
    return sorted(per_worker.values(), reverse=True)


def _run_pipeline(plan, root, tmp, image_size, options, local, total, start, progress):
    """Run the Beam pipeline in a background thread while this thread reports progress."""
    pipeline = beam.Pipeline(runner=_local_runner(options) if local else None, options=options)
    _ = (pipeline
         | "Plan" >> beam.Create([plan])
         | "OneElementPerFile" >> beam.FlatMap(_explode)
         | "GroupByShard" >> beam.GroupByKey()
         | "DecodeAndWriteShard" >> beam.ParDo(WriteShard(root, tmp, image_size)))
    outcome: dict = {}

    def run():
        if hasattr(signal, "pthread_sigmask"):
            # The worker processes this thread starts inherit its signal mask: SIGINT blocked, so a
            # Ctrl-C during a worker's start-up waits until the worker lets it end it, silently
            # (pipeline.preprocess.worker). Signals still reach the launcher's main thread.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with _workers_can_import_us():
                result = pipeline.run()
                result.wait_until_finish()
            outcome["result"] = result
        except BaseException as err:  # noqa: BLE001 - re-raised in the launching thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="beam-preprocess", daemon=True)
    thread.start()
    progress_dir = FileSystems.join(tmp, "progress")
    summary_dir = FileSystems.join(tmp, "summaries")
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        if progress is not None and thread.is_alive():
            beats = _read_json_files(progress_dir)
            beats.update({k: {"done": v.get("assigned", 0)} for k, v in _read_json_files(summary_dir).items()})
            done = min(total, sum(int(b.get("done", 0)) for b in beats.values()))
            progress({"done": done, "total": total, "rate": done / max(time.monotonic() - start, 1e-9)})
    if "error" in outcome:
        raise pipeline_failure(outcome["error"], tmp.rsplit("/", 1)[0])
    result = outcome["result"]
    counters = None
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
        counters = {c.key.metric.name: int(c.committed) for c in query["counters"]}
    except Exception:  # noqa: BLE001 - some runners do not answer metrics queries
        counters = None
    return result, counters


def _reconcile(discovery: Discovery, plan, shard_counts, summaries, image_size):
    """Check every input is accounted for (written or rejected) and build the manifest."""
    rejects: list[tuple[str, str]] = list(discovery.skipped)
    splits: dict[str, SplitInfo] = {}
    for split, count in shard_counts.items():
        by_label = {name: 0 for name in LABEL_NAMES}
        by_age: Counter = Counter()
        shards, shard_records = [], []
        for shard in range(count):
            body = summaries.get(_heartbeat_name(split, shard))
            if body is None:
                raise DataError(f"internal check failed: shard {shard} of {split} reported nothing; "
                                f"nothing was replaced, rerun the command")
            shards.append(body["file"])
            shard_records.append(int(body["written"]))
            for name, n in body["by_label"].items():
                by_label[name] += n
            by_age.update(body["by_age"])
            rejects.extend((path, reason) for path, reason in body["rejects"])
        splits[split] = SplitInfo(shards=shards, count=sum(by_label.values()), by_label=by_label,
                                  by_age={a: by_age[a] for a in sorted(by_age, key=int)}, shard_counts=shard_records)
    for key, items in plan:
        split, shard, _ = key
        body = summaries[_heartbeat_name(split, shard)]
        if body["assigned"] != len(items) or body["written"] + len(body["rejects"]) != len(items):
            raise DataError(f"internal check failed: {body['file']} was given {len(items)} files but wrote "
                            f"{body['written']} and rejected {len(body['rejects'])}; nothing was replaced")
    written = sum(s.count for s in splits.values())
    if discovery.found != written + len(rejects):
        raise DataError(f"internal check failed: found {discovery.found} files but wrote {written} and "
                        f"rejected {len(rejects)}; nothing was replaced")
    rejects.sort()
    extra = {"sharding": SHARDING, "skipped_folders": discovery.skipped_folders}
    if discovery.layout == LAYOUT_FOLDS:
        # Images under aligned/ that no fold row names: not part of the protocol (not inputs, so
        # not in found), listed so that nothing is silently ignored.
        extra.update(users_per_fold=discovery.users_per_split, subject_exclusive=True,
                     unlisted=len(discovery.unlisted), unlisted_files=discovery.unlisted)
    manifest = Manifest(image_size=image_size, source_root=discovery.root, splits=splits,
                        found=discovery.found, rejected=len(rejects), layout=discovery.layout, extra=extra)
    return manifest, rejects


def _commit(out: str, tmp: str, old: list[str], manifest: Manifest, rejects) -> list[str]:
    """Swap the new output in. rejects.jsonl and manifest.json are written into the temp folder
    first (a full disk fails here, with nothing replaced); then the old manifest goes first and the
    new one arrives last, so at no moment does OUT hold a manifest next to a mix of old and new
    shards. Renames need no space."""
    text = "".join(json.dumps({"path": p, "reason": r}) + "\n" for p, r in rejects)
    _write_launcher_file(out, FileSystems.join(tmp, REJECTS_NAME), text.encode("utf-8"))
    _write_launcher_file(out, FileSystems.join(tmp, MANIFEST_NAME), manifest.to_json().encode("utf-8"))
    old_manifest = [p for p in old if p.replace("\\", "/").endswith("/" + MANIFEST_NAME)]
    beam_files.delete_files(old_manifest)
    beam_files.delete_files([p for p in old if p not in old_manifest])
    names = [name for split in manifest.splits.values() for name in split.shards] + [REJECTS_NAME, MANIFEST_NAME]
    beam_files.rename([FileSystems.join(tmp, n) for n in names], [FileSystems.join(out, n) for n in names])
    return old
