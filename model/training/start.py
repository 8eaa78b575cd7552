"""How a fresh run's head starts, and the epoch-0 row that shows what the start gives.

--head-init probe (with the standardized head): the linear start of model/network/linear_start.py,
fitted on the features the statistics pass kept. Every worker of a multi-worker run reads the same
first training images in file order and runs the same float64 numpy fit, so every worker writes the
same start; a resumed run restores it from its checkpoint and fits nothing.
"""
from __future__ import annotations

import keras

from model.defaults import HEAD_INIT_PROBE, HEAD_INIT_RANDOM, HEAD_STANDARDIZED
from model.network.feature_stats import FeatureStats
from model.network.head import DENSE_LAYER, OUTPUT_LAYER, floored_variance
from model.network.linear_start import LinearStart, fit_linear_start, set_linear_start
from model.training import events
from model.training.config import TrainConfig


def effective_head_init(config: TrainConfig) -> str:
    """The start the run uses: the original head always starts random (it is the seed's head)."""
    return config.head_init if config.head == HEAD_STANDARDIZED else HEAD_INIT_RANDOM


def uses_linear_start(config: TrainConfig) -> bool:
    return effective_head_init(config) == HEAD_INIT_PROBE


def fit_start(stats: FeatureStats) -> LinearStart:
    """The probe on the statistics pass's kept features, in the head's (floored) standardization."""
    return fit_linear_start(stats.features, stats.labels, stats.mean, floored_variance(stats.variance))


def apply_linear_start(model: keras.Model, stats: FeatureStats) -> events.LinearStartFitted:
    """Fit the probe on the statistics pass's kept features and write it into the head."""
    start = fit_start(stats)
    set_linear_start(model, start, DENSE_LAYER, OUTPUT_LAYER)
    return events.LinearStartFitted(images=start.images, features=int(stats.features.shape[1]),
                                    strength=start.strength, cv_accuracy=start.cv_accuracy,
                                    train_accuracy=start.train_accuracy, seconds=start.seconds)


def start_row(metrics: dict, seconds: float) -> dict:
    """The history's epoch-0 row: validation before any step (no training figures: empty in the CSV)."""
    return {"epoch": 0, "loss": None, "accuracy": None, "val_loss": metrics["val_loss"],
            "val_accuracy": metrics["val_accuracy"], "images_per_s": None, "seconds": seconds,
            "train_examples": 0, "val_count": metrics["val_count"]}
