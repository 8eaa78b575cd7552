"""What a training run is: TrainConfig, its checks, where its outputs go, and the fingerprint a
checkpoint must match to be continued.

The fingerprint is derived from the config's own fields — every field whose metadata says
`resume=True` — plus what follows from the data and the machine (the run adds those), so a new
setting that changes the training is refused on resume by marking it, not by editing a list.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

from model.defaults import (DEFAULT_CHECKPOINT_EVERY, DEFAULT_CUT_LAYER, DEFAULT_DENSE_UNITS, DEFAULT_DROPOUT,
                            DEFAULT_FREEZE_THROUGH, DEFAULT_HEAD, DEFAULT_HEAD_INIT, DEFAULT_LEARNING_RATE,
                            DEFAULT_STATS_IMAGES, HEAD_INIT_PROBE, HEAD_INITS, HEAD_STANDARDIZED, HEADS, JIT_CHOICES,
                            PLACEMENTS, PRECISIONS, STRATEGIES)
from model.errors import ModelError
from model.network.vggface import VGGWidths
from pipeline.augment import AugmentParams
from pipeline.folds import N_FOLDS
from pipeline.files import output_lock
from pipeline.outputs import DIR, FILE, check_outputs
from pipeline.schema import MEMORY_MODES


# The largest seed: the head's initializers take seed and seed + 1, and TensorFlow's and Keras'
# random ops want them within a 32-bit int.
MAX_SEED = 2 ** 31 - 2


def _resume(default, **kwargs):
    """A field that must be equal for a checkpoint to be continued: it changes the network, the
    optimizer's state layout or the order and content of the data."""
    if callable(default):
        return field(default_factory=default, metadata={"resume": True}, **kwargs)
    return field(default=default, metadata={"resume": True}, **kwargs)


@dataclass
class TrainConfig:
    """Everything `train` needs; the CLI fills it from its flags (same defaults)."""

    weights: str                          # VGG_FACE.t7 or a .keras written by `convert`
    records: str                          # records directory written by `preprocess`
    output: str                           # the trained model, *.keras
    epochs: int = 1                       # not in the fingerprint: training longer is allowed
    batch_size: int = _resume(32)         # -b1: training batch PER REPLICA (global = x replicas)
    valid_batch_size: int = 32            # -b2: validation batch per replica
    memory: str = "low"                   # -m: "low" streams from disk, "high" caches in RAM
    augment: bool = _resume(True)
    augment_params: AugmentParams = _resume(AugmentParams)
    augment_on: str = "auto"              # "host" (tf.data), "device" (in the step), auto: device on a GPU
    shuffle: bool = _resume(True)
    cut_layer: str = _resume(DEFAULT_CUT_LAYER)
    freeze_through: str | None = _resume(DEFAULT_FREEZE_THROUGH)
    head: str = _resume(DEFAULT_HEAD)     # "standardized" or "original" (model/network/head.py)
    head_init: str = _resume(DEFAULT_HEAD_INIT)   # "probe" or "random" (model/network/linear_start.py)
    dense_units: int = _resume(DEFAULT_DENSE_UNITS)
    dropout: float = _resume(DEFAULT_DROPOUT)
    learning_rate: float = _resume(DEFAULT_LEARNING_RATE)
    seed: int = _resume(0)
    val_fold: int | None = _resume(None)  # adience-folds records: validate on fold K, train on the others
    precision: str = "auto"
    strategy: str = "auto"
    jit: str = "auto"                     # XLA for the step: "on", "off", auto: on with a GPU
    steps_per_call: int | None = None     # training steps per tf.function call; None: automatic
    checkpoint_dir: str | None = None     # default: <output without .keras>.ckpt
    checkpoint_every_steps: int = DEFAULT_CHECKPOINT_EVERY
    log_dir: str | None = None            # default: <output without .keras>_logs
    stats_images: int = DEFAULT_STATS_IMAGES   # training images the head's feature statistics come from

    @property
    def stem(self) -> str:
        return self.output[: -len(".keras")] if self.output.endswith(".keras") else self.output

    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{self.stem}.ckpt"

    def resolved_log_dir(self) -> str:
        return self.log_dir or f"{self.stem}_logs"


@dataclass(frozen=True)
class RunData:
    """What the fingerprint takes from the records (model/training/datasets.py: run_data)."""

    image_size: int
    train_splits: tuple[str, ...]
    train_records: str            # pipeline.manifest.manifest_digest of the training splits


@dataclass(frozen=True)
class RunMachine:
    """What the fingerprint takes from the weights and the machine the run is on."""

    widths: VGGWidths
    loss_scaling: bool            # the precision policy is mixed_float16
    global_batch_size: int
    input_pipelines: int          # one per worker


def machine_of(config: TrainConfig, widths: VGGWidths, replicas: int, workers: int, policy: str) -> RunMachine:
    """The RunMachine of `config` under a strategy of `replicas` replicas on `workers` workers."""
    return RunMachine(widths=widths, loss_scaling=policy == "mixed_float16",
                      global_batch_size=config.batch_size * replicas, input_pipelines=workers)


def fingerprint(config: TrainConfig, data: RunData, machine: RunMachine) -> dict:
    """What a checkpoint must have been trained with to be resumed (or a fold to count as
    finished): the config's resume=True fields, then what follows from the records and the machine.
    Training longer (epochs) and where outputs go are not in it."""
    widths = machine.widths
    return {
        **_config_fingerprint(config),
        "weights_widths": [list(widths.conv), widths.fc6, widths.fc7, widths.fc8],
        "image_size": data.image_size,
        "loss_scaling": machine.loss_scaling,
        "global_batch_size": machine.global_batch_size,
        "input_pipelines": machine.input_pipelines,
        "train_splits": list(data.train_splits),
        # Which records: resuming on other data with the same image count is refused.
        "train_records": data.train_records,
    }


