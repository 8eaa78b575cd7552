"""Benchmark: `preprocess` on a Dask cluster of 1 worker against 2 workers (one process, one thread
each), and against the DirectRunner (multi-processing, every core), side by side in one run.

The same 5,000 generated 816×816 JPEGs as bench/bench_preprocess.py (cached in bench/work/), to
224×224 records. The Dask cluster (a `dask scheduler` and `dask worker` processes on 127.0.0.1) is
started before each timed run, as a user's cluster would be; the timed run is the whole job as
run_preprocess does it (connection, worker checks, discovery, decoding, the final commit).
Target: Dask 2 workers >= 1.6x Dask 1 worker on 2 cores. Every run's output must be byte-identical.

    .venv/bin/python bench/bench_preprocess_dask.py [--images 5000] [--size 816]

The last line printed is one JSON object (as the other benches).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_preprocess import inputs, warm_page_cache  # noqa: E402

from pipeline.preprocess.job import run_preprocess  # noqa: E402

TARGET = 1.6
OUTPUT_SIZE = 224


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and `workers` worker processes (1 thread each) on 127.0.0.1, all connected."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=ROOT)
    dask = [sys.executable, "-m", "dask"]
    quiet = dict(env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 start_new_session=True)
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              **quiet)]
    procs += [subprocess.Popen([*dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                               **quiet) for _ in range(workers)]
    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(address, timeout=5, set_as_default=False) as client:
                client.wait_for_workers(workers, timeout=60)
            return address, procs
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=30)


def timed(root: str, out: str, beam_args: list[str]) -> dict:
    started = time.monotonic()
    summary = run_preprocess(root, out, image_size=OUTPUT_SIZE, beam_args=beam_args, overwrite=True)
    seconds = time.monotonic() - started
    return {"runner": summary.runner, "images": summary.written, "seconds": round(seconds, 1),
            "images_per_s": round(summary.written / seconds, 1),
            "files_per_worker": " + ".join(str(n) for n in summary.files_per_worker)}


def output_bytes(folder: str) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=816)
    args = parser.parse_args()

    root = inputs(args.images, args.size)
    work = os.path.join(HERE, "work", "out-dask")
    shutil.rmtree(work, ignore_errors=True)
    megabytes = warm_page_cache(root) / 1e6
    load = os.getloadavg()
    print(f"inputs: {args.images} JPEGs of {args.size}x{args.size} ({megabytes:.0f} MB) -> {OUTPUT_SIZE}x{OUTPUT_SIZE} "
          f"records; {os.cpu_count()} CPU cores; load average before: {load[0]:.2f} {load[1]:.2f}", flush=True)
    rows = {}
    for workers in (1, 2):
        address, procs = start_cluster(workers)
        try:
            rows[f"dask{workers}"] = timed(root, os.path.join(work, f"dask{workers}"),
                                           ["--runner", "dask", "--dask_client_address", address])
        finally:
            stop_cluster(procs)
    rows["direct"] = timed(root, os.path.join(work, "direct"), [])
    for key, row in rows.items():
        print(f"{row['runner']:<55} {row['images']} images in {row['seconds']:6.1f} s = "
              f"{row['images_per_s']:6.1f} images/s [files per worker: {row['files_per_worker']}]", flush=True)
    ratio = rows["dask2"]["images_per_s"] / rows["dask1"]["images_per_s"]
    versus_direct = rows["dask2"]["images_per_s"] / rows["direct"]["images_per_s"]
    same = output_bytes(os.path.join(work, "dask1")) == output_bytes(os.path.join(work, "dask2")) \
        == output_bytes(os.path.join(work, "direct"))
    print(f"Dask 2 workers / 1 worker: {ratio:.2f}x (target {TARGET}x); Dask 2 workers / DirectRunner: "
          f"{versus_direct:.2f}x; byte-identical outputs: {same}; load average after: {os.getloadavg()[0]:.2f}")
    one = rows["dask1"]["images_per_s"]
    table = [
        {"what": f"{rows['dask1']['runner']}, start-up included", "images_per_s": one},
        {"what": f"{rows['dask2']['runner']} [files per worker: {rows['dask2']['files_per_worker']}]",
         "images_per_s": rows["dask2"]["images_per_s"], "baseline": one, "ratio": round(ratio, 2), "target": TARGET},
        {"what": f"{rows['direct']['runner']} [files per worker: {rows['direct']['files_per_worker']}]",
         "images_per_s": rows["direct"]["images_per_s"], "baseline": one,
         "ratio": round(rows["direct"]["images_per_s"] / one, 2)},
    ]
    verdict = "PASS" if ratio >= TARGET else "MISS"
    notes = [f"{args.images} generated {args.size}x{args.size} JPEGs (page cache warm), output {OUTPUT_SIZE}x{OUTPUT_SIZE}; "
             f"byte-identical outputs from all three: {same}",
             f"{verdict}: Dask 2 workers {ratio:.2f}x 1 worker (target {TARGET}x); 2 workers {versus_direct:.2f}x the "
             f"DirectRunner",
             f"load average before/after: {load[0]:.2f} / {os.getloadavg()[0]:.2f} (the machine is shared)"]
    print(json.dumps({"bench": "preprocess_dask", "rows": table, "notes": notes}))
    return 0 if same else 1

if __name__ == "__main__":
    sys.exit(main())
