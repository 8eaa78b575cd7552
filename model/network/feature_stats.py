"""The cut layer's feature statistics: what the standardized head is fixed with, and what `train`
reports at set-up (the features' RMS tells at once whether a head on raw features can train).

Computed once, at the start of a fresh run, from the first training images in file order (no
shuffling, no augmentation): every worker of a multi-worker run reads the same images and computes
the same numbers, and a resumed run restores them from the checkpoint instead.

With `keep_features` the pass also keeps the images' features (float32) and labels: the linear start
(linear_start.py) is fitted on them. Memory is bounded by FEATURE_MEMORY_BYTES: at the default cut,
relu4_2 of the full-width network at 224x224 (401,408 features, 1.6 MB an image), all 512 images fit
(0.8 GB); for a larger layer only the first FEATURE_MEMORY_BYTES / (4 x features) images are kept
(e.g. 83 at conv1_2, 12.8 MB an image) — the statistics still use every image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

STATS_BATCH = 32
FEATURE_MEMORY_BYTES = 1 << 30     # the kept features' bound (float32): 1 GiB


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and variance over the images, and the overall magnitude."""

    layer: str
    mean: np.ndarray          # float64 [features]: one per element of the layer's output, flattened
    variance: np.ndarray      # float64 [features] (population variance)
    rms: float                # sqrt of the mean square of every feature value
    max: float
    images: int
    features: np.ndarray | None = None    # float32 [kept images, features] (keep_features), else None
    labels: np.ndarray | None = None      # their 0/1 labels


def images_to_keep(max_images: int, feature_count: int) -> int:
    """How many images' features fit in FEATURE_MEMORY_BYTES (at least 1, at most max_images)."""
    return max(1, min(max_images, FEATURE_MEMORY_BYTES // (4 * max(1, feature_count))))


def cut_feature_statistics(model: keras.Model, layer: str, records_dir: str, splits: Sequence[str],
                           max_images: int, image_size: int | None = None, keep_features: bool = False) -> FeatureStats:
    """Statistics of `layer`'s output over the first `max_images` images of the splits (and, with
    keep_features, the features and labels of the first images_to_keep of them)."""
    from pipeline.reader import make_dataset

    features = keras.Model(model.input, model.get_layer(layer).output)
    batches = -(-max_images // STATS_BATCH)
    dataset = make_dataset(records_dir, list(splits), STATS_BATCH, image_size=image_size).take(batches)

    def sums(output):   # eagerly: a handful of batches, once per run (a tf.function would retrace per run)
        x = tf.cast(output, tf.float64)
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        return tf.reduce_sum(x, 0), tf.reduce_sum(tf.square(x), 0), tf.reduce_max(x), tf.shape(x)[0]

    total = square = None
    peak, values, images = -np.inf, 0, 0
    per_image = int(np.prod(features.output.shape[1:]))
    keep = images_to_keep(max_images, per_image) if keep_features else 0
    kept = np.zeros((keep, per_image), np.float32)
    kept_labels = np.zeros(keep, np.float32)
    for batch, labels in dataset:
        batch = batch[: max_images - images]
        output = features(batch, training=False)
        if images < keep:
            rows = min(keep - images, int(batch.shape[0]))
            kept[images: images + rows] = tf.cast(output[:rows], tf.float32).numpy().reshape(rows, -1)
            kept_labels[images: images + rows] = labels.numpy()[:rows]
        s, s2, m, n = (t.numpy() for t in sums(output))
        total, square = (s, s2) if total is None else (total + s, square + s2)
        peak, values, images = max(peak, float(m)), values + int(n), images + int(batch.shape[0])
        if images >= max_images:
            break
    mean = total / values
    variance = np.maximum(square / values - mean ** 2, 0.0)
    return FeatureStats(layer=layer, mean=mean, variance=variance, rms=float(np.sqrt(square.sum() / (values * len(mean)))),
                        max=peak, images=images, features=kept[: min(keep, images)] if keep_features else None,
                        labels=kept_labels[: min(keep, images)] if keep_features else None)
