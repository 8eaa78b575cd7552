"""GPU benchmark (run by bench/gpu.sh on a machine with NVIDIA GPUs): training images/s of the full-size
VGG-Face with the default head, float32 against mixed precision (--precision auto), one GPU against
all of them, through the real `train` command. Writes its table into bench/RESULTS.md (section
"GPU"), replacing an earlier one. Not part of `make bench` (its machines have no GPU).

Each setting trains 2 epochs of generated 224x224 records (random full-size weights: the real
VGG_FACE.t7 is not needed to time it) in a fresh process; the figure is epoch 2's images/s from the
history CSV (epoch 1 pays for tracing, XLA compilation and filling the cache).
Usage: bench/gpu.sh [--images 4096] [--batch 64]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
SECTION = "## GPU (bench/gpu.sh)"


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def inputs(work: str, images: int) -> tuple[str, str]:
    """Full-size random VGG_FACE.t7 and generated 224x224 records (made once in bench/work)."""
    from model.network.t7_writer import write_vggface_t7
    from model.network.vggface import FULL_WIDTHS
    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    weights, records = os.path.join(work, "full_vggface.t7"), os.path.join(work, "records")
    if not os.path.exists(weights):
        write_vggface_t7(weights, FULL_WIDTHS)
    if not os.path.exists(os.path.join(records, "manifest.json")):
        make_adience_tree(os.path.join(work, "root"), n_train=images, n_valid=256, image_size=256, seed=0,
                          bad_files=False, variety=False)
        run_preprocess(os.path.join(work, "root"), records, image_size=224)
    return weights, records


def train_rate(weights: str, records: str, out: str, precision: str, devices: str, batch: int) -> float:
    """Epoch 2's images/s of `train` with CUDA_VISIBLE_DEVICES=devices."""
    model = os.path.join(out, f"m_{precision}_{devices.replace(',', '-')}.keras")
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "train", "-w", weights, "-i", records, "-o", model,
               "-e", "2", "-b1", str(batch), "-m", "high", "--precision", precision, "--checkpoint-every", "1000000"]
    done = subprocess.run(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": devices}, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"train failed ({precision}, GPUs {devices}):\n{done.stderr[-3000:]}")
    print(re.search(r"^devices: .*$", done.stdout, re.M).group(0), flush=True)
    with open(model[: -len(".keras")] + "_history.csv") as f:
        return float(list(csv.DictReader(f))[1]["images_per_s"])


def write_section(lines: list[str]) -> None:
    path = os.path.join(HERE, "RESULTS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    if SECTION in text:     # replace the earlier GPU section, up to the next one
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + text[nxt + 1:] if nxt >= 0 else text[:start]
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
    print(f"wrote the GPU section of {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64, help="per GPU (-b1)")
    args = ap.parse_args()
    gpus = gpu_names()
    if not gpus:
        print("no NVIDIA GPU found (nvidia-smi lists none): this benchmark is for GPU machines; install with "
              "pip install 'gender-classifier[gpu]' there", file=sys.stderr)
        return 2
    work = os.path.join(HERE, "work", "gpu")
    os.makedirs(work, exist_ok=True)
    weights, records = inputs(work, args.images)
    settings = [("float32", "0"), ("auto", "0")]
    if len(gpus) > 1:
        every = ",".join(str(i) for i in range(len(gpus)))
        settings += [("float32", every), ("auto", every)]
    rates = {}
    for precision, devices in settings:
        rates[(precision, devices)] = train_rate(weights, records, work, precision, devices, args.batch)
        print(f"{precision:8s} GPUs {devices}: {rates[(precision, devices)]:,.0f} images/s", flush=True)
    base = rates[("float32", "0")]
    lines = [SECTION, "", f"Made on {datetime.date.today().isoformat()} with {len(gpus)} GPU(s): {', '.join(gpus)}; "
             f"full-size VGG-Face, default head, batch {args.batch} per GPU, 224x224, epoch 2 of `train`.", "",
             "| precision | GPUs | images/s | against float32 on one GPU |", "|---|---|---:|---:|"]
    for (precision, devices), rate in rates.items():
        lines.append(f"| {precision} | {devices} | {rate:,.0f} | {rate / base:.2f}x |")
    write_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
