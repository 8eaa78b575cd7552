"""bench_train_step: images/s of the training step, full-size VGG-Face + the default head, float32 vs mixed_bfloat16.

The network is the full-size VGG-Face structure (model.network.vggface.build_vggface(FULL_WIDTHS), random
weights: the real VGG_FACE.t7 is not needed to time it) with the default head
(model.network.head.build_classifier defaults: cut after relu4_2, frozen through it, standardized ->
Dropout 0.5 -> Flatten -> Dense 32 relu -> Dense 1 sigmoid), batch 32 at 224x224, on the CPU.

The step timed is the REAL one of model/training/steps.py (`make_steps(...).train`: a tf.function
looping over strategy.run of forward + binary cross-entropy averaged by tf.nn.compute_average_loss +
Adam apply), one step per call, fed one fixed in-memory uint8 batch repeated, so only the step is measured (the reader has its own
benchmarks). Each precision runs in its own child process of this script (`--child PRECISION`),
because the Keras dtype policy must be set before the model is built and must not leak between
the two. Both children build and warm up once; then the parent asks them in turn for rounds of
timed steps (the idle one waits on its stdin), so load from other processes hits both alike, and
the best round of each counts.

Usage: .venv/bin/python bench/bench_train_step.py [--steps 3] [--rounds 3] [--warmup 2]
Last line: one JSON object (see bench/run_all.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

BATCH = 32
IMAGE_SIZE = 224
PRECISIONS = ("float32", "mixed_bfloat16")
HEAD = "default head, batch 32"
# Public figure quoted in /work/shared/NOTES.md §4 (Lambda's tf_cnn_benchmarks), NOT measured here.
A100_VGG16_FP16 = 1190


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_flags() -> list[str]:
    """The CPU's bfloat16-relevant instruction sets (they decide whether bf16 pays off on a CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if x in flags]
    except OSError:
        pass
    return []


# ---------------------------------------------------------------------------------------- child
def child(precision: str, warmup: int) -> None:
    """Build the model under `precision`, trace and warm up the real training step, say "ready", then
    time `run N` requests (N steps each) read from stdin until `quit`; one JSON line per answer."""
    import keras
    import numpy as np
    import tensorflow as tf

    from model.network.head import build_classifier
    from model.defaults import DEFAULT_LEARNING_RATE
    from model.runtime import apply_precision, select_strategy
    from model.training.steps import make_steps
    from model.network.vggface import FULL_WIDTHS, build_vggface

    # As train() does: strategy first, then the policy, then the model.
    strategy = select_strategy("auto")
    apply_precision(precision)
    started = time.perf_counter()
    with strategy.scope():
        backbone = build_vggface(FULL_WIDTHS, image_size=IMAGE_SIZE)
        model = build_classifier(backbone)   # every argument at its default
        optimizer = keras.optimizers.Adam(learning_rate=DEFAULT_LEARNING_RATE)
        optimizer.build(model.trainable_variables)
    build_seconds = time.perf_counter() - started
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    frozen = int(sum(np.prod(v.shape) for v in model.non_trainable_weights))
    print(f"[{precision}] built in {build_seconds:.1f} s: {trainable:,} trainable and {frozen:,} frozen "
          f"parameters; conv4_2 computes in {model.get_layer('conv4_2').compute_dtype}, "
          f"output {model.output.dtype}", flush=True)

    # The real step of model/training/steps.py; float32 and bfloat16 need no loss scaling (fp16 only).
    step_functions = make_steps(strategy, model, optimizer, global_batch=BATCH * int(strategy.num_replicas_in_sync),
                       loss_scaling=False, image_size=IMAGE_SIZE, jit=False)
    one = tf.constant(1, tf.int64)

    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    labels = tf.constant((np.arange(BATCH) % 2).astype(np.float32))
    # The same fixed batch forever, through the same distribution call training uses.
    dataset = strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors((images, labels)).repeat())
    iterator = iter(dataset)

    def timed_steps(steps: int) -> tuple[list[float], list[float]]:
        times, losses = [], []
        for _ in range(steps):
            t = time.perf_counter()
            result = step_functions.train(iterator, one).numpy()   # .numpy() waits for the step to finish
            times.append(time.perf_counter() - t)
            if result[2] != BATCH:
                raise SystemExit(f"the step saw {result[2]} examples, expected {BATCH}")
            losses.append(float(result[0] / result[2]))
        if not all(np.isfinite(losses)):
            raise SystemExit(f"non-finite loss under {precision}: {losses}")
        return times, losses

    warm, _ = timed_steps(warmup)   # the first call traces the tf.function; later ones settle oneDNN
    print(f"[{precision}] warm-up steps (first one traces): " + ", ".join(f"{s:.2f} s" for s in warm), flush=True)
    print(json.dumps({"precision": precision, "warmup_seconds": warm, "build_seconds": build_seconds,
                      "trainable": trainable, "frozen": frozen, "tf": tf.__version__, "keras": keras.__version__,
                      "replicas": int(strategy.num_replicas_in_sync)}), flush=True)
    while True:
        command = sys.stdin.readline().split()
        if not command or command[0] != "run":
            return
        times, losses = timed_steps(int(command[1]))
        print(json.dumps({"step_seconds": times, "losses": losses}), flush=True)


