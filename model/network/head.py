"""The gender classifier: VGG-Face cut at a named layer, frozen through a named layer, plus a small head.

Two heads (--head; model/defaults.py says why the default is not the original):
- "standardized" (default): cut features -> Flatten -> head_standardize (each feature, a channel at
  a position, minus its mean, over its standard deviation; statistics of the training images, set
  once by `set_feature_statistics` at the start of training and saved as the layer's weights) ->
  Dropout -> Dense(relu) -> male_prob.
- "original": the seed's head: Dropout(0.5) -> Flatten -> Dense(32) with Keras' default (linear)
  activation -> Dense(1, sigmoid), on the raw features.

Defaults otherwise follow the original: the backbone up to relu4_2 (the original's "layer 30" of
VGG-Face, counting padding and activation layers), frozen through it. Input is the backbone's: uint8
BGR pixels; the mean subtraction is inside the model. Output: the probability that the face is male
(label 1). Every layer is a built-in Keras layer: a saved model loads with plain Keras.
"""
from __future__ import annotations

import os
import zipfile

import keras
import numpy as np

from model.defaults import (DEFAULT_CUT_LAYER, DEFAULT_DENSE_UNITS, DEFAULT_DROPOUT, DEFAULT_FREEZE_THROUGH,
                            DEFAULT_HEAD, HEAD_ORIGINAL, HEAD_STANDARDIZED, HEADS)
from model.contract import DEFAULT_IMAGE_SIZE, image_size_of
from model.errors import ModelError
from model.network.vggface import POOL_NAMES

MODEL_NAME = "gender_classifier"
OUTPUT_LAYER = "male_prob"
STANDARDIZE_LAYER = "head_standardize"
FLATTEN_LAYER = "head_flatten"
DROPOUT_LAYER = "head_dropout"
DENSE_LAYER = "head_dense"
# The head's layer names (fixed, so checkpoints and saved models match by name).
# The last layer whose output does not depend on the trained input size (fc6 was trained on its 7x7 map).
LAST_POOL = POOL_NAMES[-1]
HEAD_LAYERS = (FLATTEN_LAYER, STANDARDIZE_LAYER, DROPOUT_LAYER, DENSE_LAYER, OUTPUT_LAYER)
# Spellings of "freeze nothing" for freeze_through.
NO_FREEZE = (None, "", "none")
# A feature whose variance is below this fraction of the features' mean variance is divided by the
# square root of that floor instead: a feature (nearly) dead on the sample but alive later must not
# be blown up. Relative, so the standardized features do not depend on the backbone's scale.
VARIANCE_FLOOR = 1e-2


def backbone_layer_names(backbone: keras.Model) -> list[str]:
    """The layers a classifier may be cut at or frozen through: every layer after the input."""
    return [layer.name for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def _check_layer(option: str, name: str, valid: list[str]) -> int:
    if name not in valid:
        raise ModelError(f"unknown `{option}` {name!r}; valid layer names: {', '.join(valid)}", field=option)
    return valid.index(name)


# Over 60 lines on purpose: the checks of the settings, then the layers in the order data flows.
def build_classifier(backbone: keras.Model, cut_layer: str = DEFAULT_CUT_LAYER,
                     freeze_through: str | None = DEFAULT_FREEZE_THROUGH, dense_units: int = DEFAULT_DENSE_UNITS,
                     dropout: float = DEFAULT_DROPOUT, seed: int = 0, head: str = DEFAULT_HEAD) -> keras.Model:
    """The classifier "gender_classifier" on `backbone` (its layers are reused, not copied):
    image uint8 BGR -> backbone up to cut_layer -> the head (see the module docstring) -> male_prob.

    Layers up to and including freeze_through are not trainable (None or "none": nothing frozen).
    Built under the active dtype policy, except male_prob, which stays float32. A standardized head
    starts as the identity (mean 0, variance 1) until `set_feature_statistics`.
    """
    valid = backbone_layer_names(backbone)
    cut_index = _check_layer("cut_layer", cut_layer, valid)
    size = image_size_of(backbone)
    if size != DEFAULT_IMAGE_SIZE and cut_index > valid.index(LAST_POOL):
        # fc6's weights were trained on pool5's 7x7 map: at another size it cannot carry them.
        raise ModelError(f"`cut_layer` {cut_layer} is above {LAST_POOL}, whose VGG-Face weights need "
                         f"{DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} images, but these are {size}x{size}: "
                         f"cut at {LAST_POOL} or below, or preprocess at `image_size` {DEFAULT_IMAGE_SIZE}",
                         field="cut_layer")
    if freeze_through in NO_FREEZE:
        freeze_index = -1
    else:
        freeze_index = _check_layer("freeze_through", freeze_through, valid)
        if freeze_index > cut_index:
            raise ModelError(f"`freeze_through` {freeze_through} comes after `cut_layer` {cut_layer}; "
                             f"freeze a layer at or before the cut (or 'none')")
    if head not in HEADS:
        raise ModelError(f"unknown `head` {head!r}; choose one of {', '.join(HEADS)}", field="head")
    if dense_units < 1:
        raise ModelError(f"`dense_units` must be at least 1, got {dense_units}", field="dense_units")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"`dropout` must be in [0, 1), got {dropout}", field="dropout")

    for index, name in enumerate(valid[:cut_index + 1]):
        backbone.get_layer(name).trainable = index > freeze_index

    x = backbone.get_layer(cut_layer).output
    if head == HEAD_STANDARDIZED:
        # Per feature (each channel at each position), not per channel: a channel's mean differs
        # between the face's centre and the background, and what is left uncentred slows the dense
        # layer's first steps. Measured (slim backbone at the real scale, 200/60 shape-cue faces,
        # Adam 1e-4, batch 32, 10 seeds): 87.0 % after 3 epochs against 83.8 % per channel, 83.2 %
        # against 78.0 % after 2; it is also what the logistic-regression reference's StandardScaler
        # does. A frozen BatchNormalization is exactly a fixed standardization: built in (a saved
        # model loads without this project), its statistics are variables (checkpointed, saved,
        # read at every call), and it computes in float32 under mixed precision.
        standardize = keras.layers.BatchNormalization(center=False, scale=False, epsilon=1e-12,
                                                      name=STANDARDIZE_LAYER)
        standardize.trainable = False
        x = standardize(keras.layers.Flatten(name=FLATTEN_LAYER)(x))
        x = keras.layers.Dropout(dropout, seed=seed, name=DROPOUT_LAYER)(x)
    else:   # the seed's order
        x = keras.layers.Dropout(dropout, seed=seed, name=DROPOUT_LAYER)(x)
        x = keras.layers.Flatten(name=FLATTEN_LAYER)(x)
    x = keras.layers.Dense(dense_units, activation="relu" if head == HEAD_STANDARDIZED else None,
                           name=DENSE_LAYER, kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    # float32 whatever the policy: a bfloat16 sigmoid has ~3 significant digits, and the loss
    # and the 0.5 threshold need the probability itself.
    prob = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_LAYER,
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1))(x)
    return keras.Model(backbone.input, prob, name=MODEL_NAME)


