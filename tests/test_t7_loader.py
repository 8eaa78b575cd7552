"""VGG_FACE.t7 -> Keras: the Torch7 writer, numerical equivalence with Torch semantics, the exact
placement of kernel taps and biases (the original's two defects), and refusal of wrong files."""
from __future__ import annotations

import io
import struct

import keras
import numpy as np
import pytest
import torchfile

from model.network.backbone import load_backbone, read_vggface_widths
from model.errors import ModelError
from model.network.t7 import load_t7_keras_weights, read_vggface_t7
from model.network.t7_writer import (T7Object, T7Writer, conv_module, pool_module, random_vggface_weights,
                             sequential, vggface_modules, write_t7, write_vggface_t7)
from model.network.vggface import FULL_WIDTHS, SLIM_WIDTHS, VGG_MEAN_BGR, widths_of

# The module classes of VGG_FACE.t7, spelled out independently of the code under test.
_C, _R, _P = "nn.SpatialConvolutionMM", "nn.ReLU", "nn.SpatialMaxPooling"
VGG_FACE_CLASSES = ([_C, _R, _C, _R, _P] * 2 + [_C, _R, _C, _R, _C, _R, _P] * 3
                    + ["nn.View", "nn.Linear", _R, "nn.Dropout", "nn.Linear", _R, "nn.Dropout",
                       "nn.Linear", "nn.SoftMax"])


# ------------------------------------------------------------------ an independent Torch reference
def _im2col(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """(C, H, W) -> (C·k·k, H·W) with rows in (c, kh, kw) order, kw fastest: SpatialConvolutionMM's
    unfolded input, so that output = weight (O, C·k·k) @ columns + bias."""
    c_in, h, w = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))  # zero padding
    cols = np.empty((c_in * k * k, h * w), dtype=x.dtype)
    for c in range(c_in):
        for kh in range(k):
            for kw in range(k):
                cols[(c * k + kh) * k + kw] = xp[c, kh:kh + h, kw:kw + w].reshape(-1)
    return cols


def torch_forward(t7_path: str, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
    """Run the network in a t7 file on one uint8 H×W×3 BGR image the way Torch7 would (NCHW,
    float64, weights exactly as stored), returning every Linear output and the SoftMax."""
    net = torchfile.load(t7_path)
    # Torch input: (C, H, W), channels B, G, R, minus the Caffe mean image.
    x = (image_bgr.astype(np.float64) - np.asarray(VGG_MEAN_BGR)).transpose(2, 0, 1)
    linear_outputs = []
    for module in net.modules:
        kind = module.torch_typename().decode()
        if kind in ("nn.SpatialConvolutionMM", "nn.SpatialConvolution"):
            weight = module.weight.astype(np.float64).reshape(module.nOutputPlane, -1)
            _, h, w = x.shape
            x = weight @ _im2col(x, module.kW, module.padW) + module.bias[:, None]
            x = x.reshape(module.nOutputPlane, h, w)
        elif kind == "nn.ReLU":
            x = np.maximum(x, 0.0)
        elif kind == "nn.SpatialMaxPooling":
            c, h, w = x.shape
            x = x.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))
        elif kind == "nn.View":
            x = x.reshape(-1)  # row-major over (C, H, W)
        elif kind == "nn.Linear":
            x = module.weight.astype(np.float64) @ x + module.bias
            linear_outputs.append(x)
        elif kind == "nn.Dropout":
            pass  # evaluation mode: identity
        elif kind == "nn.SoftMax":
            e = np.exp(x - x.max())
            x = e / e.sum()
        else:
            raise AssertionError(f"unexpected module {kind}")
    return {"fc6": linear_outputs[0], "fc7": linear_outputs[1], "fc8": linear_outputs[2],
            "prob": x}


