"""Training: one custom distributed training step for every strategy, checkpoints with exact resume.

Why a custom loop and not `model.fit`: under MultiWorkerMirroredStrategy, Keras 3's fit fails
("Attempt to convert a value (PerReplica...)", keras-team/keras#20585). One loop serves all
strategies: a `tf.function` that takes the next distributed batch and calls `strategy.run`, with
datasets from `strategy.distribute_datasets_from_function` and the loss averaged over the GLOBAL
batch by `tf.nn.compute_average_loss` (the optimizer sums the replicas' gradients).

Batches and exactness:
- Training batches are per replica (-b1), dropped when incomplete, so every replica's batch is
  full. With several workers the reader shards FILES, so workers can hold different numbers of
  batches; the distributed iterator's `get_next_as_optional` agrees across workers on whether any
  data is left and hands a worker that has run out an empty batch, so nobody waits forever and
  nothing is counted twice. An epoch is over when no worker has a batch left.
- Validation keeps every example (no drop): each replica returns sums (loss, correct, count), the
  sums are reduced across replicas, and the metrics are sum / count; the count must equal the
  manifest's (checked).
- Resume: a checkpoint holds the weights (every layer variable, including the dropout RNG
  state), the optimizer state, the epoch, the steps done in it and the epoch's running sums.
  The reader's order and augmentation are functions of (seed, epoch), and `skip` drops the
  examples this input pipeline already consumed (steps x per-replica batch x local replicas),
  so a resumed run sees exactly the examples an uninterrupted one would, in the same order.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from model.classifier import as_float32, build_classifier, set_feature_statistics
from model.defaults import (DEFAULT_CHECKPOINT_EVERY, DEFAULT_CUT_LAYER, DEFAULT_DENSE_UNITS, DEFAULT_DROPOUT,
                            DEFAULT_FREEZE_THROUGH, DEFAULT_HEAD, DEFAULT_LEARNING_RATE, DEFAULT_STATS_IMAGES,
                            HEAD_STANDARDIZED, HEADS, PRECISIONS, STRATEGIES)
from model.distribute import TaskInfo, precision, select_precision, select_strategy, task_info
from model.errors import ModelError
from pipeline.errors import DataError
from pipeline.folds import FOLD_SPLITS, N_FOLDS, fold_split
from pipeline.outputs import DIR, FILE, check_outputs
from pipeline.schema import LAYOUT_FOLDS, MEMORY_MODES

MAX_CHECKPOINTS_KEPT = 3
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "images_per_s", "seconds")
# What must be equal for a checkpoint to be continued: anything that changes the network, the
# optimizer's state layout or the order of the data. (Not epochs: training longer is allowed.)
FINGERPRINT_KEYS = ("weights_widths", "image_size", "cut_layer", "freeze_through", "head", "dense_units", "dropout",
                    "learning_rate", "loss_scaling", "seed", "augment", "shuffle", "global_batch_size",
                    "input_pipelines", "train_count", "train_splits")
# Fingerprint keys added later, with the value a checkpoint written before them implies.
FINGERPRINT_DEFAULTS = {"train_splits": ["train"], "head": "relu on raw features (before --head)"}
# The fingerprint keys that follow from the TrainConfig alone (the rest need the built model).
CONFIG_FINGERPRINT_KEYS = ("cut_layer", "freeze_through", "head", "dense_units", "dropout", "learning_rate", "seed",
                           "augment", "shuffle", "train_splits")

Progress = Callable[[dict], None]


@dataclass
class TrainConfig:
    """Everything `train` needs; the CLI fills it from its flags (same defaults)."""

    weights: str                          # VGG_FACE.t7 or a .keras written by `convert`
    records: str                          # records directory written by `preprocess`
    output: str                           # the trained model, *.keras
    epochs: int = 1
    batch_size: int = 32                  # -b1: training batch PER REPLICA (global = x replicas)
    valid_batch_size: int = 32            # -b2: validation batch per replica
    memory: str = "low"                   # -m: "low" streams from disk, "high" caches in RAM
    augment: bool = True
    shuffle: bool = True
    cut_layer: str = DEFAULT_CUT_LAYER
    freeze_through: str | None = DEFAULT_FREEZE_THROUGH
    dense_units: int = DEFAULT_DENSE_UNITS
    dropout: float = DEFAULT_DROPOUT
    precision: str = "auto"
    strategy: str = "auto"
    checkpoint_dir: str | None = None     # default: <output without .keras>.ckpt
    learning_rate: float = DEFAULT_LEARNING_RATE
    seed: int = 0
    checkpoint_every_steps: int = DEFAULT_CHECKPOINT_EVERY
    log_dir: str | None = None            # default: <output without .keras>_logs
    val_fold: int | None = None           # adience-folds records: validate on fold K, train on the others
    head: str = DEFAULT_HEAD              # "standardized" or "original" (model/classifier.py)
    stats_images: int = DEFAULT_STATS_IMAGES   # training images the head's feature statistics come from

    @property
    def stem(self) -> str:
        return self.output[: -len(".keras")] if self.output.endswith(".keras") else self.output

    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{self.stem}.ckpt"

    def resolved_log_dir(self) -> str:
        return self.log_dir or f"{self.stem}_logs"


@dataclass
class TrainResult:
    """What a run did. Output paths are None on non-chief workers (only the chief writes them)."""

    history: list[dict]
    final: dict
    output: str | None
    savedmodel: str | None
    history_csv: str | None
    log_dir: str | None
    checkpoint_dir: str
    resumed_from: dict | None
    strategy: str
    replicas: int
    workers: int
    is_chief: bool
    precision: str
    global_batch_size: int
    steps_run: int
    weights_digest: str                   # of the final weights (equal on every worker)
    replica_digests: list[str] = field(default_factory=list)   # one per local replica


def output_paths(config: TrainConfig) -> dict[str, str]:
    """Where the outputs go: the model, its SavedModel export, the history CSV, logs, checkpoints."""
    return {
        "output": config.output,
        "savedmodel": f"{config.stem}_savedmodel",
        "history_csv": f"{config.stem}_history.csv",
        "log_dir": config.resolved_log_dir(),
        "checkpoint_dir": config.resolved_checkpoint_dir(),
    }


def _check_config(config: TrainConfig) -> None:
    if not config.output.endswith(".keras"):
        raise ModelError(f"output {config.output} must end in .keras (the trained model is saved as a "
                         f"Keras 3 .keras file; the TF Serving export goes beside it)")
    if not os.path.exists(config.weights):
        raise ModelError(f"weights file {config.weights} does not exist; give VGG_FACE.t7 or the .keras "
                         f"file written by `python cli.py convert`")
    checks = [
        (config.epochs >= 1, f"-e/--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"-b1/--batch-size must be at least 1, got {config.batch_size}"),
        (config.valid_batch_size >= 1, f"-b2/--valid-batch-size must be at least 1, got {config.valid_batch_size}"),
        (config.memory in MEMORY_MODES, f"-m/--memory must be low or high, got {config.memory!r}"),
        (math.isfinite(config.learning_rate) and config.learning_rate > 0,
         f"--learning-rate must be a finite positive number, got {config.learning_rate}"),
        (math.isfinite(config.dropout) and 0.0 <= config.dropout < 1.0,
         f"--dropout must be a finite number in [0, 1), got {config.dropout}"),
        (config.checkpoint_every_steps >= 1,
         f"--checkpoint-every must be at least 1 step, got {config.checkpoint_every_steps}"),
        (config.strategy in STRATEGIES, f"unknown strategy {config.strategy!r}; choose one of {', '.join(STRATEGIES)}"),
        (config.precision in PRECISIONS, f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}"),
        (config.head in HEADS, f"unknown --head {config.head!r}; choose one of {', '.join(HEADS)}"),
        (config.stats_images >= 1, f"--stats-images must be at least 1, got {config.stats_images}"),
        (config.val_fold is None or 0 <= config.val_fold < N_FOLDS,
         f"--val-fold must be one of 0 … {N_FOLDS - 1} (the {N_FOLDS} Adience folds), got {config.val_fold}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ModelError(message)
    # Before any work: no output may overwrite or sit inside an input, and each must be writable.
    paths = output_paths(config)
    check_outputs([(paths["output"], FILE, "-o"), (paths["savedmodel"], DIR, "the SavedModel export"),
                   (paths["history_csv"], FILE, "the history CSV"), (paths["log_dir"], DIR, "--log-dir"),
                   (paths["checkpoint_dir"], DIR, "--checkpoint-dir")],
                  [(config.weights, "-w"), (config.records, "-i")])


def training_splits(records: str, val_fold: int | None) -> tuple[list[str], list[str]]:
    """(training splits, validation splits) of a records directory: train / valid for the
    aligned-valid layout; for the adience-folds layout the four other folds / fold K (val_fold).
    DataError when val_fold and the layout do not go together."""
    from pipeline.manifest import load_manifest

    layout = load_manifest(records).layout
    if layout == LAYOUT_FOLDS:
        if val_fold is None:
            raise DataError(f"{records} holds the {N_FOLDS} Adience folds ({', '.join(FOLD_SPLITS)}), not a "
                            f"train/valid split: pass --val-fold K (train on the other folds, validate on "
                            f"fold K) or --folds (all {N_FOLDS}, the cross-validation)")
        return [s for s in FOLD_SPLITS if s != fold_split(val_fold)], [fold_split(val_fold)]
    if val_fold is not None:
        raise DataError(f"--val-fold and --folds need records of the official Adience folds (preprocess "
                        f"--layout adience-folds), but {records} holds the {layout} layout (splits train, "
                        f"valid): drop the option to train on train and validate on valid")
    return ["train"], ["valid"]


def config_fingerprint(config: TrainConfig, train_splits: list[str]) -> dict:
    """The fingerprint entries that follow from the configuration alone (CONFIG_FINGERPRINT_KEYS)."""
    return {
        "cut_layer": config.cut_layer,
        "freeze_through": config.freeze_through if config.freeze_through else "none",
        "head": config.head,
        "dense_units": config.dense_units,
        "dropout": config.dropout,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "augment": config.augment,
        "shuffle": config.shuffle,
        "train_splits": list(train_splits),
    }


def checkpoint_state(checkpoint_dir: str) -> dict | None:
    """What the latest checkpoint in checkpoint_dir says, without building a model: {"checkpoint",
    "epoch" (epochs completed), "step", "fingerprint", "history"}; None when there is none or it
    cannot be read (`train` then explains)."""
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if not latest:
        return None
    try:
        reader = tf.train.load_checkpoint(latest)

        def value(name):
            return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")

        return {"checkpoint": latest, "epoch": int(value("epoch")), "step": int(value("step")),
                "fingerprint": json.loads(value("fingerprint").decode()),
                "history": json.loads(value("history").decode())}
    except (tf.errors.OpError, ValueError, KeyError):
        return None


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every weight of the model, in layer order: equal digests = identical weights."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        array = np.ascontiguousarray(value)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def replica_digests(model: keras.Model, strategy: tf.distribute.Strategy) -> list[str]:
    """weights_digest of each local replica's copy of the weights (mirrored variables hold one per
    device): all equal when the replicas stayed in sync."""
    per_variable = [strategy.experimental_local_results(v.value) for v in model.weights]
    digests = []
    for index in range(len(per_variable[0]) if per_variable else 0):
        digest = hashlib.sha256()
        for copies in per_variable:
            array = np.ascontiguousarray(copies[index].numpy())
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        digests.append(digest.hexdigest())
    return digests


# A validation loss this close to ln 2 means every score is about 0.5: the model has stopped telling
# the classes apart (the original head's failure on VGG-Face's real feature scale).
COLLAPSE_LOSS_TOLERANCE = 1e-3


def collapse_reason(val_loss: float, predicted_male: int, count: int) -> str | None:
    """Why the validation results say the model has collapsed, or None when they do not."""
    if predicted_male in (0, count):
        return f"every validation prediction is {'male' if predicted_male else 'female'}"
    if abs(val_loss - math.log(2.0)) < COLLAPSE_LOSS_TOLERANCE:
        return f"the validation loss is {val_loss:.4f}, ln 2 to within {COLLAPSE_LOSS_TOLERANCE:g}: every score is about 0.5"
    return None


def _scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar through TensorFlow's own summary op. tf.summary.scalar needs the
    tensorboard package (not a dependency: only needed to VIEW the logs); this writes the same
    event, tagged for TensorBoard's "scalars" plugin (plugin data content empty = its version 0)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars", content=b""))
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


def _strategy_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "default"


def train(config: TrainConfig, progress: Progress | None = None,
          strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Train (or resume training) the classifier; see the module docstring. Emits progress dicts
    with an "event" key: setup, resume, step, checkpoint, epoch_end, saved. `strategy`: one already
    created from config.strategy (several runs in one process share it: see model/crossval.py)."""
    _check_config(config)
    # First, before TensorFlow runs anything: MultiWorkerMirroredStrategy must configure the
    # collective ops at start-up.
    strategy = strategy if strategy is not None else select_strategy(config.strategy)
    policy = select_precision(config.precision)
    # Before the model is built: layers take the global policy when they are created.
    with precision(policy):
        return _Run(config, strategy, policy, progress or (lambda event: None)).run()


