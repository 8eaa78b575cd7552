"""bench_train_loop: the project's training loop against an in-graph loop at small per-step compute,
and device-side against host-side augmentation.

Small per-step compute stands for a GPU: the slim generated VGG-Face on 32x32 records, batch 32, high
memory, is about 4 ms of compute per step on this CPU — the order of the frozen VGG-Face's step on a
GPU — so any host work per step shows. Contestants, measured in rounds that alternate, in one process:

- the project's loop: `model.training.train` (the `train` command's code, --steps-per-call auto),
  images/s of epoch 2 from its history (epoch 1 pays for tracing and the cache);
- the in-graph loop: the same classifier and optimizer, the same dataset, 20 steps inside one
  tf.function (a tf.range loop over the iterator, no host round trip between steps) — the fastest a
  Python-driven loop can be;
- the project's loop with augmentation in the tf.data pipeline (host) and inside the step (device);
- the project's loop with the step compiled by XLA (--jit on; `auto` leaves it off on a CPU).

Target: the project's loop at >= 0.9 of the in-graph loop (median over the rounds).
Usage: .venv/bin/python bench/bench_train_loop.py [--rounds 5] [--images 2048]
Last line: one JSON object (see bench/run_all.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

SIZE, BATCH, IN_GRAPH_STEPS = 32, 32, 20
TARGET = 0.9


def records(images: int) -> str:
    """Generated records at SIZE (made once, kept in bench/work)."""
    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    out = os.path.join(HERE, "work", f"train-loop-{SIZE}-{images}")
    if not os.path.exists(os.path.join(out, "records", "manifest.json")):
        shutil.rmtree(out, ignore_errors=True)
        print(f"generating {images} faces and their {SIZE}x{SIZE} records in {out} (once) ...", flush=True)
        make_adience_tree(os.path.join(out, "root"), n_train=images, n_valid=BATCH * 2, image_size=64, seed=0,
                          bad_files=False, variety=False)
        run_preprocess(os.path.join(out, "root"), os.path.join(out, "records"), image_size=SIZE,
                       beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    return os.path.join(out, "records")


def project_loop(weights: str, records_dir: str, work: str, **settings) -> float:
    """images/s of epoch 2 of the project's training loop."""
    from model.training import TrainConfig, train

    output = os.path.join(tempfile.mkdtemp(dir=work), "m.keras")
    result = train(TrainConfig(weights=weights, records=records_dir, output=output, epochs=2, batch_size=BATCH,
                               memory="high", strategy="default", precision="float32",
                               checkpoint_every_steps=10 ** 6, **settings))
    return float(result.history[1]["images_per_s"])


def in_graph_loop(weights: str, records_dir: str, rounds: int) -> list[float]:
    """images/s of IN_GRAPH_STEPS steps per tf.function call, same model and data, `rounds` times."""
    import keras
    import tensorflow as tf

    from model.network.backbone import load_backbone
    from model.network.head import build_classifier
    from pipeline.reader import make_dataset

    model = build_classifier(load_backbone(weights, image_size=SIZE))
    optimizer = keras.optimizers.Adam(1e-4)
    trainable = model.trainable_variables

    @tf.function
    def steps(iterator):
        for _ in tf.range(IN_GRAPH_STEPS):
            images, labels = next(iterator)
            with tf.GradientTape() as tape:
                probs = model(images, training=True)
                loss = tf.reduce_mean(keras.losses.binary_crossentropy(labels[:, None], probs))
            optimizer.apply(tape.gradient(loss, trainable), trainable)
        return loss

    dataset = make_dataset(records_dir, "train", BATCH, memory="high", shuffle=True, drop_remainder=True).repeat()
    iterator = iter(dataset)
    steps(iterator).numpy()      # trace and fill the cache
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        steps(iterator).numpy()
        rates.append(IN_GRAPH_STEPS * BATCH / (time.perf_counter() - started))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=8192,
                    help="training images (8192: 256 steps an epoch, about a second of compute, so that the "
                         "epoch's set-up — a new iterator, the shuffle — weighs about what it would on real data)")
    args = ap.parse_args()
    from model.network.t7_writer import write_vggface_t7

    records_dir = records(args.images)
    work = tempfile.mkdtemp(prefix="bench-train-loop-")
    weights = os.path.join(work, "slim.t7")
    write_vggface_t7(weights)
    samples: dict[str, list[float]] = {"project": [], "in_graph": [], "host_aug": [], "device_aug": [], "jit": []}
    loads = []
    try:
        for r in range(args.rounds):
            loads.append(os.getloadavg()[0])
            samples["project"].append(project_loop(weights, records_dir, work, augment=False))
            samples["in_graph"].append(statistics.median(in_graph_loop(weights, records_dir, 5)))
            samples["host_aug"].append(project_loop(weights, records_dir, work, augment=True, augment_on="host"))
            samples["device_aug"].append(project_loop(weights, records_dir, work, augment=True, augment_on="device"))
            samples["jit"].append(project_loop(weights, records_dir, work, augment=False, jit="on"))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in samples.items())
                  + " images/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in samples.items()}
    ratio = median["project"] / median["in_graph"]
    rows = [
        {"what": f"training loop, slim VGG-Face, {SIZE}x{SIZE} records, batch {BATCH}, high memory (project)",
         "images_per_s": round(median["project"]), "baseline": f"in-graph loop: {median['in_graph']:,.0f}",
         "ratio": round(ratio, 2), "target": f">= {TARGET}"},
        {"what": "the same with augmentation inside the step (--augment-on device)",
         "images_per_s": round(median["device_aug"]), "baseline": f"augmentation in tf.data: {median['host_aug']:,.0f}",
         "ratio": round(median["device_aug"] / median["host_aug"], 2)},
        {"what": "the same without augmentation, step compiled by XLA (--jit on)",
         "images_per_s": round(median["jit"]), "baseline": f"--jit off: {median['project']:,.0f}",
         "ratio": round(median["jit"] / median["project"], 2)},
    ]
    for row in rows:
        print(f"{row['what']:95s} {row['images_per_s']:8,} images/s  {row['ratio']:.2f}x {row['baseline']}")
    print(f"project loop / in-graph loop = {ratio:.2f} (target {TARGET}): {'met' if ratio >= TARGET else 'NOT met'}")
    notes = [
        f"medians over {args.rounds} alternating rounds; rounds (images/s): "
        + "; ".join(f"{k}: {', '.join(f'{x:,.0f}' for x in v)}" for k, v in samples.items()),
        f"load average (1 min) at each round: {', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} cores",
        "project: model.training.train, --steps-per-call auto, images/s of epoch 2 from its history; in-graph: "
        f"{IN_GRAPH_STEPS} steps in one tf.function over the same cached dataset, same model and optimizer",
        "augmentation: on this CPU-only machine host and device are the same two cores, so the device-side "
        "figure shows what the step pays for the warp, not the GPU's gain (the host then only moves uint8 bytes)",
    ]
    print(json.dumps({"bench": "bench_train_loop", "rows": rows, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
