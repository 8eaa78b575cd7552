"""The gender classifier: VGG-Face cut at a named layer, frozen through a named layer, plus a small head.

Defaults reproduce the original: the backbone up to relu4_2 (the original's "layer 30" of VGG-Face,
counting padding and activation layers), frozen through it, then Dropout(0.5) -> Flatten ->
Dense(32, relu) -> Dense(1, sigmoid). Input is the backbone's: uint8 BGR pixels; the mean
subtraction is inside the model. Output: the probability that the face is male (label 1).
"""
from __future__ import annotations

import os
import zipfile

import keras

from model.errors import ModelError

MODEL_NAME = "gender_classifier"
OUTPUT_LAYER = "male_prob"
# The head's layer names (fixed, so checkpoints and saved models match by name).
HEAD_LAYERS = ("head_dropout", "head_flatten", "head_dense", OUTPUT_LAYER)
from model.defaults import DEFAULT_CUT_LAYER, DEFAULT_DENSE_UNITS, DEFAULT_DROPOUT, DEFAULT_FREEZE_THROUGH
# Spellings of "freeze nothing" for freeze_through.
NO_FREEZE = (None, "", "none")


def backbone_layer_names(backbone: keras.Model) -> list[str]:
    """The layers a classifier may be cut at or frozen through: every layer after the input."""
    return [layer.name for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def _check_layer(option: str, name: str, valid: list[str]) -> int:
    if name not in valid:
        raise ModelError(f"unknown {option} {name!r}; valid layer names: {', '.join(valid)}")
    return valid.index(name)


def build_classifier(backbone: keras.Model, cut_layer: str = DEFAULT_CUT_LAYER,
                     freeze_through: str | None = DEFAULT_FREEZE_THROUGH, dense_units: int = DEFAULT_DENSE_UNITS,
                     dropout: float = DEFAULT_DROPOUT, seed: int = 0) -> keras.Model:
    """The classifier "gender_classifier" on `backbone` (its layers are reused, not copied):
    image uint8 BGR -> backbone up to cut_layer -> Dropout -> Flatten -> Dense(relu) -> male_prob.

    Layers up to and including freeze_through are not trainable (None or "none": nothing frozen).
    Built under the active dtype policy, except male_prob, which stays float32.
    """
    valid = backbone_layer_names(backbone)
    cut_index = _check_layer("--cut-layer", cut_layer, valid)
    if freeze_through in NO_FREEZE:
        freeze_index = -1
    else:
        freeze_index = _check_layer("--freeze-through", freeze_through, valid)
        if freeze_index > cut_index:
            raise ModelError(f"--freeze-through {freeze_through} comes after --cut-layer {cut_layer}; "
                             f"freeze a layer at or before the cut (or 'none')")
    if dense_units < 1:
        raise ModelError(f"--dense-units must be at least 1, got {dense_units}")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"--dropout must be in [0, 1), got {dropout}")

    for index, name in enumerate(valid[:cut_index + 1]):
        backbone.get_layer(name).trainable = index > freeze_index

    x = backbone.get_layer(cut_layer).output
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    # float32 whatever the policy: a bfloat16 sigmoid has ~3 significant digits, and the loss
    # and the 0.5 threshold need the probability itself.
    prob = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_LAYER,
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1))(x)
    return keras.Model(backbone.input, prob, name=MODEL_NAME)


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
    from model import vggface  # noqa: F401  (registers MeanSubtract, needed by from_config)

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
    from model import vggface  # noqa: F401  (registers MeanSubtract, needed by safe-mode loading)

    if not os.path.exists(path):
        raise ModelError(f"model file {path} does not exist; train one with `python cli.py train`")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a directory; pass the .keras file written by `python cli.py train` "
                         f"(a *_savedmodel directory is for TF Serving)")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a .keras model file (not a Keras zip archive); "
                         f"pass the .keras file written by `python cli.py train`")
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
                             f"its training diverged; retrain it (e.g. with a lower --learning-rate)")
