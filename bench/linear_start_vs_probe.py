"""Issue #18 on many face sets: the linear start and `train -e 3` against scikit-learn's probe.

The feature_scale_table scores one set on 60 validation faces, where one face is 1.7 points. This
scores several generated sets (cues and seeds no test uses) on a larger validation split, so that a
systematic gap between the linear start and the reference probe can be told from a face or two.
For each set, side by side on the same frozen relu4_2 features:
- scikit-learn's probe: StandardScaler + LogisticRegression (C=1), model/evaluation/linear_probe.py;
- `train -e 3` with every default: its epoch 0 (the linear start, before any step) and the end;
- the linear start refitted here without the head's variance floor (the regression on plain
  StandardScaler features, as scikit-learn sees them): the floor is the one difference between the
  two feature spaces, so this column says how much of any gap it makes.

    .venv/bin/python bench/linear_start_vs_probe.py [--cues hair shape colour] [--seeds 31 32]
        [--n-train 200] [--n-valid 300] [--width slim] [--scale 1] [--work bench/work/start_vs_probe]

Not part of `make bench` (about 2 minutes a set, slim, on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.feature_scale_table import run  # noqa: E402  (the same cli.py runner)


def unfloored_start_accuracy(x_train, y_train, x_valid, y_valid) -> float:
    """The linear start's fit (same CV-chosen regularization rule) on plain standardized features."""
    from model.network.linear_start import fit_linear_start

    mean, variance = x_train.mean(0), x_train.var(0)
    variance = np.where(variance > 0, variance, 1.0)     # StandardScaler's rule for constant features
    start = fit_linear_start(x_train, y_train, mean, variance)
    logits = ((x_valid - mean) / np.sqrt(variance + 1e-12)) @ start.weights + start.bias
    return float(np.mean((logits > 0) == (y_valid > 0.5)))


def train_history(weights: str, records: str, run_dir: str, epochs: int) -> list[float]:
    """`train -e EPOCHS` with every other option at its default: validation accuracy of epochs 0..E."""
    shutil.rmtree(run_dir, ignore_errors=True)    # a fresh folder: train would resume a previous run
    os.makedirs(run_dir)
    run(["train", "-w", weights, "-i", records, "-o", os.path.join(run_dir, "model.keras"), "-e", str(epochs)])
    with open(os.path.join(run_dir, "model_history.csv"), encoding="utf-8") as f:
        return [float(row["val_accuracy"]) for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cues", nargs="+", default=["hair", "shape"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[31, 32, 33])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-valid", type=int, default=300)
    parser.add_argument("--width", default="slim", choices=["slim", "full"])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work", "start_vs_probe"))
    args = parser.parse_args()

    from model.evaluation.linear_probe import cut_model, frozen_features, probe_accuracy
    from model.network.t7_writer import write_vggface_t7
    from model.network.vggface import FULL_WIDTHS, SLIM_WIDTHS
    from pipeline.synthetic.tree import make_adience_tree

    os.makedirs(args.work, exist_ok=True)
    weights = os.path.join(args.work, f"{args.width}_x{args.scale:g}.t7")
    if not os.path.exists(weights):
        write_vggface_t7(weights, FULL_WIDTHS if args.width == "full" else SLIM_WIDTHS, seed=0, scale=args.scale)
    cut = cut_model(weights)
    rows, gaps = [], {"start": [], "trained": [], "unfloored": []}
    for cue in args.cues:
        for seed in args.seeds:
            tag = f"{cue}{seed}_{args.n_train}_{args.n_valid}"
            data, records = os.path.join(args.work, f"{tag}-faces"), os.path.join(args.work, f"records_{tag}")
            if not os.path.exists(os.path.join(records, "manifest.json")):
                make_adience_tree(data, n_train=args.n_train, n_valid=args.n_valid, seed=seed, cue=cue)
                run(["preprocess", "-i", data, "-o", records, "--overwrite"])
            x_train, y_train = frozen_features(cut, records, "train")
            x_valid, y_valid = frozen_features(cut, records, "valid")
            probe = probe_accuracy(x_train, y_train, x_valid, y_valid)
            unfloored = unfloored_start_accuracy(x_train, y_train, x_valid, y_valid)
            history = train_history(weights, records, os.path.join(args.work, "runs", f"{tag}_{args.width}"),
                                    args.epochs)
            for key, value in (("start", history[0]), ("trained", history[-1]), ("unfloored", unfloored)):
                gaps[key].append(100 * (value - probe))
            rows.append(f"| {cue}, seed {seed} | {probe:.1%} | {history[0]:.1%} | {history[-1]:.1%} | {unfloored:.1%} |")
            print(rows[-1], flush=True)
    print(f"\n{args.width} width, {args.scale:g}x; {args.n_train} training / {args.n_valid} validation faces a set; "
          f"train -e {args.epochs}, every other option at its default")
    print(f"| set | scikit-learn probe | linear start (epoch 0) | after -e {args.epochs} | start without the floor |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("| mean gap to the probe (points) | | " + " | ".join(
        f"{np.mean(gaps[k]):+.1f} (worst {min(gaps[k]):+.1f})" for k in ("start", "trained", "unfloored")) + " |")


if __name__ == "__main__":
    main()
