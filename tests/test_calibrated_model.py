"""A temperature and a threshold stored in the model file (model/network/calibrated.py) survive a plain
Keras load and the SavedModel: scores and labels change accordingly."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from model.contract import predicted_labels


def _pixels(model, n=12):
    size = int(model.input_shape[1])
    return np.random.default_rng(3).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_temperature_and_threshold_survive_plain_keras_and_the_savedmodel(model, tmp_path):
    import keras

    from model.network.calibrated import (load_decision, logit_model, save_classifier, stored_threshold,
                                          temperature_of, with_temperature)
    from model.network.head import is_classifier, load_classifier
    from model.network.serving import LABEL_OUTPUT, PROBABILITY_OUTPUT, SERVING_DEFAULT

    pixels = _pixels(model)
    logits = logit_model(model).predict(pixels, verbose=0).reshape(-1)
    raw = model.predict(pixels, verbose=0).reshape(-1)
    np.testing.assert_allclose(raw, tf.sigmoid(logits).numpy(), atol=1e-6)

    calibrated = with_temperature(model, 2.5)
    assert is_classifier(calibrated) and temperature_of(calibrated) == pytest.approx(2.5)
    expected = tf.sigmoid(logits * np.float32(1 / 2.5)).numpy()
    threshold = float(np.median(expected))        # splits these faces in two, unlike 0.5
    path = str(tmp_path / "calibrated.keras")
    os.makedirs(str(tmp_path / "calibrated_savedmodel"))   # as train leaves it: re-exported beside
    assert save_classifier(calibrated, path, {"threshold": threshold, "source": "test"}) is not None

    plain = keras.models.load_model(path)          # no project code: safe mode, built-in layers only
    scores = plain.predict(pixels, verbose=0).reshape(-1)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert not np.allclose(scores, raw, rtol=0.1, atol=0.0)
    assert temperature_of(load_classifier(path)) == pytest.approx(2.5)
    assert stored_threshold(path) == pytest.approx(threshold) and load_decision(path)["source"] == "test"

    # Fitting again replaces the temperature (it applies to the trained logit, not on top).
    again = with_temperature(plain, 1.0)
    np.testing.assert_allclose(again.predict(pixels, verbose=0).reshape(-1), raw, atol=1e-6)

    served = tf.saved_model.load(str(tmp_path / "calibrated_savedmodel")).signatures[SERVING_DEFAULT]
    out = served(image=tf.constant(pixels))
    np.testing.assert_allclose(out[PROBABILITY_OUTPUT].numpy(), expected, atol=1e-6)
    labels = [s.decode() for s in out[LABEL_OUTPUT].numpy()]
    want = ["male" if k else "female" for k in predicted_labels(out[PROBABILITY_OUTPUT].numpy(), threshold)]
    assert labels == want
    assert labels != ["male" if k else "female" for k in predicted_labels(out[PROBABILITY_OUTPUT].numpy())]


def test_a_model_without_a_stored_threshold_has_none(classifier_path):
    from model.network.calibrated import stored_threshold, temperature_of
    from model.network.head import load_classifier

    assert stored_threshold(classifier_path) is None
    assert temperature_of(load_classifier(classifier_path)) == 1.0
