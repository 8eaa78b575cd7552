"""The cut layer's feature statistics: what the standardized head is fixed with, and what `train`
reports at set-up (the features' RMS tells at once whether a head on raw features can train).

Computed once, at the start of a fresh run, from the first training images in file order (no
shuffling, no augmentation): every worker of a multi-worker run reads the same images and computes
the same numbers, and a resumed run restores them from the checkpoint instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

STATS_BATCH = 32


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and variance over the images, and the overall magnitude."""

    layer: str
    mean: np.ndarray          # float64 [features]: one per element of the layer's output, flattened
    variance: np.ndarray      # float64 [features] (population variance)
    rms: float                # sqrt of the mean square of every feature value
    max: float
    images: int


def cut_feature_statistics(model: keras.Model, layer: str, records_dir: str, splits: Sequence[str],
                           max_images: int, image_size: int | None = None) -> FeatureStats:
    """Statistics of `layer`'s output over the first `max_images` images of the splits."""
    from pipeline.reader import make_dataset

    features = keras.Model(model.input, model.get_layer(layer).output)
    batches = -(-max_images // STATS_BATCH)
    dataset = make_dataset(records_dir, list(splits), STATS_BATCH, image_size=image_size).take(batches)

    def sums(images):   # eagerly: a handful of batches, once per run (a tf.function would retrace per run)
        x = tf.cast(features(images, training=False), tf.float64)
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        return tf.reduce_sum(x, 0), tf.reduce_sum(tf.square(x), 0), tf.reduce_max(x), tf.shape(x)[0]

    total = square = None
    peak, values, images = -np.inf, 0, 0
    for batch, _ in dataset:
        batch = batch[: max_images - images]
        s, s2, m, n = (t.numpy() for t in sums(batch))
        total, square = (s, s2) if total is None else (total + s, square + s2)
        peak, values, images = max(peak, float(m)), values + int(n), images + int(batch.shape[0])
        if images >= max_images:
            break
    mean = total / values
    variance = np.maximum(square / values - mean ** 2, 0.0)
    return FeatureStats(layer=layer, mean=mean, variance=variance, rms=float(np.sqrt(square.sum() / (values * len(mean)))),
                        max=peak, images=images)
