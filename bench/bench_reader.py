"""bench_reader: the tf.data reader against the original's ImageDataGenerator, side by side in one run.

On the same generated 816×816 JPEGs (the size of Adience's aligned faces; made once and kept in
bench/work/reader/), preprocessed once by the Beam job into 224×224 records:
- the reader, batch 32, shuffled as in training: high memory mode (timed after the first epoch
  filled the RAM cache) and low memory mode (streaming the records), each without and with
  augmentation;
- the original's paths from the tf-keras package, batch 32, target 224×224: the low-memory
  `ImageDataGenerator.flow_from_dataframe` (decodes and resizes the JPEGs every time) and the
  high-memory `ImageDataGenerator.flow` on a preloaded array, without and with the original's
  augmentation (the same ranges as pipeline/augment.py, plus the original's vertical flip).

Every contestant is timed ROUNDS times, alternating, for about SECONDS each (whole epochs for the
reader, batches for ImageDataGenerator); the best round counts, so a burst of load from other
processes on the machine hurts as little as possible. Targets (issue 4): high mode ≥ 50× and low
mode ≥ 10× the original's low-memory path; with augmentation on both sides ≥ 10×.
The files are in the OS page cache after the warm-up epoch on both sides (300 MB of records,
about 250 MB of JPEGs): this measures the pipelines, not the disk.

Usage: .venv/bin/python bench/bench_reader.py [--images 2000] [--seconds 4] [--rounds 3]
Last line: one JSON object (see bench/run_all.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from pipeline.augment import DEFAULT_PARAMS  # noqa: E402

WORK = os.path.join(HERE, "work", "reader")
JPEG_SIZE = 816
IMAGE_SIZE = 224
BATCH = 32
HIGH_TARGET, LOW_TARGET, AUGMENT_TARGET = 50.0, 10.0, 10.0


def prepare(images: int) -> tuple[str, str]:
    """The generated JPEG tree and its records, made once and reused while the parameters match."""
    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    jpegs, records = os.path.join(WORK, f"jpegs-{images}"), os.path.join(WORK, f"records-{images}")
    done = os.path.join(jpegs, ".complete")
    if not os.path.exists(done):
        print(f"generating {images} {JPEG_SIZE}x{JPEG_SIZE} JPEGs in {jpegs} (once) ...", flush=True)
        if os.path.exists(jpegs):
            import shutil
            shutil.rmtree(jpegs)
        make_adience_tree(jpegs, n_train=images, n_valid=0, image_size=JPEG_SIZE, seed=0,
                          bad_files=False, variety=False)
        open(done, "w").close()
    if not os.path.exists(os.path.join(records, "manifest.json")):
        print(f"preprocessing them into {records} (once) ...", flush=True)
        run_preprocess(jpegs, records, image_size=IMAGE_SIZE, overwrite=True,
                       beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    return jpegs, records


class Meter:
    """images/s of one contestant: the best of its rounds."""

    def __init__(self, name: str):
        self.name, self.rates = name, []

    def add(self, images: int, seconds: float) -> None:
        self.rates.append(images / seconds)

    @property
    def best(self) -> float:
        return max(self.rates)


def time_reader(meter: Meter, records: str, memory: str, augment: bool, seconds: float, epoch0: int) -> int:
    """Whole shuffled epochs (a new make_dataset per epoch, as training does) until `seconds` passed."""
    from pipeline.reader import make_dataset

    images, epoch, start = 0, epoch0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in make_dataset(records, "train", BATCH, memory=memory, augment=augment, shuffle=True,
                                  seed=0, epoch=epoch):
            images += int(batch[1].shape[0])
        epoch += 1
    meter.add(images, time.perf_counter() - start)
    return epoch


def time_iterator(meter: Meter, iterator, seconds: float) -> None:
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, _ = next(iterator)
        images += len(x)
    meter.add(images, time.perf_counter() - start)


def original_generators(jpegs: str, preloaded: np.ndarray, labels: np.ndarray) -> dict:
    """The original's four iterators (tf-keras ImageDataGenerator), as the original built them."""
    import pandas as pd
    from tf_keras.preprocessing.image import ImageDataGenerator

    rows = []
    for folder, _, files in os.walk(os.path.join(jpegs, "aligned")):
        for name in files:
            gender = os.path.basename(folder).split("_")[1]
            rows.append({"filename": os.path.relpath(os.path.join(folder, name), jpegs),
                         "gender": "male" if gender == "M" else "female"})
    frame = pd.DataFrame(sorted(rows, key=lambda r: r["filename"]))
    p = DEFAULT_PARAMS
    augmenting = dict(rotation_range=p.rotation_degrees, width_shift_range=p.shift_fraction,
                      height_shift_range=p.shift_fraction, zoom_range=p.zoom_fraction,
                      brightness_range=list(p.brightness_range), horizontal_flip=True, vertical_flip=True)
    out = {}
    for aug in (False, True):
        gen = ImageDataGenerator(**(augmenting if aug else {}))
        out[("low", aug)] = gen.flow_from_dataframe(
            frame, directory=jpegs, x_col="filename", y_col="gender", target_size=(IMAGE_SIZE, IMAGE_SIZE),
            class_mode="binary", batch_size=BATCH, shuffle=True, seed=0)
        out[("high", aug)] = gen.flow(preloaded, labels, batch_size=BATCH, shuffle=True, seed=0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    load_before = os.getloadavg()
    jpegs, records = prepare(args.images)

    import tensorflow as tf
    from pipeline.reader import describe_dataset, make_dataset

    info = describe_dataset(records, "train")
    print(f"{info['count']} records, {info['bytes_in_memory'] / 1e6:.0f} MB decoded; "
          f"{args.rounds} rounds of ~{args.seconds:.0f} s per contestant", flush=True)

    reader_cases = [(m, a) for m in ("high", "low") for a in (False, True)]
    meters = {("reader",) + c: Meter(f"reader {c[0]} memory{' + augmentation' if c[1] else ''}")
              for c in reader_cases}
    # Warm-up: fills the high mode's RAM cache, compiles the augmentation, loads the page cache.
    preloaded, labels = [], []
    for memory, aug in reader_cases:
        for batch in make_dataset(records, "train", BATCH, memory=memory, augment=aug, shuffle=True, epoch=0):
            if memory == "high" and not aug:
                preloaded.append(batch[0].numpy())
                labels.append(batch[1].numpy())
    # The original's high-memory mode holds the whole set as an array (ImageDataGenerator.flow
    # keeps it as float32); its loading time is not measured, like the reader's cache filling.
    preloaded, labels = np.concatenate(preloaded), np.concatenate(labels)
    originals = original_generators(jpegs, preloaded, labels)
    del preloaded
    for (memory, aug), it in originals.items():
        meters[("original",) + (memory, aug)] = Meter(
            f"ImageDataGenerator {'flow_from_dataframe (low memory)' if memory == 'low' else 'flow (high memory)'}"
            f"{' + augmentation' if aug else ''}")
        next(it)   # warm-up (and, for flow_from_dataframe, the files into the page cache)
    for it in (originals[("low", False)], originals[("low", True)]):
        for _ in range(args.images // BATCH):
            next(it)

    epoch = 1
    for r in range(args.rounds):
        for memory, aug in reader_cases:
            epoch = time_reader(meters[("reader", memory, aug)], records, memory, aug, args.seconds, epoch)
        for (memory, aug), it in originals.items():
            time_iterator(meters[("original", memory, aug)], it, args.seconds)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    load_after = os.getloadavg()

    base_low = meters[("original", "low", False)].best
    base_low_aug = meters[("original", "low", True)].best
    base_high = meters[("original", "high", False)].best
    base_high_aug = meters[("original", "high", True)].best
    low_name = "ImageDataGenerator flow_from_dataframe"
    plan = [  # (meter key, baseline name, baseline rate, target)
        (("reader", "high", False), low_name, base_low, HIGH_TARGET),
        (("reader", "low", False), low_name, base_low, LOW_TARGET),
        (("reader", "high", True), low_name + " + augmentation", base_low_aug, AUGMENT_TARGET),
        (("reader", "low", True), low_name + " + augmentation", base_low_aug, AUGMENT_TARGET),
        (("reader", "high", False), "ImageDataGenerator flow", base_high, None),
        (("reader", "high", True), "ImageDataGenerator flow + augmentation", base_high_aug, None),
    ]
    rows = []
    for key, base_name, base_rate, target in plan:
        m = meters[key]
        rows.append({"what": m.name, "images_per_s": round(m.best, 1), "baseline": base_name,
                     "ratio": round(m.best / base_rate, 1), "target": f">= {target:.0f}x" if target else None,
                     "met": None if target is None else m.best / base_rate >= target})
    for key in [k for k in meters if k[0] == "original"]:
        m = meters[key]
        rows.append({"what": m.name, "images_per_s": round(m.best, 1)})

    print()
    print(f"{'what':58s} {'images/s':>10s} {'ratio':>8s} {'target':>8s}  baseline")
    for row in rows:
        ratio = f"{row['ratio']:.1f}x" if "ratio" in row else ""
        print(f"{row['what']:58s} {row['images_per_s']:10,.0f} {ratio:>8s} {row.get('target') or '':>8s}  "
              f"{row.get('baseline', '')}{'' if row.get('met') is not False else '   (BELOW TARGET)'}")
    notes = [
        f"{args.images} generated {JPEG_SIZE}x{JPEG_SIZE} JPEGs -> {IMAGE_SIZE}x{IMAGE_SIZE} records; batch {BATCH}; "
        f"best of {args.rounds} alternating rounds of ~{args.seconds:.0f} s each",
        "rounds per contestant (images/s): "
        + "; ".join(f"{m.name}: {', '.join(f'{x:,.0f}' for x in m.rates)}" for m in meters.values()),
        f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} cores",
        f"TensorFlow {tf.__version__}; augmentation ranges: rotation ±{DEFAULT_PARAMS.rotation_degrees:g}°, "
        f"shift ±{DEFAULT_PARAMS.shift_fraction:.0%}, zoom ±{DEFAULT_PARAMS.zoom_fraction:.0%}, brightness "
        f"×{DEFAULT_PARAMS.brightness_range}, horizontal flip (the original also flips vertically)",
    ]
    all_met = all(row["met"] for row in rows if row.get("met") is not None)
    notes.append("all targets met" if all_met else "SOME TARGETS NOT MET")
    print()
    print(json.dumps({"bench": "bench_reader", "rows": rows, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