class _Run:
    """One training run: state shared by the steps, the checkpointing and the outputs."""

    def __init__(self, config: TrainConfig, strategy: tf.distribute.Strategy, policy: str, emit: Progress):
        from pipeline.reader import describe_dataset

        self.config, self.strategy, self.policy, self.emit = config, strategy, policy, emit
        self.info: TaskInfo = task_info(strategy)
        self.paths = output_paths(config)
        self.replicas = int(strategy.num_replicas_in_sync)
        self.local_replicas = max(1, self.replicas // self.info.workers)
        self.global_batch = config.batch_size * self.replicas
        self.train_splits, self.valid_splits = training_splits(config.records, config.val_fold)
        self.train_info = describe_dataset(config.records, self.train_splits)
        self.valid_info = describe_dataset(config.records, self.valid_splits)
        if self.train_info["count"] < self.global_batch:
            raise ModelError(f"the training split ({'+'.join(self.train_splits)}) of {config.records} has {self.train_info['count']} examples, fewer "
                             f"than one global batch ({config.batch_size} per replica x {self.replicas} replicas "
                             f"= {self.global_batch}); lower -b1")
        self.loss_scaling = policy == "mixed_float16"

    # ------------------------------------------------------------------ set-up
    def _estimated_steps(self) -> int:
        # Exact with one input pipeline; with several, the files are split between workers and
        # their counts are not in the manifest, so this assumes an even split.
        per_pipeline = self.train_info["count"] // self.info.workers
        batches = per_pipeline // self.config.batch_size
        return -(-batches // self.local_replicas)

    def _build(self) -> None:
        from model.backbone import load_backbone
        from model.vggface import widths_of

        config = self.config
        with self.strategy.scope():
            backbone = load_backbone(config.weights, image_size=self.train_info["image_size"])
            self.widths = widths_of(backbone)
            self.model = build_classifier(backbone, config.cut_layer, config.freeze_through,
                                          config.dense_units, config.dropout, seed=config.seed, head=config.head)
            optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
            if self.loss_scaling:
                # float16 gradients underflow without it; bfloat16 has float32's range and needs none.
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # Built now (slots exist) so that a checkpoint restores into them at once.
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        # Bookkeeping, plain (not mirrored) variables: identical on every worker because they are
        # computed from values reduced across all replicas.
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.sums_var = tf.Variable(np.zeros(3), dtype=tf.float64, trainable=False, name="epoch_sums")
        self.history_var = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        self.fingerprint_var = tf.Variable(json.dumps(self._fingerprint(), sort_keys=True), dtype=tf.string,
                                           trainable=False, name="fingerprint")
        # Every layer's variables by (layer name, position): stable names across processes, and
        # they include non-trainable state (frozen weights, the dropout seed generator).
        layer_vars = {f"{layer.name}.{i}": v.value for layer in self.model.layers
                      for i, v in enumerate(layer.variables)}
        self.checkpoint = tf.train.Checkpoint(
            layers=layer_vars, optimizer=self.optimizer, epoch=self.epoch_var, step=self.step_var,
            epoch_sums=self.sums_var, history=self.history_var, fingerprint=self.fingerprint_var)

    def _fingerprint(self) -> dict:
        return {
            "weights_widths": [list(self.widths.conv), self.widths.fc6, self.widths.fc7, self.widths.fc8],
            "image_size": self.train_info["image_size"],
            "loss_scaling": self.loss_scaling,
            **config_fingerprint(self.config, self.train_splits),
            "global_batch_size": self.global_batch,
            "input_pipelines": self.info.workers,
            "train_count": self.train_info["count"],
        }

    def _checkpoint_manager(self) -> tf.train.CheckpointManager:
        directory = self.paths["checkpoint_dir"]
        if not self.info.is_chief:
            # Every worker takes part in saving (the variables are read with collectives), but only
            # the chief's files are kept: the others write to a temporary directory, removed after.
            directory = f"{directory.rstrip('/')}.worker{self.info.task_id}.tmp"
        self.write_dir = directory
        return tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=MAX_CHECKPOINTS_KEPT)

    def _restore(self) -> dict | None:
        """Continue from the latest checkpoint in checkpoint_dir, if any (all workers read the chief's)."""
        directory = self.paths["checkpoint_dir"]
        latest = tf.train.latest_checkpoint(directory)
        if not latest:
            return None
        fix = f"use another --checkpoint-dir or delete {directory} to start afresh"
        try:
            reader = tf.train.load_checkpoint(latest)
            stored = json.loads(reader.get_tensor("fingerprint/.ATTRIBUTES/VARIABLE_VALUE").decode())
        except (tf.errors.OpError, ValueError, KeyError) as err:
            raise ModelError(f"{directory} holds a checkpoint that is not from `python cli.py train` or is "
                             f"damaged ({type(err).__name__}); {fix}") from None
        current = self._fingerprint()
        changed = [f"{key} {stored.get(key, FINGERPRINT_DEFAULTS.get(key))!r} -> {current[key]!r}"
                   for key in FINGERPRINT_KEYS if stored.get(key, FINGERPRINT_DEFAULTS.get(key)) != current[key]]
        if changed:
            raise ModelError(f"{directory} holds a checkpoint of a different training ({'; '.join(changed)}); "
                             f"rerun with the same settings to resume it, or {fix}")
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            first = str(err).strip().splitlines()[0][:200]
            raise ModelError(f"cannot restore checkpoint {latest} ({first}); {fix}") from None
        epoch, step = int(self.epoch_var.numpy()), int(self.step_var.numpy())
        if epoch > self.config.epochs:
            raise ModelError(f"{directory} holds a run already trained for {epoch} epochs, more than "
                             f"-e {self.config.epochs}; give -e {epoch} or more, or {fix}")
        return {"checkpoint": latest, "epoch": epoch + 1, "step": step,
                "finished": epoch == self.config.epochs}

    # ------------------------------------------------------------------ data
    def _train_dataset(self, epoch: int, step: int):
        from pipeline.reader import make_dataset

        config = self.config

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local = max(1, context.num_replicas_in_sync // context.num_input_pipelines)
            return make_dataset(config.records, self.train_splits, config.batch_size, memory=config.memory,
                                augment=config.augment, shuffle=config.shuffle, seed=config.seed, epoch=epoch,
                                skip=step * config.batch_size * local, input_context=context,
                                drop_remainder=True)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _valid_dataset(self):
        from pipeline.reader import make_dataset

        config = self.config

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return make_dataset(config.records, self.valid_splits, config.valid_batch_size, memory=config.memory,
                                input_context=context)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ------------------------------------------------------------------ steps
    def _make_steps(self):
        strategy, model, optimizer = self.strategy, self.model, self.optimizer
        global_batch, loss_scaling = self.global_batch, self.loss_scaling
        SUM = tf.distribute.ReduceOp.SUM

        placeholder_shape = [1, self.train_info["image_size"], self.train_info["image_size"], 3]

        def non_empty(images, labels):
            # A replica whose worker has run out of data gets an empty batch, and the CPU
            # convolution (oneDNN) fails on a batch of 0 ("input depth must be evenly divisible by
            # filter depth"). Such a replica runs one black placeholder image of weight 0 instead;
            # the model call stays unconditional, which the optimizer's cross-replica sum needs.
            empty = tf.equal(tf.shape(images)[0], 0)
            images = tf.cond(empty, lambda: tf.zeros(placeholder_shape, images.dtype), lambda: images)
            labels = tf.cond(empty, lambda: tf.zeros([1], labels.dtype), lambda: labels)
            weights = tf.cond(empty, lambda: tf.zeros([1], tf.float32), lambda: tf.ones_like(labels, tf.float32))
            return images, labels, weights

        def sums(probs, labels, per_example, weights):
            predicted = tf.cast(probs[:, 0] >= 0.5, tf.float32)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32) * weights)
            return tf.reduce_sum(per_example), correct, tf.reduce_sum(weights)

        def replica_train(images, labels):
            images, labels, weights = non_empty(images, labels)
            with tf.GradientTape() as tape:
                probs = model(images, training=True)
                per_example = keras.losses.binary_crossentropy(labels[:, None], probs) * weights
                # Sum over this replica / GLOBAL batch: the optimizer sums the replicas' gradients.
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                scaled = optimizer.scale_loss(loss) if loss_scaling else loss
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)  # unscales when loss scaling
            return sums(probs, labels, per_example, weights)

        def replica_eval(images, labels):
            images, labels, weights = non_empty(images, labels)
            probs = model(images, training=False)
            per_example = keras.losses.binary_crossentropy(labels[:, None], probs) * weights
            # Also how many were predicted male: all or none of them means a collapsed model.
            male = tf.reduce_sum(tf.cast(probs[:, 0] >= 0.5, tf.float32) * weights)
            return (*sums(probs, labels, per_example, weights), male)

        def reduced(per_replica):
            return tf.stack([strategy.reduce(SUM, value, axis=None) for value in per_replica])

        def distributed(replica_fn, width):
            @tf.function
            def step(iterator):
                # Agreed across all workers: is there a batch left anywhere? Replicas without data
                # get an empty batch (they still join the gradient all-reduce).
                optional = iterator.get_next_as_optional()

                def run():
                    images, labels = optional.get_value()
                    return reduced(strategy.run(replica_fn, args=(images, labels)))

                # No batch anywhere: a count of -1 says so.
                return tf.cond(optional.has_value(), run, lambda: tf.constant([0.0, 0.0, -1.0] + [0.0] * (width - 3)))

            return step

        return distributed(replica_train, 3), distributed(replica_eval, 4)

    def _validate(self, eval_step) -> dict:
        iterator = iter(self._valid_dataset())
        total = np.zeros(4)
        while True:
            result = eval_step(iterator).numpy().astype(np.float64)
            if result[2] < 0:
                break
            total += result
        loss_sum, correct, count, male = total
        expected = self.valid_info["count"]
        if int(count) != expected:
            raise ModelError(f"validation saw {int(count)} examples but the manifest of {self.config.records} "
                             f"lists {expected}; the records directory changed during training?")
        return {"val_loss": loss_sum / count, "val_accuracy": correct / count, "val_count": int(count),
                "val_predicted_male": int(male)}

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        config, emit, info = self.config, self.emit, self.info
        self._build()
        manager = self._checkpoint_manager()
        resumed = self._restore()
        features = self._fix_feature_statistics(resumed is not None)
        steps_estimate = self._estimated_steps()
        emit({"event": "setup", "strategy": _strategy_name(self.strategy), "replicas": self.replicas,
              "workers": info.workers, "task_type": info.task_type, "task_id": info.task_id,
              "is_chief": info.is_chief, "precision": self.policy, "loss_scaling": self.loss_scaling,
              "per_replica_batch": config.batch_size, "global_batch": self.global_batch,
              "valid_batch": config.valid_batch_size, "train_count": self.train_info["count"],
              "valid_count": self.valid_info["count"], "image_size": self.train_info["image_size"],
              "train_splits": self.train_splits, "valid_splits": self.valid_splits,
              "steps_per_epoch": steps_estimate, "steps_exact": info.workers == 1, "epochs": config.epochs,
              "memory": config.memory, "augment": config.augment,
              "memory_bytes": (self.train_info["bytes_in_memory"] + self.valid_info["bytes_in_memory"]
                               if config.memory == "high" else 0),
              "trainable_params": int(sum(np.prod(v.shape) for v in self.model.trainable_variables)),
              "frozen_params": int(sum(np.prod(v.shape) for v in self.model.non_trainable_weights)),
              "checkpoint_dir": self.paths["checkpoint_dir"], "learning_rate": config.learning_rate,
              "compute_dtype": self.model.get_layer(config.cut_layer).compute_dtype,
              "output_dtype": self.model.output.dtype, "head": config.head, "cut_layer": config.cut_layer,
              **features})
        if resumed:
            emit({"event": "resume", **resumed})
        train_step, eval_step = self._make_steps()
        writer = (tf.summary.create_file_writer(self.paths["log_dir"]) if info.is_chief
                  else tf.summary.create_noop_writer())
        history = {int(row["epoch"]): row for row in json.loads(self.history_var.numpy().decode())}
        steps_run = 0
        try:
            with writer.as_default():
                while int(self.epoch_var.numpy()) < config.epochs:
                    steps_run += self._run_epoch(train_step, eval_step, manager, history, steps_estimate)
            writer.flush()
        finally:
            self._remove_worker_dir()
        return self._finish(history, resumed, steps_run)

    def _fix_feature_statistics(self, restored: bool) -> dict:
        """Fix the standardized head's statistics on a fresh run (a restored one has them from its
        checkpoint) and say how large the cut layer's features are: {"feature_rms", "feature_max",
        "stats_images"} (max and images None when the RMS comes from restored statistics)."""
        from model.classifier import STANDARDIZE_LAYER
        from model.feature_stats import cut_feature_statistics

        config = self.config
        standardized = config.head == HEAD_STANDARDIZED
        if standardized and restored:
            layer = self.model.get_layer(STANDARDIZE_LAYER)
            mean, variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
            # The mean square per channel is variance + mean^2 (the floor may raise a dead channel's).
            rms = float(np.sqrt(np.mean(variance.astype(np.float64) + mean.astype(np.float64) ** 2)))
            return {"feature_rms": rms, "feature_max": None, "stats_images": None}
        # The original head needs no statistics, only the magnitude for the report: a small sample.
        images = config.stats_images if standardized else min(config.stats_images, 64)
        stats = cut_feature_statistics(self.model, config.cut_layer, config.records, self.train_splits, images,
                                       image_size=self.train_info["image_size"])
        if standardized:
            set_feature_statistics(self.model, stats.mean, stats.variance)
        return {"feature_rms": stats.rms, "feature_max": stats.max, "stats_images": stats.images}

    def _save(self, manager: tf.train.CheckpointManager) -> str:
        path = manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))
        self._remove_worker_dir()
        return path

    def _remove_worker_dir(self) -> None:
        if not self.info.is_chief and tf.io.gfile.exists(self.write_dir):
            tf.io.gfile.rmtree(self.write_dir)

    def _run_epoch(self, train_step, eval_step, manager, history: dict, steps_estimate: int) -> int:
        config, emit = self.config, self.emit
        epoch, step = int(self.epoch_var.numpy()), int(self.step_var.numpy())
        sums = self.sums_var.numpy().copy()  # loss sum, correct, count of this epoch so far
        iterator = iter(self._train_dataset(epoch, step))
        started = time.perf_counter()
        timed_from, timed_images, last_step_at = None, 0.0, started
        steps_run = 0
        while True:
            result = train_step(iterator).numpy().astype(np.float64)
            if result[2] < 0:
                break
            now = last_step_at = time.perf_counter()
            step += 1
            steps_run += 1
            sums += result
            # images/s from the end of this run's first step of the epoch on (that one pays for
            # tracing and filling the input pipeline); the first step alone is timed from the start.
            if timed_from is None:
                timed_from, rate = now, result[2] / max(now - started, 1e-9)
            else:
                timed_images += result[2]
                rate = timed_images / max(now - timed_from, 1e-9)
            loss = result[0] / max(result[2], 1.0)
            accuracy = sums[1] / max(sums[2], 1.0)
            global_step = int(self.optimizer.iterations.numpy())
            _scalar("train/loss", loss, step=global_step)
            _scalar("train/accuracy", accuracy, step=global_step)
            _scalar("train/images_per_s", rate, step=global_step)
            emit({"event": "step", "epoch": epoch + 1, "epochs": config.epochs, "step": step,
                  "steps_per_epoch": max(steps_estimate, step), "loss": float(loss), "accuracy": float(accuracy),
                  "images_per_s": float(rate), "examples": int(result[2])})
            if global_step % config.checkpoint_every_steps == 0:  # counted over the whole run, like ckpt-N
                self.step_var.assign(step)
                self.sums_var.assign(sums)
                path = self._save(manager)
                emit({"event": "checkpoint", "path": path if self.info.is_chief else None,
                      "epoch": epoch + 1, "step": step})
        train_seconds = time.perf_counter() - started
        metrics = self._validate(eval_step)
        row = {"epoch": epoch + 1, "loss": float(sums[0] / max(sums[2], 1.0)),
               "accuracy": float(sums[1] / max(sums[2], 1.0)),
               "val_loss": float(metrics["val_loss"]), "val_accuracy": float(metrics["val_accuracy"]),
               "images_per_s": float(timed_images / max(last_step_at - timed_from, 1e-9) if timed_images
                                     else (sums[2] / train_seconds if steps_run else 0.0)),
               "seconds": time.perf_counter() - started, "train_examples": int(sums[2]),
               "val_count": metrics["val_count"]}
        global_step = int(self.optimizer.iterations.numpy())
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            _scalar(f"epoch/{key}", row[key], step=epoch + 1)
        history[epoch + 1] = row
        self.epoch_var.assign(epoch + 1)
        self.step_var.assign(0)
        self.sums_var.assign(np.zeros(3))
        self.history_var.assign(json.dumps([history[k] for k in sorted(history)]))
        path = self._save(manager)
        emit({"event": "epoch_end", **row, "checkpoint": path if self.info.is_chief else None,
              "global_step": global_step})
        collapse = collapse_reason(row["val_loss"], metrics["val_predicted_male"], metrics["val_count"])
        if collapse:
            emit({"event": "collapse", "epoch": epoch + 1, "reason": collapse, "head": config.head})
        return steps_run

    # ------------------------------------------------------------------ outputs
    def _finish(self, history: dict, resumed: dict | None, steps_run: int) -> TrainResult:
        rows = [history[k] for k in sorted(history)]
        digest = weights_digest(self.model)
        paths = dict(self.paths)
        if self.info.is_chief:
            self._write_outputs(rows)
            self.emit({"event": "saved", **paths, "weights_digest": digest})
        else:
            paths.update(output=None, savedmodel=None, history_csv=None, log_dir=None)
        return TrainResult(
            history=rows, final=rows[-1] if rows else {}, output=paths["output"], savedmodel=paths["savedmodel"],
            history_csv=paths["history_csv"], log_dir=paths["log_dir"], checkpoint_dir=self.paths["checkpoint_dir"],
            resumed_from=resumed, strategy=_strategy_name(self.strategy), replicas=self.replicas,
            workers=self.info.workers, is_chief=self.info.is_chief, precision=self.policy,
            global_batch_size=self.global_batch, steps_run=steps_run, weights_digest=digest,
            replica_digests=replica_digests(self.model, self.strategy))

    def _write_outputs(self, rows: list[dict]) -> None:
        output, savedmodel = self.paths["output"], self.paths["savedmodel"]
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        # Saved and exported in float32 outside the strategy: loads and serves anywhere.
        with precision("float32"):
            final = as_float32(self.model)
        # Written under temporary names, then renamed: a crash never leaves half a model.
        partial = f"{output[: -len('.keras')]}.partial.keras"
        final.save(partial)
        os.replace(partial, output)
        partial_dir = f"{savedmodel}.partial"
        shutil.rmtree(partial_dir, ignore_errors=True)
        final.export(partial_dir, format="tf_saved_model", verbose=False)
        shutil.rmtree(savedmodel, ignore_errors=True)
        os.replace(partial_dir, savedmodel)
        with open(self.paths["history_csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: (f"{row[key]:.6g}" if isinstance(row[key], float) else row[key])
                                 for key in HISTORY_FIELDS})


__all__ = ["TrainConfig", "TrainResult", "train", "output_paths", "weights_digest", "HISTORY_FIELDS",
           "training_splits", "checkpoint_state", "config_fingerprint",
           "DEFAULT_LEARNING_RATE", "DEFAULT_CHECKPOINT_EVERY"]
