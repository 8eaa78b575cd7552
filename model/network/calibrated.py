"""A classifier's temperature and decision threshold, kept in its .keras file.

Temperature: the head's last layer, `male_prob` = Dense(1, sigmoid), becomes three built-in layers:
`male_logit` (the same Dense without its sigmoid, same weights) -> `male_temperature` =
Rescaling(1 / T) -> `male_prob` = Activation(sigmoid). The output keeps its name, so the model is
still a classifier (head.is_classifier), a plain `keras.models.load_model` gives the calibrated
probabilities, and so do `classify` and the SavedModel, which only call the model. Fitting again
replaces the Rescaling: the temperature always applies to the trained logit.

Threshold: a JSON member DECISION_MEMBER of the .keras archive, beside Keras' own config.json and
metadata.json. Why not a layer: a threshold is a rule applied to the output, not part of the
function from pixels to probability, and no built-in Keras layer is an exact identity that holds a
free number (layers with a spare parameter, like Dropout's rate, would act on it in training, and a
reader would take it for what it names). Keras' loader reads only its own members, so a plain load
still works (and decides nothing, as a plain Keras model never does); `load_decision` reads it and
`export_savedmodel` bakes it into the `label` output. A model re-saved by plain Keras loses it and
decides at DECISION_THRESHOLD again.
"""
from __future__ import annotations

import json
import os
import zipfile

import keras

from model.contract import DECISION_THRESHOLD, checked_threshold
from model.errors import ModelError
from model.network.head import OUTPUT_LAYER, is_classifier

LOGIT_LAYER = "male_logit"
TEMPERATURE_LAYER = "male_temperature"
DECISION_MEMBER = "gender_classifier_decision.json"
SAVEDMODEL_SUFFIX = "_savedmodel"      # train's name for the export beside the model (training.config)


def temperature_of(model: keras.Model) -> float:
    """The temperature the model divides its logit by; 1.0 when it has none."""
    try:
        layer = model.get_layer(TEMPERATURE_LAYER)
    except ValueError:
        return 1.0
    return 1.0 / float(layer.get_config()["scale"])


def logit_model(model: keras.Model) -> keras.Model:
    """A model of the same input giving the trained logit (before any temperature), float32 [B, 1]."""
    names = {layer.name for layer in model.layers}
    if LOGIT_LAYER in names:
        return keras.Model(model.input, model.get_layer(LOGIT_LAYER).output, name="male_logit_model")
    dense = model.get_layer(OUTPUT_LAYER)
    logit = keras.layers.Dense(1, activation=None, dtype="float32", name=LOGIT_LAYER)
    z = logit(dense.input)
    logit.set_weights(dense.get_weights())
    return keras.Model(model.input, z, name="male_logit_model")


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """The classifier with its logit divided by `temperature` before the sigmoid (same weights)."""
    if not (temperature > 0.0 and temperature < float("inf")):
        raise ModelError(f"a temperature must be positive and finite, got {temperature}", field="temperature")
    z = logit_model(model).output
    # float32 like the Dense it replaces: the probability and the threshold need float32 precision.
    z = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name=TEMPERATURE_LAYER)(z)
    prob = keras.layers.Activation("sigmoid", dtype="float32", name=OUTPUT_LAYER)(z)
    return keras.Model(model.input, prob, name=model.name)


def load_decision(path: str) -> dict | None:
    """The decision stored in a .keras file by `save_classifier` (its "threshold" checked), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            if DECISION_MEMBER not in archive.namelist():
                return None
            body = json.loads(archive.read(DECISION_MEMBER).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read the decision stored in {path}: {err}") from None
    if not isinstance(body, dict) or "threshold" not in body:
        raise ModelError(f"{path}: its {DECISION_MEMBER} has no threshold; rewrite it with "
                         f"`python cli.py evaluate` and `store_threshold`", field="store_threshold")
    body["threshold"] = checked_threshold(body["threshold"])
    return body


def stored_threshold(path: str) -> float | None:
    """The threshold stored in a .keras file, or None when it has none."""
    decision = load_decision(path)
    return None if decision is None else decision["threshold"]


def savedmodel_beside(path: str) -> str:
    """Where `train` exports the SavedModel of the model at `path`."""
    return os.path.splitext(path)[0] + SAVEDMODEL_SUFFIX


def save_classifier(model: keras.Model, path: str, decision: dict | None = None) -> str | None:
    """Write `model` to `path` (replaced whole, never half-written) with `decision` (a dict with a
    "threshold"; None: no stored threshold), and re-export the SavedModel beside it when there is
    one, so both decide alike; returns the SavedModel's path if re-exported."""
    from model.network.serving import export_savedmodel
    from pipeline.files import replacing

    if not is_classifier(model):
        raise ModelError(f"{model.name!r} is not a gender classifier; not saved")
    threshold = DECISION_THRESHOLD if decision is None else checked_threshold(decision["threshold"])
    with replacing(path, suffix=".keras") as partial:
        model.save(partial)
        if decision is not None:
            with zipfile.ZipFile(partial, "a") as archive:
                archive.writestr(DECISION_MEMBER, json.dumps(decision, indent=2) + "\n")
    savedmodel = savedmodel_beside(path)
    if os.path.isdir(savedmodel):
        export_savedmodel(model, savedmodel, threshold=threshold)
        return savedmodel
    return None
