"""Test-time augmentation (TTA): the one place that says how a batch of faces becomes scores when
more than one view of each face is scored. `evaluate`, `classify` and the SavedModel's
`serve_images_flip` signature all go through `averaged`, so they agree to float rounding.

Modes (`TTA_MODES`):
- "none": the face as it is (one forward pass, the scores training's validation gives).
- "flip": the face and its horizontal mirror image, scored in ONE forward pass over the batch
  concatenated with its mirrored copy (2B images), the two halves averaged. Levi & Hassner (2015)
  average the predictions of a face's views ("over-sampling": crops and their mirrors) and report
  86.8 % gender accuracy on Adience against 85.9 % for the centre crop alone.

Probabilities, not logits, are averaged: that is what Levi & Hassner average (their network's
softmax outputs), the score stays a probability of male read against the same
`DECISION_THRESHOLD`, and the classifier's only output is the sigmoid (its logit would have to be
recovered as log(p / (1 - p)), which float32 saturates at confident scores).

Not offered: Levi & Hassner's 10-crop over-sampling (the four corners and the centre of a 256x256
face, 227x227 each, and their mirrors). It needs a face larger than the network's input, and the
records hold the faces already resized to the input (224x224): crops of them would have to be
scaled back up to 224, showing the network a zoomed face at a scale it was not shown the
original at. That is a different augmentation, not the paper's over-sampling, so it is left out.
"""
from __future__ import annotations

from typing import Callable

from pipeline.errors import DataError

TTA_NONE = "none"
TTA_FLIP = "flip"
TTA_MODES = (TTA_NONE, TTA_FLIP)
DEFAULT_TTA = TTA_NONE
# What each mode means, in the words report.json and the model card use.
TTA_DESCRIPTIONS = {
    TTA_NONE: "none: each face scored once, as it is",
    TTA_FLIP: "flip: the mean of the male probabilities of each face and of its horizontal mirror image",
}


def check_tta(mode: str) -> str:
    """`mode` if it is one of TTA_MODES, else a DataError naming the choices."""
    if mode not in TTA_MODES:
        raise DataError(f"`tta` must be one of {', '.join(TTA_MODES)}, got {mode!r}", field="tta")
    return mode


def mirrored(pixels):
    """The horizontal mirror images of a [B, H, W, C] batch (the width axis reversed)."""
    import tensorflow as tf

    return tf.reverse(pixels, axis=[2])


def averaged(probability: Callable, pixels, mode: str):
    """The float32 male probabilities of a [B, H, W, C] batch under TTA `mode`, in any shape
    `probability` gives ([B] or [B, 1]). `probability(x)` is the model's forward pass; with "flip"
    it is called once, on the 2B images [pixels; mirrored(pixels)], and the halves are averaged."""
    import tensorflow as tf

    check_tta(mode)
    if mode == TTA_NONE:
        return tf.cast(probability(pixels), tf.float32)
    n = tf.shape(pixels)[0]
    both = tf.cast(probability(tf.concat([pixels, mirrored(pixels)], axis=0)), tf.float32)
    return (both[:n] + both[n:]) / 2.0
