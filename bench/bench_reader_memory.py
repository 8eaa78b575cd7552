"""bench_reader_memory: peak memory (peak RSS) of each reader mode, each in a fresh process.

On the same generated records (made once under bench/work/reader_memory/ and reused while valid),
one child process per case (`--child CASE`), so that no peak hides another:
- baseline: a process that only imported TensorFlow and the reader (pipeline.reader);
- the reader, make_dataset(..., memory="low" | "high", augment=False | True), batch 32, shuffled as
  in training, iterating two full epochs (a new make_dataset per epoch, as training does: the high
  mode's RAM cache is filled in the first and reused in the second);
- low and high again on a dataset twice the size (the train split listed twice, read as one split),
  to show which peak grows with the data.
Peak RSS is the kernel's high-water mark VmHWM from /proc/self/status, read by the child at its
end. The reader's own cost is peak - baseline. Expected: high ~ baseline + the decoded dataset
(count x 224 x 224 x 3 bytes); low ~ baseline + bounded buffers (the shuffle buffer of serialized
records, prefetched batches), whatever the dataset's size.

Usage: .venv/bin/python bench/bench_reader_memory.py [--images 3000]
Last line: one JSON object (see bench/run_all.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

WORK = os.path.join(HERE, "work", "reader_memory")
JPEG_SIZE = 256
IMAGE_SIZE = 224
BATCH = 32
EPOCHS = 2
# case -> (memory mode, augment, copies of the train split read as one split per epoch). The
# 2-copy cases stand for a dataset twice the size (same files listed twice): low mode's peak
# should not move, high mode's should grow by the decoded size.
CASES = {"baseline": None, "low": ("low", False, 1), "high": ("high", False, 1),
         "low+augment": ("low", True, 1), "high+augment": ("high", True, 1),
         "low,2x": ("low", False, 2), "high,2x": ("high", False, 2)}
MB = 1024 * 1024


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM = peak RSS, VmRSS = current), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB   # the kernel reports kB
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


# ---------------------------------------------------------------------------------------- child
def child(case: str, records: str) -> dict:
    import tensorflow as tf  # noqa: F401  (the baseline's cost: TensorFlow and the reader imported)

    from pipeline.reader import LOW_SHUFFLE_BUFFER, make_dataset

    after_import = status_mb("VmHWM")
    out = {"case": case, "after_import_mb": after_import, "low_shuffle_buffer": LOW_SHUFFLE_BUFFER}
    if case != "baseline":
        memory, augment, copies = CASES[case]
        images, started, peaks = 0, time.perf_counter(), []
        for epoch in range(EPOCHS):
            for batch in make_dataset(records, ["train"] * copies, BATCH, memory=memory, augment=augment,
                                      shuffle=True, seed=0, epoch=epoch):
                images += int(batch[1].shape[0])
            peaks.append(status_mb("VmHWM"))
        out.update(images=images, seconds=time.perf_counter() - started, epoch_peaks_mb=peaks)
    out.update(peak_mb=status_mb("VmHWM"), end_rss_mb=status_mb("VmRSS"))
    return out


# --------------------------------------------------------------------------------------- parent
def records_valid(records: str, images: int) -> bool:
    """Records of this run's parameters, complete (manifest readable, counts and shards as expected)."""
    from pipeline.errors import DataError
    from pipeline.manifest import load_manifest

    try:
        manifest = load_manifest(records, IMAGE_SIZE)
    except DataError:
        return False
    train = manifest.splits.get("train")
    if train is None or train.count != images or manifest.rejected:
        return False
    shards = [os.path.join(records, name) for name in train.shards]
    return all(os.path.exists(path) and os.path.getsize(path) > 0 for path in shards)


