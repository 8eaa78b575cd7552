"""The checkpoint state of a run: what is saved, how it is restored, and when it is refused.

A checkpoint holds every layer variable of the model (by layer name and position, so names are
stable across processes; frozen weights, the standardization statistics and the dropout RNG state
included), the optimizer state, and the run's bookkeeping: the epoch, the steps done in it, the
epoch's running sums, the history, and the fingerprint of the training it belongs to. The reader's
order and augmentation are functions of (seed, epoch), so (epoch, step) is the data position: a
resumed run sees exactly the examples an uninterrupted one would, in the same order.

Under MultiWorkerMirroredStrategy every worker takes part in saving (the variables are read with
collectives), but only the chief's files are kept: the others write to a temporary directory,
removed after each save.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from model.errors import ModelError

MAX_CHECKPOINTS_KEPT = 3


@dataclass(frozen=True)
class Progress:
    """Where a run stands, as its checkpoint says."""

    epoch: int                # epochs completed
    step: int                 # steps done in the next epoch
    sums: np.ndarray          # that epoch's running loss sum, correct, count
    history: list[dict]       # one row per completed epoch


class RunState:
    """The checkpointed state of one run, its manager and its restore checks."""

    def __init__(self, model: keras.Model, optimizer, fingerprint: dict, directory: str, is_chief: bool,
                 task_id: int):
        self.directory, self.is_chief, self.fingerprint = directory, is_chief, fingerprint
        # Plain (not mirrored) variables: identical on every worker because they are computed from
        # values reduced across all replicas.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.sums = tf.Variable(np.zeros(3), dtype=tf.float64, trainable=False, name="epoch_sums")
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        stored = tf.Variable(json.dumps(fingerprint, sort_keys=True), dtype=tf.string, trainable=False,
                             name="fingerprint")
        layer_vars = {f"{layer.name}.{i}": v.value for layer in model.layers for i, v in enumerate(layer.variables)}
        self.optimizer = optimizer
        self.checkpoint = tf.train.Checkpoint(layers=layer_vars, optimizer=optimizer, epoch=self.epoch,
                                              step=self.step, epoch_sums=self.sums, history=self.history,
                                              fingerprint=stored)
        self.write_dir = directory if is_chief else f"{directory.rstrip('/')}.worker{task_id}.tmp"
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=MAX_CHECKPOINTS_KEPT)

    def progress(self) -> Progress:
        return Progress(epoch=int(self.epoch.numpy()), step=int(self.step.numpy()), sums=self.sums.numpy().copy(),
                        history=json.loads(self.history.numpy().decode()))

    def restore(self, epochs: int) -> str | None:
        """Continue from the latest checkpoint in the directory, if any (every worker reads the
        chief's): the checkpoint's path, or None when there is none. ModelError when it belongs to
        another training, is damaged, or has more epochs than asked."""
        latest = tf.train.latest_checkpoint(self.directory)
        if not latest:
            return None
        fix = f"use another `checkpoint_dir` or delete {self.directory} to start afresh"
        stored = read_checkpoint(latest)
        if stored is None:
            raise ModelError(f"{self.directory} holds a checkpoint that is not from `python cli.py train` or is "
                             f"damaged; {fix}")
        changed = fingerprint_changes(stored["fingerprint"], self.fingerprint)
        if changed:
            raise ModelError(f"{self.directory} holds a checkpoint of a different training ({'; '.join(changed)}); "
                             f"rerun with the same settings to resume it, or {fix}")
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            first = str(err).strip().splitlines()[0][:200]
            raise ModelError(f"cannot restore checkpoint {latest} ({first}); {fix}") from None
        if int(self.epoch.numpy()) > epochs:
            raise ModelError(f"{self.directory} holds a run already trained for {int(self.epoch.numpy())} epochs, "
                             f"more than -e {epochs}; give -e {int(self.epoch.numpy())} or more, or {fix}")
        return latest

    def save_position(self, step: int, sums: np.ndarray) -> str | None:
        """Checkpoint inside an epoch; the path on the chief (None elsewhere)."""
        self.step.assign(step)
        self.sums.assign(sums)
        return self._save()

    def save_epoch(self, history: list[dict]) -> str | None:
        """Checkpoint at the end of an epoch: the next epoch starts at step 0."""
        self.epoch.assign_add(1)
        self.step.assign(0)
        self.sums.assign(np.zeros(3))
        self.history.assign(json.dumps(history))
        return self._save()

    def _save(self) -> str | None:
        path = self.manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))
        self.remove_worker_copy()
        return path if self.is_chief else None

    def remove_worker_copy(self) -> None:
        if not self.is_chief and tf.io.gfile.exists(self.write_dir):
            tf.io.gfile.rmtree(self.write_dir)


def fingerprint_changes(stored: dict, current: dict) -> list[str]:
    """"key stored -> current" for every fingerprint entry that differs (a key the stored
    fingerprint lacks, from an older version, differs too)."""
    return [f"{key} {stored.get(key)!r} -> {current[key]!r}" for key in sorted(current) if stored.get(key) != current[key]]


def read_checkpoint(path: str) -> dict | None:
    """A checkpoint's bookkeeping without building a model: {"epoch" (completed), "step",
    "fingerprint", "history"}; None when it cannot be read as one of ours."""
    try:
        reader = tf.train.load_checkpoint(path)

        def value(name):
            return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")

        return {"epoch": int(value("epoch")), "step": int(value("step")),
                "fingerprint": json.loads(value("fingerprint").decode()),
                "history": json.loads(value("history").decode())}
    except (tf.errors.OpError, ValueError, KeyError):
        return None


def checkpoint_state(checkpoint_dir: str) -> dict | None:
    """What the latest checkpoint in checkpoint_dir says ({"checkpoint", "epoch", "step",
    "fingerprint", "history"}); None when there is none or it cannot be read (`train` then explains)."""
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    state = read_checkpoint(latest) if latest else None
    return {"checkpoint": latest, **state} if state else None
