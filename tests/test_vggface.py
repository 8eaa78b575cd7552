"""The Keras VGG-Face: named layers, the uint8 BGR input contract, the in-model mean subtraction."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from model.runtime import precision
from model.network.vggface import (CONV_NAMES, FULL_WIDTHS, LAYER_NAMES, SLIM_WIDTHS, VGG_MEAN_BGR,
                           MeanSubtract, VGGWidths, build_vggface, mean_subtraction, widths_of)


@pytest.fixture(scope="module")
def slim_model() -> keras.Model:
    return build_vggface(SLIM_WIDTHS)


def test_layer_names_follow_the_paper_in_order(slim_model):
    names = [layer.name for layer in slim_model.layers]
    assert names[0] == "image"
    assert tuple(names[1:]) == LAYER_NAMES
    assert slim_model.name == "vggface"
    assert CONV_NAMES == ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2",
                          "conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2",
                          "conv5_3")
    for name in ("pool1", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7", "fc8", "prob"):
        assert name in names


def test_input_is_uint8_bgr_image_and_output_a_distribution(slim_model):
    assert slim_model.input.dtype == "uint8"
    assert tuple(slim_model.input.shape) == (None, 224, 224, 3)
    images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    prob = np.asarray(slim_model(images))
    assert prob.shape == (2, SLIM_WIDTHS.fc8)
    assert prob.dtype == np.float32
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


def test_widths_come_from_the_weight_shapes(slim_model):
    assert widths_of(slim_model) == SLIM_WIDTHS
    odd = VGGWidths(conv=(3,) * 13, fc6=5, fc7=6, fc8=7)
    assert widths_of(build_vggface(odd)) == odd
    assert FULL_WIDTHS.conv[-1] == 512 and FULL_WIDTHS.fc8 == 2622
    with pytest.raises(ValueError):
        VGGWidths(conv=(4,) * 12, fc6=1, fc7=1, fc8=1)


def test_mean_subtraction_is_image_minus_bgr_mean_per_channel():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    out = np.asarray(mean_subtraction()(images))
    # The legacy layer of older model files computes the same, bit for bit.
    np.testing.assert_array_equal(np.asarray(MeanSubtract()(images)), out)
    assert out.dtype == np.float32
    # Channel 0 is blue, 2 is red: B - 93.5940, G - 104.7624, R - 129.1863.
    assert VGG_MEAN_BGR == (93.5940, 104.7624, 129.1863)
    for c, mean in enumerate(VGG_MEAN_BGR):
        expected = images[..., c].astype(np.float32) - np.float32(mean)
        np.testing.assert_array_equal(out[..., c], expected)


def test_the_model_itself_subtracts_the_mean_first(slim_model):
    """Callers feed raw BGR pixels: the "preprocess" layer right after the input does the rest."""
    assert slim_model.layers[1].name == "preprocess"
    assert isinstance(slim_model.layers[1], keras.layers.Rescaling)   # built in: loads without us
    sub = keras.Model(slim_model.input, slim_model.get_layer("preprocess").output)
    image = np.random.default_rng(3).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    expected = image.astype(np.float32) - np.asarray(VGG_MEAN_BGR, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(sub(image)), expected)


def test_mixed_precision_keeps_preprocess_and_prob_float32():
    with precision("mixed_bfloat16"):
        model = build_vggface(SLIM_WIDTHS)
    assert model.get_layer("preprocess").compute_dtype == "float32"
    assert model.get_layer("conv1_1").compute_dtype == "bfloat16"
    assert model.get_layer("prob").compute_dtype == "float32"
    prob = np.asarray(model(np.zeros((1, 224, 224, 3), dtype=np.uint8)))
    assert prob.dtype == np.float32


def test_mean_subtraction_stays_float32_under_mixed_precision_and_after_deserialization():
    with precision("mixed_bfloat16"):
        layer = mean_subtraction()
        assert layer.compute_dtype == "float32"
        config = keras.saving.serialize_keras_object(layer)
        again = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert isinstance(again, keras.layers.Rescaling) and again.compute_dtype == "float32"


def test_other_image_sizes_build_and_tiny_ones_are_refused():
    model = build_vggface(SLIM_WIDTHS, image_size=64)
    assert tuple(model.get_layer("pool5").output.shape) == (None, 2, 2, 32)
    with pytest.raises(ValueError, match="at least 32"):
        build_vggface(SLIM_WIDTHS, image_size=16)