def head_of(model: keras.Model) -> str:
    """Which head a classifier has: HEAD_STANDARDIZED or HEAD_ORIGINAL."""
    return HEAD_STANDARDIZED if STANDARDIZE_LAYER in {layer.name for layer in model.layers} else HEAD_ORIGINAL


def set_feature_statistics(model: keras.Model, mean: np.ndarray, variance: np.ndarray) -> None:
    """Fix the standardized head's per-feature statistics (float64 arrays, one value per element of
    the cut layer's output for one image, in Flatten's order).

    Variances below VARIANCE_FLOOR x their mean are raised to it. Assigned outside any replica
    context: under a tf.distribute strategy every replica's copy gets the same values."""
    layer = model.get_layer(STANDARDIZE_LAYER)
    layer.moving_mean.assign(np.asarray(mean, np.float32))
    layer.moving_variance.assign(floored_variance(variance).astype(np.float32))


def floored_variance(variance: np.ndarray) -> np.ndarray:
    """The variances the standardized head divides by: each raised to VARIANCE_FLOOR x their mean."""
    variance = np.asarray(variance, np.float64)
    floor = VARIANCE_FLOOR * float(variance.mean()) if variance.size and variance.mean() > 0 else 1.0
    return np.maximum(variance, floor)


def _float32_policies(config):
    """The config with every mixed dtype policy replaced by float32 (variables are float32 already)."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and \
                str(config.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_policies(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_policies(value) for value in config]
    return config


def as_float32(model: keras.Model) -> keras.Model:
    """A float32 copy of a (possibly mixed-precision, possibly distributed) classifier, same weights.

    What is saved and served: it computes in float32 on any device (a mixed_float16 model would be
    slow on a CPU), and its variables are plain ones, outside any tf.distribute strategy.
    """
    copy = keras.Model.from_config(_float32_policies(model.get_config()))
    for layer in copy.layers:
        weights = model.get_layer(layer.name).get_weights()
        if weights:
            layer.set_weights(weights)
    return copy


def is_classifier(model: keras.Model) -> bool:
    """True for a model whose single output is the one-unit male_prob layer."""
    if len(model.outputs) != 1:
        return False
    try:
        layer = model.get_layer(OUTPUT_LAYER)
    except ValueError:
        return False
    return layer.output is model.outputs[0] and tuple(model.outputs[0].shape)[-1:] == (1,)


def load_classifier(path: str) -> keras.Model:
    """Load a trained classifier (.keras, safe mode); ModelError when missing, corrupt or not a classifier."""
    from model.network import vggface  # noqa: F401  (registers the legacy MeanSubtract of older model files)

    if not os.path.exists(path):
        raise ModelError(f"model file {path} does not exist; train one with `python cli.py train`")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a directory; pass the .keras file written by `python cli.py train` "
                         f"(a *_savedmodel directory is for TF Serving)")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a .keras model file (not a Keras zip archive); "
                         f"pass the .keras file written by `python cli.py train`")
    from model.network.archive import check_keras_archive

    check_keras_archive(path, "pass the .keras file written by `python cli.py train`")
    try:
        loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # keras raises many types for a damaged archive; all mean "corrupt"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load {path}: {first[:300]}; the file is corrupt or was not written "
                         f"by this tool (retrain with `python cli.py train`)") from None
    if not is_classifier(loaded):
        if loaded.name == "vggface" or "prob" in [layer.name for layer in loaded.layers]:
            raise ModelError(f"{path} is a VGG-Face backbone, not a gender classifier; "
                             f"train one with `python cli.py train`")
        shapes = ", ".join(str(tuple(o.shape)) for o in loaded.outputs)
        raise ModelError(f"{path} is not a gender classifier (outputs {shapes}, no one-unit "
                         f"'{OUTPUT_LAYER}' output); train one with `python cli.py train`")
    check_finite_weights(loaded, path)
    return loaded


def check_finite_weights(model: keras.Model, path: str) -> None:
    """ModelError when a weight is NaN or infinite (e.g. a model saved after training diverged):
    every score it gives would be meaningless."""
    import numpy as np

    for variable in model.weights:
        values = np.asarray(variable.numpy())
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            raise ModelError(f"{path} holds {bad} non-finite weight(s) (NaN or infinity) in {variable.path}: "
                             f"its training diverged; retrain it (e.g. with a lower `learning_rate`)")
