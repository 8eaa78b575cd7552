"""The classifier: the standardized head by default and the original's on request, named cut/freeze
layers, loading with checks."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.network.head import (VARIANCE_FLOOR, as_float32, build_classifier, head_of, load_classifier,
                              set_feature_statistics)
from model.errors import ModelError
from model.network.vggface import SLIM_WIDTHS, build_vggface


@pytest.fixture()
def float32_policy():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy(previous)


def _names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers]


def test_default_head_standardizes_then_relu(slim_t7, float32_policy):
    from model.network.backbone import load_backbone

    clf = build_classifier(load_backbone(slim_t7))
    names = _names(clf)
    assert clf.name == "gender_classifier" and head_of(clf) == "standardized"
    # Cut right after relu4_2: the backbone up to it, nothing of it after it, then the head.
    assert names[names.index("relu4_2") + 1:] == ["head_flatten", "head_standardize", "head_dropout",
                                                  "head_dense", "male_prob"]
    assert "conv4_3" not in names and "fc6" not in names
    assert clf.input.dtype == "uint8" and tuple(clf.input.shape) == (None, 224, 224, 3)
    assert clf.get_layer("head_dropout").rate == 0.5
    dense, out = clf.get_layer("head_dense"), clf.get_layer("male_prob")
    assert dense.units == 32 and dense.activation.__name__ == "relu"
    assert out.units == 1 and out.activation.__name__ == "sigmoid"
    # Frozen through relu4_2, and the standardization is fixed: only the two dense layers train.
    frozen = names[1:names.index("relu4_2") + 1] + ["head_standardize"]
    assert frozen[0] == "preprocess" and all(not clf.get_layer(n).trainable for n in frozen)
    side = 224 // 8   # three poolings before block 4
    shapes = [tuple(v.shape) for v in clf.trainable_weights]
    assert shapes == [(side * side * SLIM_WIDTHS.conv[8], 32), (32,), (32, 1), (1,)]
    probs = clf.predict(np.zeros((2, 224, 224, 3), np.uint8), verbose=0)
    assert probs.shape == (2, 1) and np.all((probs > 0) & (probs < 1))


def test_original_head_is_the_seed_s_linear_dense(float32_policy):
    """--head original: Dropout(0.5) -> Flatten -> Dense(32) with Keras' default (linear)
    activation -> Dense(1, sigmoid), on the raw features, as the seed had it."""
    clf = build_classifier(build_vggface(SLIM_WIDTHS), head="original")
    names = _names(clf)
    assert head_of(clf) == "original"
    assert names[names.index("relu4_2") + 1:] == ["head_dropout", "head_flatten", "head_dense", "male_prob"]
    assert clf.get_layer("head_dense").activation.__name__ == "linear"
    assert clf.get_layer("head_dense").get_config()["activation"] == keras.layers.Dense(1).get_config()["activation"]


def test_feature_statistics_standardize_each_feature(float32_policy):
    """Each value of the flattened cut features (a channel at a position) by its own statistics."""
    clf = build_classifier(build_vggface(SLIM_WIDTHS, image_size=32), dropout=0.0)
    cut = keras.Model(clf.input, clf.get_layer("relu4_2").output)
    standardized = keras.Model(clf.input, clf.get_layer("head_standardize").output)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    features = np.asarray(cut(images), np.float64).reshape(len(images), -1)   # Flatten's (row-major) order
    # Before statistics the layer is the identity.
    np.testing.assert_allclose(np.asarray(standardized(images)), features, rtol=1e-5, atol=1e-5)
    mean = np.linspace(1.0, 2.0, features.shape[-1])
    variance = np.linspace(4.0, 9.0, features.shape[-1])
    variance[0] = 0.0    # a dead feature: raised to the floor, not divided by zero
    set_feature_statistics(clf, mean, variance)
    floor = VARIANCE_FLOOR * variance.mean()
    expected = (features - mean) / np.sqrt(np.maximum(variance, floor))
    np.testing.assert_allclose(np.asarray(standardized(images)), expected, rtol=1e-5, atol=1e-5)


def test_cut_feature_statistics_are_each_feature_s_over_the_first_images(slim_t7, records_dir, float32_policy):
    """What the standardized head is fixed with: numpy's mean and population variance of each value of
    the flattened cut features over the first N training images, read in file order."""
    from model.network.backbone import load_backbone
    from model.network.feature_stats import cut_feature_statistics
    from pipeline.reader import make_dataset

    clf = build_classifier(load_backbone(slim_t7))
    stats = cut_feature_statistics(clf, "relu4_2", records_dir, ["train"], max_images=40)
    images = next(iter(make_dataset(records_dir, ["train"], 40)))[0].numpy()
    features = np.asarray(keras.Model(clf.input, clf.get_layer("relu4_2").output)(images), np.float64)
    flat = features.reshape(len(features), -1)
    assert stats.images == 40 and stats.mean.shape == (flat.shape[1],)
    np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-4, atol=1e-4 * stats.rms)
    np.testing.assert_allclose(stats.variance, flat.var(0), rtol=1e-3, atol=1e-4 * stats.rms ** 2)
    assert stats.rms == pytest.approx(float(np.sqrt(np.mean(flat ** 2))), rel=1e-4)


def test_cut_and_freeze_are_layer_names(float32_policy):
    clf = build_classifier(build_vggface(SLIM_WIDTHS), cut_layer="pool3", freeze_through="relu2_2",
                           dense_units=8, dropout=0.25)
    assert _names(clf)[-6] == "pool3"
    assert not clf.get_layer("conv2_2").trainable
    assert clf.get_layer("conv3_1").trainable and clf.get_layer("conv3_3").trainable
    assert clf.get_layer("head_dense").units == 8 and clf.get_layer("head_dropout").rate == 0.25
    everything = build_classifier(build_vggface(SLIM_WIDTHS), freeze_through="none")
    # Every layer trains but the fixed standardization.
    assert [layer.name for layer in everything.layers if not layer.trainable] == ["head_standardize"]


@pytest.mark.parametrize("kwargs, words", [
    ({"cut_layer": "layer30"}, ["`cut_layer`", "'layer30'", "relu4_2", "conv5_3", "pool5"]),
    ({"freeze_through": "conv9_9"}, ["`freeze_through`", "'conv9_9'", "conv1_1", "relu4_2"]),
    ({"cut_layer": "relu3_3", "freeze_through": "relu4_2"}, ["comes after", "relu3_3"]),
    ({"dense_units": 0}, ["`dense_units`"]),
    ({"dropout": 1.0}, ["`dropout`"]),
    ({"head": "fancy"}, ["`head`", "'fancy'", "standardized", "original"]),
])
def test_bad_options_are_clear_errors(kwargs, words, float32_policy):
    with pytest.raises(ModelError) as err:
        build_classifier(build_vggface(SLIM_WIDTHS), **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_mixed_precision_keeps_the_output_float32(float32_policy):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    clf = build_classifier(build_vggface(SLIM_WIDTHS))
    assert clf.get_layer("conv1_1").compute_dtype == "bfloat16"
    assert clf.get_layer("head_dense").compute_dtype == "bfloat16"
    assert clf.get_layer("conv1_1").kernel.dtype == "float32"      # variables stay float32
    assert clf.get_layer("preprocess").compute_dtype == "float32"
    assert clf.get_layer("male_prob").compute_dtype == "float32" and clf.output.dtype == "float32"
    images = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    mixed = clf(images, training=False)
    assert mixed.dtype == tf.float32
    keras.mixed_precision.set_global_policy("float32")
    plain = as_float32(clf)
    assert all(layer.compute_dtype == "float32" for layer in plain.layers if layer.name != "image")
    # Same weights, float32 arithmetic: close to the bfloat16 result, not necessarily equal.
    np.testing.assert_allclose(plain(images, training=False).numpy(), mixed.numpy(), atol=0.05)
    for a, b in zip(plain.get_weights(), clf.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_load_classifier_checks_what_it_loads(tmp_path, slim_t7, trained_model, float32_policy):
    from model.network.backbone import convert_t7_to_keras

    model_path, _ = trained_model
    loaded = load_classifier(model_path)
    assert loaded.name == "gender_classifier" and loaded.output.dtype == "float32"

    vggface = str(tmp_path / "vggface.keras")
    convert_t7_to_keras(slim_t7, vggface)
    with pytest.raises(ModelError, match="a VGG-Face backbone, not a gender classifier; train one with "
                                         "`python cli.py train`"):
        load_classifier(vggface)

    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="scores")])
    other_path = str(tmp_path / "other.keras")
    other.save(other_path)
    with pytest.raises(ModelError, match="not a gender classifier"):
        load_classifier(other_path)
    with pytest.raises(ModelError, match="does not exist"):
        load_classifier(str(tmp_path / "missing.keras"))
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip archive at all")
    with pytest.raises(ModelError, match="not a .keras model file"):
        load_classifier(str(garbage))
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(open(model_path, "rb").read()[:-2000])
    with pytest.raises(ModelError):
        load_classifier(str(truncated))


def test_saved_model_serves_uint8_like_the_keras_file(trained_model, float32_policy):
    model_path, records = trained_model
    from pipeline.reader import make_dataset

    images, labels = next(iter(make_dataset(records, "valid", 8)))
    keras_probs = load_classifier(model_path).predict(images, verbose=0)
    served = tf.saved_model.load(model_path[: -len(".keras")] + "_savedmodel")
    signature = served.signatures["serving_default"]
    spec = list(signature.structured_input_signature[1].values())[0]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 224, 224, 3]
    served_probs = served.serve(images).numpy()
    np.testing.assert_allclose(served_probs, keras_probs, rtol=1e-5, atol=1e-6)
    # The fixture's model learned the generated set: served predictions agree with the labels.
    assert np.mean((served_probs[:, 0] >= 0.5) == (labels.numpy() >= 0.5)) >= 0.75
