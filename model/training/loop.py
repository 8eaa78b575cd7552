"""Training: build the classifier, restore or start, run the epochs in calls of many steps, save.

The pieces: config.py (what a run is), steps.py (the step functions), state.py (the checkpoint),
datasets.py (the data), exports.py (the outputs), events.py (the progress events). This module
only orders them: set-up, then per epoch the training calls — each ends at a checkpoint boundary,
the end of the data or after about AUTO_CALL_SECONDS of steps — validation, the epoch's checkpoint.
"""
# Over 350 lines: _Run holds one run's shared state, and its set-up, epoch and output steps read
# in order; splitting it would pass that state between modules. The pieces it orders live elsewhere.
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from model.network.head import STANDARDIZE_LAYER, build_classifier, set_feature_statistics
from model.runtime import CallSizer
from model.defaults import HEAD_STANDARDIZED
from model.runtime import (TaskInfo, accelerators, precision, resolve_augment_on, resolve_jit, select_precision,
                              select_strategy, task_info)
from model.errors import ModelError
from model.training import events
from model.training.config import (TrainConfig, check_config, fingerprint, locked_outputs, machine_of,
                                   output_paths)
from model.training.datasets import run_data, train_dataset, training_splits, valid_dataset
from model.training.exports import replica_digests, weights_digest, write_outputs
from model.training.state import RunState
from model.training.start import apply_linear_start, effective_head_init, start_row, uses_linear_start
from model.training.steps import make_steps
from pipeline.reader import describe_dataset
from pipeline.shard_check import records_error, verify_shards

# With several workers "auto" is this fixed number: every worker then makes the same calls.
MULTIWORKER_STEPS_PER_CALL = 50
# A validation loss this close to ln 2 means every score is about 0.5: the model has stopped telling
# the classes apart (the original head's failure on VGG-Face's real feature scale).
COLLAPSE_LOSS_TOLERANCE = 1e-3
UNTIL_THE_END = 2 ** 31 - 1


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
    resumed_from: events.Resumed | None
    strategy: str
    replicas: int
    workers: int
    is_chief: bool
    precision: str
    global_batch_size: int
    steps_run: int
    weights_digest: str                   # of the final weights (equal on every worker)
    replica_digests: list[str] = field(default_factory=list)   # one per local replica


def collapse_reason(val_loss: float, predicted_male: int, count: int) -> str | None:
    """Why the validation results say the model has collapsed, or None when they do not."""
    if predicted_male in (0, count):
        return f"every validation prediction is {'male' if predicted_male else 'female'}"
    if abs(val_loss - math.log(2.0)) < COLLAPSE_LOSS_TOLERANCE:
        return f"the validation loss is {val_loss:.4f}, ln 2 to within {COLLAPSE_LOSS_TOLERANCE:g}: every score is about 0.5"
    return None