def _config_fingerprint(config: TrainConfig) -> dict:
    """The fingerprint entries that follow from the configuration alone: its resume=True fields."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("resume"):
            value = getattr(config, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    out["freeze_through"] = out["freeze_through"] or "none"
    if isinstance(out["augment_params"].get("brightness_range"), tuple):
        out["augment_params"]["brightness_range"] = list(out["augment_params"]["brightness_range"])
    return out


def output_paths(config: TrainConfig) -> dict[str, str]:
    """Where the outputs go: the model, its SavedModel export, the history CSV, logs, checkpoints."""
    return {
        "output": config.output,
        "savedmodel": f"{config.stem}_savedmodel",
        "history_csv": f"{config.stem}_history.csv",
        "log_dir": config.resolved_log_dir(),
        "checkpoint_dir": config.resolved_checkpoint_dir(),
    }


@contextlib.contextmanager
def locked_outputs(config: TrainConfig) -> Iterator[None]:
    """Hold the locks of a run's outputs (pipeline.files.output_lock) for the block: the model and
    the checkpoint directory, so that a second run writing either is refused in one line instead
    of interleaving its checkpoints with this one's. Only where outputs are written (the chief)."""
    paths = output_paths(config)
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_lock(paths["output"], f"`output` {paths['output']}", field="output"))
        stack.enter_context(output_lock(paths["checkpoint_dir"], f"`checkpoint_dir` {paths['checkpoint_dir']}",
                                        field="checkpoint_dir"))
        yield


def check_config(config: TrainConfig) -> None:
    """ModelError (one line) for a setting no run can use; checked before anything is built."""
    if not config.output.endswith(".keras"):
        raise ModelError(f"output {config.output} must end in .keras (the trained model is saved as a "
                         f"Keras 3 .keras file; the TF Serving export goes beside it)")
    if not os.path.exists(config.weights):
        raise ModelError(f"weights file {config.weights} does not exist; give VGG_FACE.t7 or the .keras "
                         f"file written by `python cli.py convert`")
    checks = [
        ("epochs", config.epochs >= 1, f"must be at least 1, got {config.epochs}"),
        ("batch_size", config.batch_size >= 1, f"must be at least 1, got {config.batch_size}"),
        ("valid_batch_size", config.valid_batch_size >= 1, f"must be at least 1, got {config.valid_batch_size}"),
        ("memory", config.memory in MEMORY_MODES, f"must be low or high, got {config.memory!r}"),
        ("learning_rate", math.isfinite(config.learning_rate) and config.learning_rate > 0,
         f"must be a positive finite number, got {config.learning_rate}"),
        ("dropout", math.isfinite(config.dropout) and 0.0 <= config.dropout < 1.0,
         f"must be a finite number in [0, 1), got {config.dropout}"),
        ("checkpoint_every_steps", config.checkpoint_every_steps >= 1,
         f"must be at least 1 step, got {config.checkpoint_every_steps}"),
        ("steps_per_call", config.steps_per_call is None or config.steps_per_call >= 1,
         f"must be at least 1 (or auto), got {config.steps_per_call}"),
        ("strategy", config.strategy in STRATEGIES,
         f"is {config.strategy!r}; choose one of {', '.join(STRATEGIES)}"),
        ("precision", config.precision in PRECISIONS,
         f"is {config.precision!r}; choose one of {', '.join(PRECISIONS)}"),
        ("jit", config.jit in JIT_CHOICES, f"is {config.jit!r}; choose one of {', '.join(JIT_CHOICES)}"),
        ("augment_on", config.augment_on in PLACEMENTS,
         f"is {config.augment_on!r}; choose one of {', '.join(PLACEMENTS)}"),
        ("head", config.head in HEADS, f"is {config.head!r}; choose one of {', '.join(HEADS)}"),
        ("head_init", config.head_init in HEAD_INITS,
         f"is {config.head_init!r}; choose one of {', '.join(HEAD_INITS)}"),
        ("dense_units", config.head != HEAD_STANDARDIZED or config.head_init != HEAD_INIT_PROBE or config.dense_units >= 2,
         f"must be 2 or more for `head_init` probe (two units carry the probe's logit), got "
         f"{config.dense_units}; raise it or pass `head_init` random"),
        ("stats_images", config.stats_images >= 1, f"must be at least 1, got {config.stats_images}"),
        ("seed", isinstance(config.seed, int) and not isinstance(config.seed, bool) and 0 <= config.seed <= MAX_SEED,
         f"must be a whole number in [0, {MAX_SEED}], got {config.seed!r}"),
        ("val_fold", config.val_fold is None or 0 <= config.val_fold < N_FOLDS,
         f"must be one of 0 … {N_FOLDS - 1} (the {N_FOLDS} Adience folds), got {config.val_fold}"),
    ]
    for name, ok, message in checks:
        if not ok:
            raise ModelError(f"`{name}` {message}", field=name)
    # Before any work: no output may overwrite or sit inside an input, and each must be writable.
    paths = output_paths(config)
    check_outputs([(paths["output"], FILE, "`output`"), (paths["savedmodel"], DIR, "the SavedModel export"),
                   (paths["history_csv"], FILE, "the history CSV"), (paths["log_dir"], DIR, "`log_dir`"),
                   (paths["checkpoint_dir"], DIR, "`checkpoint_dir`")],
                  [(config.weights, "`weights`"), (config.records, "`records`")])
