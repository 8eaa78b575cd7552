"""What a score means and what a model takes in: the decision threshold, the label of a score (in
numpy and in TensorFlow), and the input size read back from a model.

Training's accuracy and collapse counts, `evaluate`, `classify` and the SavedModel's `label` output
all decide through these functions, so a score of exactly 0.5 (what a collapsed model gives) is the
same class everywhere.
"""
from __future__ import annotations

import numpy as np

from pipeline.schema import DEFAULT_IMAGE_SIZE, LABEL_NAMES

__all__ = ["DECISION_THRESHOLD", "POSITIVE_CLASS", "DECISION_RULE", "DEFAULT_IMAGE_SIZE", "predicted_labels",
           "label_name", "predicted_male", "male_probability", "image_size_of"]

# A score above this is "male" (label 1). Strictly greater, as keras.metrics.binary_accuracy decides,
# so `evaluate`'s accuracy equals what Keras would report for the same scores.
DECISION_THRESHOLD = 0.5
POSITIVE_CLASS = LABEL_NAMES[1]
DECISION_RULE = f"predicted {POSITIVE_CLASS} when score > {DECISION_THRESHOLD}, {LABEL_NAMES[0]} otherwise"


def predicted_labels(scores: np.ndarray) -> np.ndarray:
    """0/1 decisions at DECISION_THRESHOLD (1 = male)."""
    return (np.asarray(scores) > DECISION_THRESHOLD).astype(np.int64)


def label_name(score: float) -> str:
    """"female" or "male" for one sigmoid score."""
    return LABEL_NAMES[int(score > DECISION_THRESHOLD)]


def predicted_male(scores):
    """The TensorFlow twin of `predicted_labels`: float32 1.0 where a score is male, else 0.0."""
    import tensorflow as tf

    return tf.cast(tf.cast(scores, tf.float32) > DECISION_THRESHOLD, tf.float32)


def male_probability(model, pixels):
    """The model's float32 [B, 1] probabilities of uint8 [B, S, S, 3] pixels, in a tf.function or a
    replica. An empty batch gives [0, 1] without calling the model: TensorFlow 2.21's CPU
    convolutions (oneDNN) fail on a batch of 0, which the last replica's batch or an empty request
    can be."""
    import tensorflow as tf

    return tf.cond(tf.shape(pixels)[0] > 0, lambda: tf.cast(model(pixels, training=False), tf.float32),
                   lambda: tf.zeros([0, 1], tf.float32))


def image_size_of(model) -> int:
    """The square input size S of a [B, S, S, 3] image model."""
    return int(model.input_shape[1])
