"""Benchmark: the preprocess Beam job against a plain single-process loop doing the same work.

Both convert the same 5,000 generated 816×816 JPEGs (the size of Adience's aligned faces) to
224×224 records: read the file, decode_image, encode_example, write TFRecord framing. The loop is
one process; the Beam job runs with its defaults (DirectRunner, multi-processing, every core),
start-up, discovery and the final commit included. Target: Beam >= 1.3x the loop's images/s.

    .venv/bin/python bench/bench_preprocess.py [--images 5000] [--size 816] [--extra]

The inputs are generated once and cached in bench/work/. The last line printed is one JSON object
for `make bench` (bench/run_all.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from apache_beam.io.tfrecordio import _TFRecordUtil  # noqa: E402  (same framing as the job)

from pipeline.preprocess.job import run_preprocess  # noqa: E402
from pipeline.decode import DecodeError, decode_image, read_bytes  # noqa: E402
from pipeline.preprocess.discover import discover  # noqa: E402
from pipeline.records import encode_example  # noqa: E402
from pipeline.synthetic.tree import make_adience_tree  # noqa: E402

TARGET = 1.3
OUTPUT_SIZE = 224


def inputs(images: int, size: int, seed: int = 0) -> str:
    """The cached generated tree: 90 % training, 10 % validation, plain JPEGs, no bad files."""
    root = os.path.join(HERE, "work", f"adience-{size}-{images}-seed{seed}")
    stamp = os.path.join(root, "GENERATED")
    if not os.path.exists(stamp):
        shutil.rmtree(root, ignore_errors=True)
        started = time.monotonic()
        print(f"generating {images} {size}x{size} JPEGs in {root} (once) ...", flush=True)
        n_valid = images // 10
        make_adience_tree(root, n_train=images - n_valid, n_valid=n_valid, image_size=size, seed=seed,
                          bad_files=False, variety=False)
        with open(stamp, "w") as f:
            f.write(f"{images} {size} {seed}\n")
        print(f"  generated in {time.monotonic() - started:.0f} s", flush=True)
    return root


def warm_page_cache(root: str) -> int:
    """Read every input once so that neither contestant pays for the first disk read."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                total += len(f.read())
    return total


def plain_loop(root: str, out: str) -> tuple[float, int]:
    """The baseline: one process, same discovery, same decode/encode/framing, one file per split."""
    started = time.monotonic()
    discovery = discover(root)
    os.makedirs(out, exist_ok=True)
    handles = {}
    written = 0
    try:
        for c in discovery.candidates:
            if c.split not in handles:
                handles[c.split] = open(os.path.join(out, f"{c.split}.tfrecord"), "wb")
            try:
                image = decode_image(read_bytes(os.path.join(root, c.relpath)), OUTPUT_SIZE)
            except DecodeError:
                continue
            _TFRecordUtil.write_record(handles[c.split], encode_example(image, c.label, c.age, c.relpath))
            written += 1
    finally:
        for h in handles.values():
            h.close()
    return time.monotonic() - started, written


def record_digests(folder: str) -> list[str]:
    """Sorted digests of every record in every .tfrecord file of a folder (order-independent)."""
    digests = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".tfrecord"):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            while (record := _TFRecordUtil.read_record(f)) is not None:
                digests.append(hashlib.sha1(record).hexdigest())
    return sorted(digests)


def beam_run(root: str, out: str, beam_args: list[str] | None) -> tuple[float, int, str]:
    started = time.monotonic()
    summary = run_preprocess(root, out, image_size=OUTPUT_SIZE, beam_args=beam_args, overwrite=True)
    seconds = time.monotonic() - started
    spread = " + ".join(str(n) for n in summary.files_per_worker)
    return seconds, summary.written, f"{summary.runner} [files per worker process: {spread}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=816)
    parser.add_argument("--extra", action="store_true",
                        help="also time the in-process (in_memory) and multi_threading DirectRunner modes")
    args = parser.parse_args()

    root = inputs(args.images, args.size)
    work = os.path.join(HERE, "work", "out")
    shutil.rmtree(work, ignore_errors=True)
    megabytes = warm_page_cache(root) / 1e6
    print(f"inputs: {args.images} JPEGs of {args.size}x{args.size} ({megabytes:.0f} MB) -> "
          f"{OUTPUT_SIZE}x{OUTPUT_SIZE} records; {os.cpu_count()} CPU cores", flush=True)

    loop_s, loop_n = plain_loop(root, os.path.join(work, "loop"))
    loop_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loop_rate = loop_n / loop_s
    print(f"plain loop, 1 process:           {loop_n} images in {loop_s:6.1f} s = {loop_rate:6.1f} images/s",
          flush=True)

    beam_s, beam_n, runner = beam_run(root, os.path.join(work, "beam"), None)
    beam_rate = beam_n / beam_s
    ratio = beam_rate / loop_rate
    print(f"Beam job, {runner}: {beam_n} images in {beam_s:6.1f} s = {beam_rate:6.1f} images/s "
          f"(start-up included) -> {ratio:.2f}x the loop (target {TARGET}x)", flush=True)

    same = record_digests(os.path.join(work, "loop")) == record_digests(os.path.join(work, "beam"))
    print(f"same records from both: {same}")
    rows = [
        {"what": "plain loop, 1 process (decode_image + encode_example + TFRecord write)",
         "images_per_s": round(loop_rate, 1), "peak_rss_mb": round(loop_rss)},
        {"what": f"Beam preprocess, {runner}, start-up included", "images_per_s": round(beam_rate, 1),
         "baseline": round(loop_rate, 1), "ratio": round(ratio, 2), "target": TARGET},
    ]
    if args.extra:
        for mode, extra in (("in_memory", ["--direct_running_mode=in_memory", "--direct_num_workers=1"]),
                            ("multi_threading", ["--direct_running_mode=multi_threading"])):
            s, n, desc = beam_run(root, os.path.join(work, "beam"), extra)
            print(f"Beam job, {desc}: {n / s:6.1f} images/s -> {n / s / loop_rate:.2f}x the loop", flush=True)
            rows.append({"what": f"Beam preprocess, {desc}", "images_per_s": round(n / s, 1),
                         "baseline": round(loop_rate, 1), "ratio": round(n / s / loop_rate, 2)})
    notes = [f"{args.images} generated {args.size}x{args.size} JPEGs (page cache warm), output "
             f"{OUTPUT_SIZE}x{OUTPUT_SIZE}; identical records from both: {same}",
             f"{'PASS' if ratio >= TARGET and same else 'FAIL'}: Beam {ratio:.2f}x the loop (target {TARGET}x)"]
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "preprocess", "rows": rows, "notes": notes}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
