"""Issue #10's table through the real commands: does the default head learn at any feature scale?

For each backbone (generated VGG_FACE.t7: slim or full width, at 0.01x, 1x and 10x the realistic
feature scale) and each head, on a generated set whose classes differ by shape only (200 training /
60 validation faces, including the generator's bad files and format variety):
`preprocess` once, then `train -e EPOCHS` with every other option at its default, then `evaluate`;
beside it the reference: scikit-learn's logistic regression on the standardized frozen relu4_2
features. Prints a markdown table. Not part of `make bench` (full width takes ~7 min a run on 2 CPU
cores); slim only by default:

    .venv/bin/python bench/feature_scale_table.py [--widths slim full] [--scales 0.01 1 10]
        [--heads standardized original] [--head-inits probe random] [--epochs 3]
        [--cue shape] [--seed 1] [--n-train 200] [--n-valid 60] [--work bench/work/feature_scale]

Issue #18's table: `--heads standardized --head-inits probe random --cue hair --seed 11` (a cue and
seed no test uses); --n-train 2000 for the larger set (63 steps an epoch). Each run's cell is
"epoch-0 accuracy -> final accuracy" (the start's validation, then after the epochs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CLI = [sys.executable, os.path.join(ROOT, "cli.py")]


def run(args: list[str]) -> None:
    proc = subprocess.run(CLI + args, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: cli.py {' '.join(args)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=["slim"], choices=["slim", "full"])
    parser.add_argument("--scales", nargs="+", type=float, default=[0.01, 1.0, 10.0])
    parser.add_argument("--heads", nargs="+", default=["standardized", "original"])
    parser.add_argument("--head-inits", nargs="+", default=["probe"], choices=["probe", "random"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cue", default="shape")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-valid", type=int, default=60)
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work", "feature_scale"))
    args = parser.parse_args()

    from model.evaluation.linear_probe import cut_model, linear_probe
    from model.network.t7_writer import write_vggface_t7
    from model.network.vggface import FULL_WIDTHS, SLIM_WIDTHS
    from pipeline.synthetic.tree import make_adience_tree

    os.makedirs(args.work, exist_ok=True)
    tag = f"{args.cue}{args.seed}_{args.n_train}"
    data, records = os.path.join(args.work, f"{tag}-faces"), os.path.join(args.work, f"records_{tag}")
    if not os.path.exists(os.path.join(records, "manifest.json")):
        make_adience_tree(data, n_train=args.n_train, n_valid=args.n_valid, seed=args.seed, cue=args.cue)
        run(["preprocess", "-i", data, "-o", records, "--overwrite"])
    rows = []
    # The original head always starts random: one column for it.
    columns = [(h, i) for h in args.heads for i in (args.head_inits if h == "standardized" else ["random"])]
    for width in args.widths:
        for scale in args.scales:
            weights = os.path.join(args.work, f"{width}_x{scale:g}.t7")
            if not os.path.exists(weights):
                write_vggface_t7(weights, FULL_WIDTHS if width == "full" else SLIM_WIDTHS, seed=0, scale=scale)
            probe = linear_probe(cut_model(weights), records)
            cells = []
            for head, init in columns:
                # A fresh folder a run: train would resume from a previous run's checkpoint.
                run_dir = os.path.join(args.work, "runs", f"{tag}_{width}_x{scale:g}_{head}_{init}")
                shutil.rmtree(run_dir, ignore_errors=True)
                os.makedirs(run_dir)
                model, report_dir = os.path.join(run_dir, "model.keras"), os.path.join(run_dir, "report")
                run(["train", "-w", weights, "-i", records, "-o", model, "-e", str(args.epochs), "--head", head,
                     "--head-init", init])
                run(["evaluate", "-m", model, "-i", records, "--report-dir", report_dir])
                with open(os.path.join(run_dir, "model_history.csv"), encoding="utf-8") as f:
                    start = float(next(csv.DictReader(f))["val_accuracy"])
                with open(os.path.join(report_dir, "report.json"), encoding="utf-8") as f:
                    cells.append(f"{start:.1%} -> {json.load(f)['valid']['accuracy']:.1%}")
            rows.append(f"| {width}, {scale:g}x (RMS {probe.train_feature_rms:.3g}) | " + " | ".join(cells) + f" | {probe.accuracy:.1%} |")
            print(rows[-1], flush=True)
    print(f"\n{args.cue} cue, seed {args.seed}, {args.n_train} training / {args.n_valid} validation faces")
    print("| backbone (relu4_2) | " + " | ".join(f"--head {h} --head-init {i}, -e {args.epochs}" for h, i in columns)
          + " | logistic regression |")
    print("|---" * (len(columns) + 2) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