def train(config: TrainConfig, progress: events.Progress | None = None,
          strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Train (or resume training) the classifier. `strategy`: one already created from
    config.strategy (several runs in one process share it: see model/training/folds.py)."""
    check_config(config)
    # First, before TensorFlow runs anything: MultiWorkerMirroredStrategy must configure the
    # collective ops at start-up.
    strategy = strategy if strategy is not None else select_strategy(config.strategy)
    policy = select_precision(config.precision)
    # Only the chief writes the outputs, so only it locks them; for the whole run.
    lock = locked_outputs(config) if task_info(strategy).is_chief else contextlib.nullcontext()
    # Before the model is built: layers take the global policy when they are created.
    with lock, precision(policy):
        return _Run(config, strategy, policy, progress or (lambda event: None)).run()


def _strategy_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "default"


def _scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar through TensorFlow's own summary op. tf.summary.scalar needs the
    tensorboard package (only needed to VIEW the logs); this writes the same event, tagged for
    TensorBoard's "scalars" plugin (plugin data content empty = its version 0)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars", content=b""))
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


class _Run:
    """One training run: the state shared by set-up, the epochs and the outputs."""

    def __init__(self, config: TrainConfig, strategy: tf.distribute.Strategy, policy: str, emit: events.Progress):
        self.config, self.strategy, self.policy, self.emit = config, strategy, policy, emit
        self.info: TaskInfo = task_info(strategy)
        self.paths = output_paths(config)
        self.replicas = int(strategy.num_replicas_in_sync)
        self.local_replicas = max(1, self.replicas // self.info.workers)
        self.global_batch = config.batch_size * self.replicas
        self.train_splits, self.valid_splits = training_splits(config.records, config.val_fold)
        self.train_info = describe_dataset(config.records, self.train_splits)
        self.valid_info = describe_dataset(config.records, self.valid_splits)
        # The shards' bytes against the manifest's hashes, before anything reads them: swapped
        # records are refused, not used (the fingerprint's digest, run_data, finds them hashed).
        verify_shards(config.records, self.train_splits + self.valid_splits)
        if self.train_info["count"] < self.global_batch:
            raise ModelError(f"the training split ({'+'.join(self.train_splits)}) of {config.records} has "
                             f"{self.train_info['count']} examples, fewer than one global batch ({config.batch_size} "
                             f"per replica x {self.replicas} replicas = {self.global_batch}); lower `batch_size`")
        self.loss_scaling = policy == "mixed_float16"
        self.devices = accelerators()
        self.jit = resolve_jit(config.jit, bool(self.devices))
        self.augment_on = resolve_augment_on(config.augment_on, bool(self.devices))
        auto = MULTIWORKER_STEPS_PER_CALL if self.info.workers > 1 else None
        self.sizer = CallSizer(config.steps_per_call or auto)

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        from model.network.backbone import load_backbone
        from model.network.vggface import widths_of

        config = self.config
        with self.strategy.scope():
            backbone = load_backbone(config.weights, image_size=self.train_info["image_size"])
            widths = widths_of(backbone)
            self.model = build_classifier(backbone, config.cut_layer, config.freeze_through, config.dense_units,
                                          config.dropout, seed=config.seed, head=config.head)
            optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
            if self.loss_scaling:
                # float16 gradients underflow without it; bfloat16 has float32's range and needs none.
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # Built now (slots exist) so that a checkpoint restores into them at once.
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        machine = machine_of(config, widths, self.replicas, self.info.workers, self.policy)
        data = run_data(config, self.train_splits, self.train_info["image_size"])
        self.state = RunState(self.model, optimizer, fingerprint(config, data, machine), self.paths["checkpoint_dir"],
                              self.info.is_chief, self.info.task_id)

    def _fix_feature_statistics(self, restored: bool) -> dict:
        """Fix the standardized head's statistics on a fresh run (a restored one has them from its
        checkpoint) and say how large the cut layer's features are."""
        from model.network.feature_stats import cut_feature_statistics

        config = self.config
        standardized = config.head == HEAD_STANDARDIZED
        self.linear_start, self.start_seconds = None, 0.0
        if standardized and restored:
            layer = self.model.get_layer(STANDARDIZE_LAYER)
            mean, variance = layer.moving_mean.numpy().astype(np.float64), layer.moving_variance.numpy()
            # The mean square per feature is variance + mean^2 (the floor may raise a dead feature's).
            rms = float(np.sqrt(np.mean(variance + mean ** 2)))
            return {"feature_rms": rms, "feature_max": None, "stats_images": None}
        # The original head needs no statistics, only the magnitude for the report: a small sample.
        images = config.stats_images if standardized else min(config.stats_images, 64)
        started = time.perf_counter()
        try:
            stats = cut_feature_statistics(self.model, config.cut_layer, config.records, self.train_splits, images,
                                           image_size=self.train_info["image_size"],
                                           keep_features=uses_linear_start(config))
        except tf.errors.OpError as err:
            raise self._records_problem(err, self.train_splits) from None
        if standardized:
            set_feature_statistics(self.model, stats.mean, stats.variance)
        if uses_linear_start(config):
            self.linear_start = apply_linear_start(self.model, stats)
        self.start_seconds = time.perf_counter() - started
        return {"feature_rms": stats.rms, "feature_max": stats.max, "stats_images": stats.images}

    def _setup_event(self, features: dict) -> events.Setup:
        config, info = self.config, self.info
        per_pipeline = self.train_info["count"] // info.workers
        # Exact with one input pipeline; with several the files are split between workers and their
        # counts are not known in advance, so this assumes an even split.
        steps = -(-(per_pipeline // config.batch_size) // self.local_replicas)
        return events.Setup(
            strategy=_strategy_name(self.strategy), replicas=self.replicas, workers=info.workers,
            task_type=info.task_type, task_id=info.task_id, is_chief=info.is_chief, devices=self.devices,
            precision=self.policy, loss_scaling=self.loss_scaling, jit=self.jit, augment=config.augment,
            compute_dtype=self.model.get_layer(config.cut_layer).compute_dtype,
            output_dtype=str(self.model.output.dtype),
            augment_on=self.augment_on, steps_per_call=self.sizer.fixed, per_replica_batch=config.batch_size,
            global_batch=self.global_batch, valid_batch=config.valid_batch_size,
            train_count=self.train_info["count"], valid_count=self.valid_info["count"],
            image_size=self.train_info["image_size"], train_splits=tuple(self.train_splits),
            valid_splits=tuple(self.valid_splits), steps_per_epoch=steps, steps_exact=info.workers == 1,
            epochs=config.epochs, memory=config.memory,
            memory_bytes=(self.train_info["bytes_in_memory"] + self.valid_info["bytes_in_memory"]
                          if config.memory == "high" else 0),
            trainable_params=int(sum(np.prod(v.shape) for v in self.model.trainable_variables)),
            frozen_params=int(sum(np.prod(v.shape) for v in self.model.non_trainable_weights)),
            learning_rate=config.learning_rate, checkpoint_dir=self.paths["checkpoint_dir"], head=config.head,
            head_init=effective_head_init(config), cut_layer=config.cut_layer, **features)

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        config = self.config
        self._build()
        checkpoint = self.state.restore(config.epochs)
        setup = self._setup_event(self._fix_feature_statistics(checkpoint is not None))
        self.emit(setup)
        if self.linear_start is not None:
            self.emit(self.linear_start)
        done = self.state.progress()
        resumed = None
        if checkpoint:
            resumed = events.Resumed(checkpoint=checkpoint, epoch=done.epoch + 1, step=done.step,
                                     finished=done.epoch == config.epochs)
            self.emit(resumed)
        self.steps = make_steps(self.strategy, self.model, self.optimizer, global_batch=self.global_batch,
                                loss_scaling=self.loss_scaling, image_size=self.train_info["image_size"],
                                jit=self.jit, device_augment=config.augment_params
                                if config.augment and self.augment_on == "device" else None)
        self.steps_per_epoch = setup.steps_per_epoch
        writer = (tf.summary.create_file_writer(self.paths["log_dir"]) if self.info.is_chief
                  else tf.summary.create_noop_writer())
        history = {int(row["epoch"]): row for row in done.history}
        steps_run = 0
        try:
            with writer.as_default():
                if checkpoint is None:
                    self._validate_start(history)
                while int(self.state.epoch.numpy()) < config.epochs:
                    steps_run += self._run_epoch(history)
            writer.flush()
        finally:
            self.state.remove_worker_copy()
        return self._finish(history, resumed, steps_run)

    def _records_problem(self, err: tf.errors.OpError, splits: list[str]) -> Exception:
        """The one-line error for a failure while reading the records, or the error itself."""
        problem = records_error(err, self.config.records, splits)
        return problem if problem is not None else err

    def _train_calls(self, epoch: int, step: int, sums: np.ndarray) -> tuple[int, float, float]:
        """Run the epoch's remaining training calls; returns (steps run, images timed, seconds timed)."""
        config, emit = self.config, self.emit
        iterator = iter(train_dataset(self.strategy, config, self.train_splits, epoch, step,
                                      augment_on_device=config.augment and self.augment_on == "device"))
        global_step = int(self.optimizer.iterations.numpy())
        steps_run, timed_images, timed_seconds, first = 0, 0.0, 0.0, True
        while True:
            n = self.sizer.size(config.checkpoint_every_steps - global_step % config.checkpoint_every_steps)
            started = time.perf_counter()
            try:
                result = self.steps.train(iterator, tf.constant(n, tf.int64)).numpy()
            except tf.errors.OpError as err:
                raise self._records_problem(err, self.train_splits) from None
            seconds = time.perf_counter() - started
            ran, first_bad = int(result[3]), int(result[4])
            if first_bad >= 0:
                raise ModelError(
                    f"training stopped at epoch {epoch + 1}, step {step + first_bad + 1} (global step "
                    f"{global_step + first_bad + 1}): the loss is {result[0]} (not finite); nothing was saved after "
                    f"the last checkpoint; lower `learning_rate`, or check the weights file and the records")
            if ran == 0:
                break
            step, global_step, steps_run = step + ran, global_step + ran, steps_run + ran
            sums += result[:3]
            if not first:       # the first call of an epoch pays for tracing and filling the pipeline
                self.sizer.observe(seconds, ran)
                timed_images, timed_seconds = timed_images + result[2], timed_seconds + seconds
            rate = (timed_images / timed_seconds) if timed_seconds else result[2] / max(seconds, 1e-9)
            first = False
            loss, accuracy = result[0] / max(result[2], 1.0), sums[1] / max(sums[2], 1.0)
            for tag, value in (("train/loss", loss), ("train/accuracy", accuracy), ("train/images_per_s", rate)):
                _scalar(tag, value, step=global_step)
            emit(events.StepsDone(epoch=epoch + 1, epochs=config.epochs, step=step,
                                  steps_per_epoch=max(self.steps_per_epoch, step), steps=ran,
                                  examples=int(result[2]), loss=float(loss),
                                  accuracy=float(accuracy), images_per_s=float(rate)))
            if global_step % config.checkpoint_every_steps == 0:  # counted over the whole run, like ckpt-N
                path = self.state.save_position(step, sums)
                emit(events.CheckpointSaved(path=path, epoch=epoch + 1, step=step))
            if ran < n:
                break
        return steps_run, timed_images, timed_seconds

    def _run_epoch(self, history: dict) -> int:
        config = self.config
        done = self.state.progress()
        epoch, sums = done.epoch, done.sums
        started = time.perf_counter()
        steps_run, timed_images, timed_seconds = self._train_calls(epoch, done.step, sums)
        train_seconds = time.perf_counter() - started
        metrics = self._validate()
        row = {"epoch": epoch + 1, "loss": float(sums[0] / max(sums[2], 1.0)),
               "accuracy": float(sums[1] / max(sums[2], 1.0)),
               "val_loss": metrics["val_loss"], "val_accuracy": metrics["val_accuracy"],
               "images_per_s": float(timed_images / timed_seconds if timed_seconds
                                     else (sums[2] / train_seconds if steps_run else 0.0)),
               "seconds": time.perf_counter() - started, "train_examples": int(sums[2]),
               "val_count": metrics["val_count"]}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            _scalar(f"epoch/{key}", row[key], step=epoch + 1)
        history[epoch + 1] = row
        path = self.state.save_epoch([history[k] for k in sorted(history)])
        self.emit(events.EpochEnd(epoch=epoch + 1, loss=row["loss"], accuracy=row["accuracy"],
                                  val_loss=row["val_loss"], val_accuracy=row["val_accuracy"],
                                  val_count=row["val_count"], images_per_s=row["images_per_s"],
                                  seconds=row["seconds"], checkpoint=path,
                                  global_step=int(self.optimizer.iterations.numpy())))
        collapse = collapse_reason(row["val_loss"], metrics["val_predicted_male"], metrics["val_count"])
        if collapse:
            self.emit(events.Collapse(epoch=epoch + 1, reason=collapse, head=config.head))
        return steps_run

    def _validate_start(self, history: dict) -> None:
        """Epoch 0: validate before the first step, so the user sees what the start gives (with
        --head-init probe, what the frozen features allow) and what training adds to it."""
        started = time.perf_counter()
        metrics = self._validate()
        history[0] = start_row(metrics, self.start_seconds + time.perf_counter() - started)
        for key in ("val_loss", "val_accuracy"):
            _scalar(f"epoch/{key}", metrics[key], step=0)
        # Into the checkpoint's history now, so that a run interrupted in epoch 1 keeps the row.
        self.state.history.assign(json.dumps([history[0]]))
        self.emit(events.StartValidated(start="linear" if self.linear_start is not None else "random",
                                        val_loss=metrics["val_loss"], val_accuracy=metrics["val_accuracy"],
                                        val_count=metrics["val_count"], seconds=time.perf_counter() - started))

    def _validate(self) -> dict:
        iterator = iter(valid_dataset(self.strategy, self.config, self.valid_splits))
        try:
            loss_sum, correct, count, male, _ = self.steps.evaluate(iterator, tf.constant(UNTIL_THE_END, tf.int64)).numpy()
        except tf.errors.OpError as err:
            raise self._records_problem(err, self.valid_splits) from None
        expected = self.valid_info["count"]
        if int(count) != expected:
            raise ModelError(f"validation saw {int(count)} examples but the manifest of {self.config.records} "
                             f"lists {expected}; the records directory changed during training?")
        return {"val_loss": float(loss_sum / count), "val_accuracy": float(correct / count), "val_count": int(count),
                "val_predicted_male": int(male)}

    # ------------------------------------------------------------------ outputs
    def _finish(self, history: dict, resumed: events.Resumed | None, steps_run: int) -> TrainResult:
        rows = [history[k] for k in sorted(history)]
        digest = weights_digest(self.model)
        paths = dict(self.paths)
        if self.info.is_chief:
            write_outputs(self.model, self.paths, rows)
            self.emit(events.Saved(output=paths["output"], savedmodel=paths["savedmodel"],
                                   history_csv=paths["history_csv"], log_dir=paths["log_dir"],
                                   checkpoint_dir=paths["checkpoint_dir"], weights_digest=digest))
        else:
            paths.update(output=None, savedmodel=None, history_csv=None, log_dir=None)
        return TrainResult(
            history=rows, final=rows[-1] if rows else {}, output=paths["output"], savedmodel=paths["savedmodel"],
            history_csv=paths["history_csv"], log_dir=paths["log_dir"], checkpoint_dir=self.paths["checkpoint_dir"],
            resumed_from=resumed, strategy=_strategy_name(self.strategy), replicas=self.replicas,
            workers=self.info.workers, is_chief=self.info.is_chief, precision=self.policy,
            global_batch_size=self.global_batch, steps_run=steps_run, weights_digest=digest,
            replica_digests=replica_digests(self.model, self.strategy))
