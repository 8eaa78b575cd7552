"""What a score means and what a model takes in: the decision threshold, the label of a score (in
numpy and in TensorFlow), and the input size read back from a model.

Training's accuracy and collapse counts, `evaluate`, `classify` and the SavedModel's `label` output
all decide through these functions, so a score of exactly 0.5 (what a collapsed model gives) is the
same class everywhere.
"""
from __future__ import annotations

import numpy as np

from pipeline.schema import DEFAULT_IMAGE_SIZE, LABEL_NAMES

__all__ = ["DECISION_THRESHOLD", "POSITIVE_CLASS", "DECISION_RULE", "DEFAULT_IMAGE_SIZE", "THRESHOLD_SOURCES",
           "decision_rule", "checked_threshold", "predicted_labels", "label_name", "predicted_male",
           "male_probability", "image_size_of"]

# A score above this is "male" (label 1). Strictly greater, as keras.metrics.binary_accuracy decides,
# so `evaluate`'s accuracy equals what Keras would report for the same scores.
DECISION_THRESHOLD = 0.5
POSITIVE_CLASS = LABEL_NAMES[1]
# Where the threshold a command decides at came from: DECISION_THRESHOLD, a `threshold` the user
# gave, or the one `evaluate` stored in the model file (model/network/calibrated.py).
THRESHOLD_SOURCES = ("default", "flag", "model")


def decision_rule(threshold: float = DECISION_THRESHOLD) -> str:
    """The rule in words, for reports and model cards."""
    return f"predicted {POSITIVE_CLASS} when score > {threshold:.6g}, {LABEL_NAMES[0]} otherwise"


DECISION_RULE = decision_rule()


def checked_threshold(value: float) -> float:
    """`value` as a float in [0, 1]; InputError (field "threshold") otherwise."""
    from pipeline.errors import InputError

    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise InputError(f"`threshold` must be a number in [0, 1], got {value!r}", field="threshold") from None
    if not 0.0 <= threshold <= 1.0:      # (NaN fails this too)
        raise InputError(f"`threshold` must be in [0, 1], got {value!r}", field="threshold")
    return threshold


# The threshold is taken as the nearest float32, the value the SavedModel's `label` compares the
# model's float32 scores with: a threshold like 0.3 is not a float32, and comparing a float32 score
# with the float64 0.3 could decide otherwise.
def predicted_labels(scores: np.ndarray, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """0/1 decisions at `threshold` (1 = male)."""
    return (np.asarray(scores) > np.float32(threshold)).astype(np.int64)


def label_name(score: float, threshold: float = DECISION_THRESHOLD) -> str:
    """"female" or "male" for one sigmoid score."""
    return LABEL_NAMES[int(score > float(np.float32(threshold)))]


def predicted_male(scores, threshold: float = DECISION_THRESHOLD):
    """The TensorFlow twin of `predicted_labels`: float32 1.0 where a score is male, else 0.0.
    The threshold is compared in float32, as the scores are."""
    import tensorflow as tf

    return tf.cast(tf.cast(scores, tf.float32) > tf.constant(threshold, tf.float32), tf.float32)


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