# --------------------------------------------------------------------------------------- parent
class Child:
    """One precision's process: built and warmed up once, then asked for timed rounds in turn."""

    def __init__(self, precision: str, warmup: int):
        self.precision = precision
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", precision, "--warmup", str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    def reply(self) -> dict:
        """The child's next JSON line, echoing its human-readable lines on the way."""
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
            print(line.rstrip(), flush=True)
        self.proc.wait()
        self.stderr.seek(0)
        sys.stderr.write(self.stderr.read()[-4000:])
        raise SystemExit(f"the {self.precision} child failed (exit {self.proc.returncode})")

    def run(self, steps: int) -> dict:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and precision")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best one counts")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one traces)")
    ap.add_argument("--child", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if min(args.steps, args.rounds, args.warmup) < 1:
        ap.error("--steps, --rounds and --warmup must be at least 1")
    if args.child:
        child(args.child, args.warmup)
        return 0

    print(f"{cpu_model()}, {os.cpu_count()} cores; per precision (each in its own process): {args.warmup} warm-up "
          f"steps, then {args.rounds} alternating rounds of {args.steps} timed steps of batch {BATCH}", flush=True)
    children = {p: Child(p, args.warmup) for p in PRECISIONS}   # built and warmed up concurrently
    rounds: dict[str, list[list[float]]] = {p: [] for p in PRECISIONS}
    loads = []
    try:
        info = {p: c.reply() for p, c in children.items()}
        for r in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for p, c in children.items():   # one at a time: the other child waits idle on its stdin
                times = c.run(args.steps)["step_seconds"]
                rounds[p].append(times)
                print(f"round {r + 1}/{args.rounds} {p:15s}: " + ", ".join(f"{s:.2f}" for s in times)
                      + f" s per step, {len(times) * BATCH / sum(times):.1f} images/s", flush=True)
        loads.append(os.getloadavg()[0])
    finally:
        for c in children.values():
            c.close()

    def rates(p: str) -> list[float]:
        return [len(times) * BATCH / sum(times) for times in rounds[p]]

    best = {p: max(rates(p)) for p in PRECISIONS}
    rows = [
        {"what": f"train step float32 (full VGG-Face, {HEAD})", "images_per_s": round(best["float32"], 2)},
        {"what": f"train step mixed_bfloat16 (full VGG-Face, {HEAD})",
         "images_per_s": round(best["mixed_bfloat16"], 2), "baseline": "float32 step",
         "ratio": round(best["mixed_bfloat16"] / best["float32"], 2)},
    ]
    print()
    for row in rows:
        ratio = f"  {row['ratio']:.2f}x {row['baseline']}" if "ratio" in row else ""
        print(f"{row['what']:75s} {row['images_per_s']:8.2f} images/s{ratio}")
    flags = cpu_flags()
    f32 = info["float32"]
    notes = [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores"
        + (f" ({', '.join(flags)})" if flags else "") + f"; TensorFlow {f32['tf']}, Keras {f32['keras']}; "
        f"default strategy ({f32['replicas']} replica), no XLA; bfloat16's gain depends on the CPU's bf16 "
        "instructions (listed): without them it may not pay off",
        "the real training step of model/training/steps.py (make_steps: tf.function, strategy.run of forward + "
        "BCE via tf.nn.compute_average_loss + Adam apply; one step per call), fed one fixed in-memory uint8 batch of 32 at "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}; random weights (full-size VGG-Face structure, no real weights needed)",
        f"{f32['trainable']:,} trainable parameters (the head) and {f32['frozen']:,} frozen (conv1_1..conv4_2): "
        "the frozen backbone runs forward only (no weight gradients), so most of the step is 9 forward "
        "convolutions; backpropagation stops at the head's input",
        f"each precision in its own process, built and warmed up ({args.warmup} steps, the first traces) once, then "
        f"{args.rounds} alternating rounds of {args.steps} timed steps; the best round counts. Rounds (images/s): "
        + "; ".join(f"{p}: {', '.join(f'{x:.1f}' for x in rates(p))}" for p in PRECISIONS)
        + "; load average (1 min) during the rounds " + ", ".join(f"{x:.1f}" for x in loads)
        + f" on {os.cpu_count()} cores",
        f"for scale (a PUBLIC figure, not measured here): VGG-16 training runs at about {A100_VGG16_FP16:,} images/s "
        "on one A100 in fp16 (Lambda's tf_cnn_benchmarks); with a frozen backbone a GPU does less work per image",
    ]
    print()
    print(json.dumps({"bench": "bench_train_step", "rows": rows, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