def _keras_outputs(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    names = ("fc7", "prob")
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    return dict(zip(names, (np.asarray(o) for o in probe(images, training=False))))


def _assert_close(actual: np.ndarray, reference: np.ndarray) -> None:
    """Within 1e-4 relative, with an absolute floor of 1e-4 of the largest reference value."""
    np.testing.assert_allclose(actual, reference, rtol=1e-4,
                               atol=1e-4 * float(np.abs(reference).max()))


def _random_bgr(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


# ------------------------------------------------------------------ the writer
def test_writer_bytes_follow_the_torch7_layout(tmp_path):
    buf = io.BytesIO()
    T7Writer(buf).write(T7Object("nn.ReLU", {"inplace": True}))
    expected = (struct.pack("<ii", 4, 1) + struct.pack("<i", 3) + b"V 1"
                + struct.pack("<i", 7) + b"nn.ReLU"
                + struct.pack("<iii", 3, 2, 1)  # table, reference index 2, one pair
                + struct.pack("<ii", 2, 7) + b"inplace" + struct.pack("<ii", 5, 1))
    assert buf.getvalue() == expected

    buf = io.BytesIO()
    T7Writer(buf).write(np.array([[1.5, -2.0]], dtype=np.float32))
    expected = (struct.pack("<ii", 4, 1) + struct.pack("<i", 3) + b"V 1"
                + struct.pack("<i", 17) + b"torch.FloatTensor"
                + struct.pack("<i", 2) + struct.pack("<qq", 1, 2) + struct.pack("<qq", 2, 1)
                + struct.pack("<q", 1)  # storage offset, 1-based
                + struct.pack("<ii", 4, 2) + struct.pack("<i", 3) + b"V 1"
                + struct.pack("<i", 18) + b"torch.FloatStorage"
                + struct.pack("<q", 2) + struct.pack("<ff", 1.5, -2.0))
    assert buf.getvalue() == expected


def test_writer_references_repeat_the_same_object(tmp_path):
    shared = {"a": 1.25}
    path = str(tmp_path / "refs.t7")
    write_t7(path, [shared, shared, {"a": 1.25}])
    first, second, third = torchfile.load(path)
    assert first is second  # written once, then by reference index
    assert third is not first and third[b"a"] == 1.25


@pytest.fixture(scope="module")
def full_t7(tmp_path_factory) -> tuple[str, dict]:
    """A full-size (about 580 MB) VGG_FACE-structured file, written once for this module."""
    path = str(tmp_path_factory.mktemp("full") / "VGG_FACE.t7")
    stored = write_vggface_t7(path, FULL_WIDTHS, seed=1)
    # Keep only the small arrays: the tests need biases, not 580 MB of kernels twice.
    return path, {name: b for name, (_, b) in stored.items()}


def _check_structure(path: str, widths) -> None:
    net = torchfile.load(path)
    assert net.torch_typename() == b"nn.Sequential"
    assert [m.torch_typename().decode() for m in net.modules] == VGG_FACE_CLASSES
    convs = [m for m in net.modules if m.torch_typename() == b"nn.SpatialConvolutionMM"]
    in_planes = 3
    for module, width in zip(convs, widths.conv):
        assert (module.kW, module.kH, module.dW, module.dH, module.padW, module.padH) == \
            (3, 3, 1, 1, 1, 1)
        assert (module.nInputPlane, module.nOutputPlane) == (in_planes, width)
        assert module.weight.shape == (width, in_planes * 9)  # 2-D, as SpatialConvolutionMM
        assert module.weight.dtype == np.float32 and module.bias.shape == (width,)
        in_planes = width
    pools = [m for m in net.modules if m.torch_typename() == b"nn.SpatialMaxPooling"]
    assert all((m.kW, m.kH, m.dW, m.dH) == (2, 2, 2, 2) for m in pools)
    linears = [net.modules[i] for i in (32, 35, 38)]
    assert [m.weight.shape for m in linears] == [(widths.fc6, widths.conv[-1] * 49),
                                                 (widths.fc7, widths.fc6),
                                                 (widths.fc8, widths.fc7)]


def test_writer_writes_the_40_module_structure_slim(slim_t7):
    _check_structure(slim_t7, SLIM_WIDTHS)


def test_writer_writes_the_40_module_structure_full_size(full_t7):
    _check_structure(full_t7[0], FULL_WIDTHS)


def test_writer_returns_what_it_stored(tmp_path):
    path = str(tmp_path / "double.t7")
    stored = write_vggface_t7(path, SLIM_WIDTHS, seed=5, dtype=np.float64)
    net = torchfile.load(path)
    assert net.modules[0].weight.dtype == np.float64  # torch.DoubleTensor
    np.testing.assert_array_equal(net.modules[0].weight, stored["conv1_1"][0])
    np.testing.assert_array_equal(net.modules[0].bias, stored["conv1_1"][1])
    np.testing.assert_array_equal(net.modules[38].weight, stored["fc8"][0])
    assert np.all(stored["fc7"][1] != 0)  # biases are non-zero: dropping them shows


# ------------------------------------------------------------------ equivalence with Torch
@pytest.mark.parametrize("variant", ["float", "double", "conv4d"])
def test_keras_model_equals_torch_reference(variant, slim_t7, tmp_path):
    if variant == "float":
        path = slim_t7
    else:
        path = str(tmp_path / f"{variant}.t7")
        write_vggface_t7(path, SLIM_WIDTHS, seed=7,
                         dtype=np.float64 if variant == "double" else np.float32,
                         conv_4d=variant == "conv4d")
    model = load_backbone(path)
    assert widths_of(model) == SLIM_WIDTHS
    images = _random_bgr(2, seed=11)
    got = _keras_outputs(model, images)
    for i, image in enumerate(images):
        want = torch_forward(path, image)
        assert np.abs(want["fc7"]).max() > 0.1  # meaningful activations, not vanished
        _assert_close(got["fc7"][i], want["fc7"])
        _assert_close(got["prob"][i], want["prob"])


def test_conversion_keeps_tap_positions_channels_and_biases(tmp_path):
    """The original transposed every kernel and zeroed every bias: one asymmetric tap per filter
    and distinct biases must land exactly where Torch has them."""
    weights = random_vggface_weights(SLIM_WIDTHS, seed=3)
    w = np.zeros((SLIM_WIDTHS.conv[0], 3 * 9), dtype=np.float32)
    # Column (c, kh, kw) = c*9 + kh*3 + kw. Filter 0: green channel, top-right tap (kh 0, kw 2);
    # filter 2: red channel, bottom-middle tap (kh 2, kw 1). Neither survives a transpose or flip.
    w[0, 1 * 9 + 0 * 3 + 2] = 1.0
    w[2, 2 * 9 + 2 * 3 + 1] = -0.5
    bias = np.array([0.5, -0.25, 0.125, 0.75], dtype=np.float32)
    weights["conv1_1"] = (w, bias)
    path = str(tmp_path / "taps.t7")
    write_t7(path, sequential(vggface_modules(weights)))

    _, keras_weights = load_t7_keras_weights(path)
    kernel, keras_bias = keras_weights["conv1_1"]
    assert kernel.shape == (3, 3, 3, SLIM_WIDTHS.conv[0])  # (kH, kW, C, O)
    expected = np.zeros_like(kernel)
    expected[0, 2, 1, 0] = 1.0
    expected[2, 1, 2, 2] = -0.5
    np.testing.assert_array_equal(kernel, expected)
    np.testing.assert_array_equal(keras_bias, bias)
    for name in ("conv3_2", "fc6", "fc8"):  # every other bias too, bit for bit
        np.testing.assert_array_equal(keras_weights[name][1], weights[name][1])

    # Behaviour: one bright green pixel and one bright red pixel on a flat image.
    model = load_backbone(path)
    conv1 = keras.Model(model.input, model.get_layer("conv1_1").output)
    flat = np.full((1, 224, 224, 3), 100, dtype=np.uint8)
    spot = flat.copy()
    spot[0, 50, 60, 1] = 255  # green at (50, 60)
    spot[0, 100, 30, 2] = 255  # red at (100, 30)
    out_flat, out_spot = np.asarray(conv1(flat))[0], np.asarray(conv1(spot))[0]
    diff = out_spot - out_flat
    # Cross-correlation: out[y, x] = sum w[kh, kw] * in[y + kh - 1, x + kw - 1].
    # Filter 0 reads in[y - 1, x + 1]: the green pixel shows at (51, 59), nowhere else.
    want0 = np.zeros((224, 224), np.float32)
    want0[51, 59] = 155.0
    np.testing.assert_allclose(diff[..., 0], want0, atol=1e-4)
    # Filter 2 reads in[y + 1, x]: the red pixel shows at (99, 30).
    want2 = np.zeros((224, 224), np.float32)
    want2[99, 30] = -0.5 * 155.0
    np.testing.assert_allclose(diff[..., 2], want2, atol=1e-4)
    np.testing.assert_array_equal(diff[..., 1], 0.0)
    np.testing.assert_array_equal(diff[..., 3], 0.0)
    # Where the tap reads the zero padding the output is the bias alone, exactly.
    np.testing.assert_array_equal(out_flat[0, :, 0], np.float32(0.5))  # top row, filter 0
    np.testing.assert_array_equal(out_flat[-1, :, 2], np.float32(0.125))  # bottom row, filter 2
    np.testing.assert_array_equal(out_flat[..., 1], np.float32(-0.25))  # all-zero kernel
    np.testing.assert_array_equal(out_flat[..., 3], np.float32(0.75))


def test_full_size_structure_loads_with_the_right_shapes(full_t7):
    path, biases = full_t7
    model = load_backbone(path)
    assert widths_of(model) == FULL_WIDTHS
    np.testing.assert_array_equal(model.get_layer("fc8").bias.numpy(), biases["fc8"])
    got = _keras_outputs(model, _random_bgr(1, seed=2))
    assert got["fc7"].shape == (1, 4096)
    assert got["prob"].shape == (1, 2622)
    np.testing.assert_allclose(got["prob"].sum(), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ wrong files
def _slim_modules(seed: int = 0) -> list[T7Object]:
    return vggface_modules(random_vggface_weights(SLIM_WIDTHS, seed=seed))


def _expect_error(path: str, *fragments: str) -> str:
    with pytest.raises(ModelError) as info:
        read_vggface_t7(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_empty_and_directory(tmp_path):
    _expect_error(str(tmp_path / "nope.t7"), "does not exist")
    (tmp_path / "empty.t7").write_bytes(b"")
    _expect_error(str(tmp_path / "empty.t7"), "is empty")
    _expect_error(str(tmp_path), "is a directory")


@pytest.mark.parametrize("fraction", [0.0001, 0.001, 0.3, 0.9, 0.99999])
def test_truncated_file(slim_t7, tmp_path, fraction):
    data = open(slim_t7, "rb").read()
    path = tmp_path / "cut.t7"
    path.write_bytes(data[: max(5, int(len(data) * fraction))])
    _expect_error(str(path), "is truncated")


def test_not_a_torch_file(tmp_path):
    from PIL import Image

    jpeg = tmp_path / "face.jpg"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(jpeg)
    _expect_error(str(jpeg), "not a Torch7 file")
    noise = tmp_path / "noise.t7"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_error(str(noise), "not a Torch7 file")
    text = tmp_path / "readme.t7"
    text.write_text("this is not a network\n")
    _expect_error(str(text), "not a Torch7 file")


def test_corrupted_bytes_give_model_error_or_load(slim_t7, tmp_path):
    """Garbage anywhere in the file: a ModelError (or, if harmless, a load), never another error."""
    data = bytearray(open(slim_t7, "rb").read())
    rng = np.random.default_rng(4)
    # Bias the positions to the first kilobytes, where headers, sizes and class names live.
    positions = list(rng.integers(0, 4000, 40)) + list(rng.integers(0, len(data), 10))
    for pos in positions:
        bad = bytearray(data)
        bad[pos:pos + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        path = tmp_path / "bad.t7"
        path.write_bytes(bytes(bad))
        try:
            read_vggface_t7(str(path))
        except ModelError as err:
            assert "\n" not in str(err)


def test_a_torch_value_that_is_not_a_network(tmp_path):
    path = str(tmp_path / "table.t7")
    write_t7(path, {"weights": np.zeros(3, np.float32)})
    _expect_error(path, "holds a Lua table", "nn.Sequential")


def test_another_module_where_relu_is(tmp_path):
    modules = _slim_modules()
    modules[1] = T7Object("nn.Tanh", {"output": np.empty(0, np.float32)})
    path = str(tmp_path / "tanh.t7")
    write_t7(path, sequential(modules))
    _expect_error(path, "module 2 is nn.Tanh, expected nn.ReLU (relu1_1)")


def test_conv_with_another_kernel_size(tmp_path):
    modules = _slim_modules()
    weight = np.ones((SLIM_WIDTHS.conv[2], SLIM_WIDTHS.conv[1] * 25), np.float32)
    modules[5] = conv_module(weight, np.zeros(SLIM_WIDTHS.conv[2], np.float32), kernel=5, pad=2)
    path = str(tmp_path / "k5.t7")
    write_t7(path, sequential(modules))
    _expect_error(path, "module 6 (nn.SpatialConvolutionMM conv2_1) has kW=5, expected 3")


def test_conv_weight_shape_that_does_not_chain(tmp_path):
    weights = random_vggface_weights(SLIM_WIDTHS)
    w, b = weights["conv2_1"]
    weights["conv2_1"] = (np.ones((w.shape[0], 5 * 9), np.float32), b)  # 5 inputs after 4
    path = str(tmp_path / "chain.t7")
    write_t7(path, sequential(vggface_modules(weights)))
    _expect_error(path, "module 6", "weight (8, 45)", "over 4 channels")


def test_pooling_of_another_size(tmp_path):
    modules = _slim_modules()
    modules[4] = pool_module(kernel=3, stride=2)
    path = str(tmp_path / "pool3.t7")
    write_t7(path, sequential(modules))
    _expect_error(path, "module 5", "kW=3, expected 2")


def test_fc6_of_another_input_size(tmp_path):
    weights = random_vggface_weights(SLIM_WIDTHS)
    weights["fc6"] = (np.ones((SLIM_WIDTHS.fc6, 32 * 6 * 6), np.float32),
                      np.zeros(SLIM_WIDTHS.fc6, np.float32))
    path = str(tmp_path / "fc6.t7")
    write_t7(path, sequential(vggface_modules(weights)))
    _expect_error(path, "module 33", "fc6", "expected (n, 1568)")


def test_missing_and_extra_modules(tmp_path):
    path = str(tmp_path / "short.t7")
    write_t7(path, sequential(_slim_modules()[:-1]))
    _expect_error(path, "39 modules", "module 40 (prob, nn.SoftMax) is missing")
    path = str(tmp_path / "long.t7")
    modules = _slim_modules()
    write_t7(path, sequential(modules + [modules[1]]))
    _expect_error(path, "41 modules", "module 41 is nn.ReLU")


def test_integer_weights_are_refused(tmp_path):
    weights = random_vggface_weights(SLIM_WIDTHS)
    weights["fc7"] = (weights["fc7"][0].astype(np.int64), weights["fc7"][1])
    path = str(tmp_path / "int.t7")
    write_t7(path, sequential(vggface_modules(weights)))
    _expect_error(path, "module 36", "fc7", "no float weight")


def test_widths_of_a_file(slim_t7):
    assert read_vggface_widths(slim_t7) == SLIM_WIDTHS
