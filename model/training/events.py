"""The progress events of training, as typed objects: the library emits them, the CLI renders them
(cli.py, in one place). A caller that wants none passes no callback."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from model.defaults import HEAD_ORIGINAL, ORIGINAL_HEAD_RMS_LIMIT


@dataclass(frozen=True)
class Setup:
    """What the run is about to do, before the first step."""

    strategy: str
    replicas: int
    workers: int
    task_type: str | None
    task_id: int
    is_chief: bool
    devices: tuple[str, ...]          # the accelerators used; empty on a CPU-only machine
    precision: str
    loss_scaling: bool
    compute_dtype: str                # of the cut layer (the policy's), e.g. bfloat16
    output_dtype: str                 # the probability's: float32 in every policy
    jit: bool
    augment: bool
    augment_on: str                   # "host" or "device" (meaningful when augment)
    steps_per_call: int | None        # None: chosen automatically from the measured step time
    per_replica_batch: int
    global_batch: int
    valid_batch: int
    train_count: int
    valid_count: int
    image_size: int
    train_splits: tuple[str, ...]
    valid_splits: tuple[str, ...]
    steps_per_epoch: int
    steps_exact: bool                 # False with several workers: their shares are estimated
    epochs: int
    memory: str
    memory_bytes: int                 # RAM the high memory mode caches (0 in low mode)
    trainable_params: int
    frozen_params: int
    learning_rate: float
    checkpoint_dir: str
    head: str
    head_init: str                    # "probe" or "random" (always "random" with the original head)
    cut_layer: str
    feature_rms: float
    feature_max: float | None         # None: the RMS comes from a checkpoint's statistics
    stats_images: int | None

    @property
    def original_head_unstable(self) -> bool:
        """The original head on features this large trains unstably (model/defaults.py)."""
        return self.head == HEAD_ORIGINAL and self.feature_rms > ORIGINAL_HEAD_RMS_LIMIT


@dataclass(frozen=True)
class LinearStartFitted:
    """--head-init probe: the logistic regression the head starts from (model/network/linear_start.py)."""

    images: int                       # training images it was fitted on (features kept in memory)
    features: int                     # features per image (the cut layer's, flattened)
    strength: float                   # the regularization chosen by cross-validation on those images
    cv_accuracy: float                # held-out accuracy at that strength (5-fold, training images only)
    train_accuracy: float             # the final fit on all of them
    seconds: float                    # the start's cost: the fit (the features come with the statistics)


@dataclass(frozen=True)
class StartValidated:
    """Validation before the first step (epoch 0): what the start gives."""

    start: str                        # "linear" (--head-init probe) or "random"
    val_loss: float
    val_accuracy: float
    val_count: int
    seconds: float


@dataclass(frozen=True)
class Resumed:
    checkpoint: str
    epoch: int                        # the epoch it continues (1-based)
    step: int                         # steps of that epoch already done
    finished: bool                    # every epoch was already trained: only the outputs are rewritten


@dataclass(frozen=True)
class StepsDone:
    """One call of the training step (one or many steps): the running figures of the epoch."""

    epoch: int
    epochs: int
    step: int                         # steps of the epoch done so far
    steps_per_epoch: int
    steps: int                        # steps in this call
    examples: int                     # examples in this call (a replica out of data adds none)
    loss: float                       # mean loss over this call's examples
    accuracy: float                   # running accuracy of the epoch
    images_per_s: float


@dataclass(frozen=True)
class CheckpointSaved:
    path: str | None                  # None on a non-chief worker (its copy is temporary)
    epoch: int
    step: int


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    val_count: int
    images_per_s: float
    seconds: float
    checkpoint: str | None
    global_step: int


@dataclass(frozen=True)
class Collapse:
    """The validation results say the model answers one class for everyone."""

    epoch: int
    reason: str
    head: str


@dataclass(frozen=True)
class Saved:
    output: str
    savedmodel: str
    history_csv: str
    log_dir: str
    checkpoint_dir: str
    weights_digest: str


@dataclass(frozen=True)
class FoldStart:
    """train --folds: fold `fold` starts (its training events follow)."""

    fold: int
    folds: int
    output: str
    valid_split: str


@dataclass(frozen=True)
class FoldSkipped:
    """train --folds: fold `fold` was already trained with these settings; its model is kept."""

    fold: int
    folds: int
    output: str
    checkpoint_dir: str
    epochs: int
    val_accuracy: float | None


TrainEvent = Union[Setup, LinearStartFitted, StartValidated, Resumed, StepsDone, CheckpointSaved, EpochEnd, Collapse, Saved, FoldStart, FoldSkipped]
Progress = Callable[[TrainEvent], None]
