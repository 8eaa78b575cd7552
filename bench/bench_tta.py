"""bench_tta: test-time augmentation (`--tta flip`, model/tta.py) against none, side by side in one run:
what it costs in images/s and what it gives in accuracy, on generated data.

- Speed, in rounds that alternate none and flip (the machine is shared: the median of the rounds
  counts), through the code the commands run:
  - evaluate, slim network: `predict_split` over a records split (reading included), images/s;
  - forward pass only, slim network: `classify`'s compiled forward (`make_forward(model, tta)`) on
    in-memory uint8 batches;
  - forward pass only, full-size VGG-Face to relu4_2 (FULL_WIDTHS, random weights): compute-bound
    on a CPU, where flip should cost about 2x.
- Accuracy: a slim classifier trained by `train` (defaults: augmentation, which includes the
  horizontal flip, on) on generated faces told apart by hair only (the subtlest generated cue,
  pipeline/synthetic/faces.py), evaluated on its held-out split with none and with flip.

Generated data are not faces: the accuracy rows say whether the machinery changes predictions, not
what flip gives on Adience (Levi & Hassner: +0.9 points with their over-sampling).

    .venv/bin/python bench/bench_tta.py [--rounds 3] [--images 512] [--full-images 64]
        [--train 400] [--valid 400] [--epochs 2] [--skip-full]

The last line printed is one JSON object for `make bench` (bench/run_all.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

MODES = ("none", "flip")


def trained(n_train: int, n_valid: int, epochs: int) -> tuple[str, str]:
    """(classifier .keras, records dir): generated hair-cue faces, preprocessed and trained once (bench/work)."""
    from model.network.t7_writer import write_vggface_t7
    from model.network.vggface import SLIM_WIDTHS
    from model.training import TrainConfig, train
    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    work = os.path.join(HERE, "work", f"tta-hair-{n_train}-{n_valid}-e{epochs}")
    model_path, records = os.path.join(work, "model.keras"), os.path.join(work, "records")
    if not os.path.exists(os.path.join(work, "DONE")):
        shutil.rmtree(work, ignore_errors=True)
        started = time.monotonic()
        print(f"generating, preprocessing and training in {work} (once) ...", flush=True)
        make_adience_tree(os.path.join(work, "root"), n_train=n_train, n_valid=n_valid, image_size=256, seed=0,
                          bad_files=False, variety=False, cue="hair")
        run_preprocess(os.path.join(work, "root"), records, image_size=224,
                       beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])
        weights = os.path.join(work, "slim.t7")
        write_vggface_t7(weights, SLIM_WIDTHS, seed=0)
        train(TrainConfig(weights=weights, records=records, output=model_path, epochs=epochs, batch_size=16,
                          strategy="default", precision="float32"))
        open(os.path.join(work, "DONE"), "w").close()
        print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    return model_path, records


def rounds(contestants: dict, n_rounds: int) -> dict[str, float]:
    """Median images/s of each contestant (a function returning images/s), rounds alternating."""
    rates: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(n_rounds):
        for name, run in contestants.items():
            rates[name].append(run())
    return {name: statistics.median(r) for name, r in rates.items()}


def forward_rate(model, images: np.ndarray, tta: str, batch_size: int):
    """A contestant: images/s of make_forward(model, tta) over `images` in batches (traced first)."""
    from model.inference.classify import make_forward

    forward = make_forward(model, tta)
    forward(images[:batch_size])

    def run() -> float:
        started = time.perf_counter()
        for i in range(0, len(images), batch_size):
            forward(images[i:i + batch_size])
        return len(images) / (time.perf_counter() - started)
    return run


def evaluate_rate(model, records: str, tta: str, batch_size: int):
    """A contestant: images/s of predict_split (evaluate's scoring) over the valid split."""
    from model.evaluation.evaluate import predict_split

    predict_split(model, records, "valid", batch_size=batch_size, tta=tta)       # trace, warm the cache

    def run() -> float:
        started = time.perf_counter()
        n = predict_split(model, records, "valid", batch_size=batch_size, tta=tta).n
        return n / (time.perf_counter() - started)
    return run


def speed_rows(label: str, rates: dict[str, float], what: str) -> list[dict]:
    none, flip = rates["none"], rates["flip"]
    print(f"[{label}] {what}: none {none:,.1f} images/s, flip {flip:,.1f} images/s -> flip/none {flip / none:.2f}x",
          flush=True)
    return [{"what": f"{label}: {what}, --tta none", "images_per_s": round(none, 2)},
            {"what": f"{label}: {what}, --tta flip", "images_per_s": round(flip, 2), "baseline": round(none, 2),
             "ratio": round(flip / none, 2)}]


def accuracy_notes(model_path: str, records: str) -> list[str]:
    """Accuracy, loss and AUC of the held-out split with each mode, and how many predictions flip changed."""
    from model.evaluation.evaluate import evaluate

    results = {tta: evaluate(model_path, records, split="valid", strategy="default", tta=tta) for tta in MODES}
    notes = []
    for tta, ev in results.items():
        m = ev.metrics["valid"]
        line = (f"accuracy, --tta {tta}: {m['accuracy']:.4f} on {m['n']} held-out generated faces "
                f"(loss {m['loss']:.4f}, AUC {m['auc']:.4f})")
        print(line, flush=True)
        notes.append(line)
    before, after = (results[t].predictions["valid"] for t in MODES)
    assert before.paths == after.paths
    changed = int(np.sum(before.predicted != after.predicted))
    fixed = int(np.sum((before.predicted != before.labels) & (after.predicted == after.labels)))
    line = (f"flip changed {changed} of {before.n} predictions ({fixed} wrong -> right, {changed - fixed} right -> "
            f"wrong); mean |score change| {np.mean(np.abs(after.scores - before.scores)):.4f}")
    print(line, flush=True)
    return notes + [line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison (median)")
    parser.add_argument("--images", type=int, default=512, help="in-memory images per round, slim forward")
    parser.add_argument("--full-images", type=int, default=64, help="in-memory images per round, full forward")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train", type=int, default=400, help="generated training faces")
    parser.add_argument("--valid", type=int, default=400, help="generated held-out faces")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-full", action="store_true", help="only the slim network")
    args = parser.parse_args()

    from model.network.head import build_classifier, load_classifier
    from model.network.vggface import FULL_WIDTHS, build_vggface

    model_path, records = trained(args.train, args.valid, args.epochs)
    load_before = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPU cores, load average {load_before:.2f}", flush=True)
    notes = accuracy_notes(model_path, records)
    model = load_classifier(model_path)
    images = np.random.default_rng(0).integers(0, 256, (args.images, 224, 224, 3), dtype=np.uint8)
    rows = speed_rows("slim", rounds({t: evaluate_rate(model, records, t, args.batch_size) for t in MODES},
                                     args.rounds), f"evaluate's scoring of {args.valid} records")
    rows += speed_rows("slim", rounds({t: forward_rate(model, images, t, args.batch_size) for t in MODES},
                                      args.rounds), f"forward pass, {args.images} in-memory images")
    if not args.skip_full:
        full = build_classifier(build_vggface(FULL_WIDTHS, 224))
        rows += speed_rows("full", rounds({t: forward_rate(full, images[:args.full_images], t, 32) for t in MODES},
                                          args.rounds), f"forward pass, {args.full_images} in-memory images")
    notes += [f"batch {args.batch_size} (full: 32) faces per call; flip scores 2x that many images in one call. "
              f"Median of {args.rounds} rounds alternating none and flip.",
              f"load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
              f"shared with other work."]
    print(json.dumps({"bench": "tta", "rows": rows, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