def prepare(images: int) -> str:
    """The generated records, made once and reused while valid."""
    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    jpegs, records = os.path.join(WORK, f"jpegs-{images}"), os.path.join(WORK, f"records-{images}")
    if records_valid(records, images):
        print(f"reusing {records}", flush=True)
        return records
    done = os.path.join(jpegs, ".complete")
    if not os.path.exists(done):
        print(f"generating {images} {JPEG_SIZE}x{JPEG_SIZE} JPEGs in {jpegs} (once) ...", flush=True)
        shutil.rmtree(jpegs, ignore_errors=True)
        make_adience_tree(jpegs, n_train=images, n_valid=0, image_size=JPEG_SIZE, seed=0, bad_files=False,
                          variety=False)
        open(done, "w").close()
    print(f"preprocessing them into {records} at {IMAGE_SIZE}x{IMAGE_SIZE} (once) ...", flush=True)
    run_preprocess(jpegs, records, image_size=IMAGE_SIZE, overwrite=True,
                   beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    if not records_valid(records, images):
        raise SystemExit(f"preprocess did not write {images} valid train records to {records}")
    return records


def run_child(case: str, records: str) -> dict:
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case, "--records", records],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {case} child failed (exit {proc.returncode})")
    result = json.loads(lines[-1])
    result.update(load_before=load, load_after=os.getloadavg()[0])
    rate = (f", {result['images']} images in {result['seconds']:.1f} s, peak after each epoch "
            + ", ".join(f"{x:.0f}" for x in result["epoch_peaks_mb"]) + " MB") if "images" in result else ""
    print(f"{case:14s} peak RSS {result['peak_mb']:7.0f} MB (after imports {result['after_import_mb']:.0f} MB, "
          f"at the end {result['end_rss_mb']:.0f} MB){rate}", flush=True)
    return result


def describe(case: str, images: int) -> str:
    if case == "baseline":
        return "baseline: process that only imported TensorFlow and the reader"
    memory, augment, copies = CASES[case]
    size = f"{images * copies:,} records/epoch" + (" (the set read twice = a 2x dataset)" if copies > 1 else "")
    return f"reader {memory} memory{' + augmentation' if augment else ''}, {EPOCHS} epochs of {size}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000, help="generated training images")
    ap.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--records", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.records)))
        return 0
    if args.images < BATCH:
        ap.error(f"--images must be at least {BATCH}")

    records = prepare(args.images)
    on_disk = sum(os.path.getsize(os.path.join(records, n)) for n in os.listdir(records) if n.endswith(".tfrecord"))
    decoded = args.images * IMAGE_SIZE * IMAGE_SIZE * 3
    print(f"{args.images} records at {IMAGE_SIZE}x{IMAGE_SIZE}: {decoded / MB:.0f} MB decoded, "
          f"{on_disk / MB:.0f} MB of TFRecords; one fresh process per case", flush=True)
    results = {case: run_child(case, records) for case in CASES}
    base = results["baseline"]["peak_mb"]

    rows = []
    for case, r in results.items():
        row = {"what": describe(case, args.images)}
        if "images" in r:
            row["images_per_s"] = round(r["images"] / r["seconds"], 1)
        row["peak_rss_mb"] = round(r["peak_mb"], 1)
        rows.append(row)
    buffer_mb = results["low"]["low_shuffle_buffer"] * on_disk / args.images / MB
    notes = [
        f"dataset: {args.images} generated {JPEG_SIZE}x{JPEG_SIZE} JPEGs -> {IMAGE_SIZE}x{IMAGE_SIZE} records; "
        f"raw size {args.images} x {IMAGE_SIZE}x{IMAGE_SIZE}x3 bytes = {decoded / MB:.0f} MB "
        f"({on_disk / MB:.0f} MB of TFRecord files)",
        f"peak RSS = VmHWM of a fresh process per case; batch {BATCH}, shuffled as in training, {EPOCHS} full epochs; "
        f"baseline = {base:.0f} MB (TensorFlow + pipeline.reader imported, nothing run)",
        "the reader's own cost (peak - baseline): " + "; ".join(
            f"{c}: {results[c]['peak_mb'] - base:.0f} MB" for c in CASES if c != "baseline"),
        f"expected: high ~ baseline + the decoded dataset ({decoded / MB:.0f} MB here, growing with the dataset); "
        f"low ~ baseline + bounded buffers whatever the dataset's size: mainly the shuffle buffer of "
        f"{results['low']['low_shuffle_buffer']} serialized records (~{buffer_mb:.0f} MB here) plus prefetched "
        "batches and in-flight parse/augment work",
        f"doubling the data ({decoded / MB:.0f} MB more decoded): low memory peak "
        f"{results['low,2x']['peak_mb'] - results['low']['peak_mb']:+.0f} MB, high memory peak "
        f"{results['high,2x']['peak_mb'] - results['high']['peak_mb']:+.0f} MB",
        "images/s: of that one run (one pass, on a shared machine), for orientation; the reader's speed is "
        "benchmarked in bench_reader",
        "load average (1 min) before each case: " + ", ".join(
            f"{c} {r['load_before']:.1f}" for c, r in results.items()) + f" on {os.cpu_count()} cores",
    ]
    print()
    print(json.dumps({"bench": "bench_reader_memory", "rows": rows, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
