"""Read VGG_FACE.t7 (Torch7) with `torchfile`, check it is VGG-Face, convert its weights to Keras.

The conversion is where the original project went wrong (NOTES.md §1: biases dropped, kernels
spatially transposed), so every step is explicit:
- `nn.SpatialConvolutionMM` stores a 2-D weight (O, C·kH·kW) whose columns run (c, kh, kw) with kw
  fastest: reshape to (O, C, kH, kW), then transpose to Keras' (kH, kW, C, O). Torch and
  TensorFlow both compute cross-correlation, so the kernel is NOT flipped. A 4-D weight
  (O, C, kH, kW) of `nn.SpatialConvolution` takes the same transpose.
- `nn.Linear` stores (out, in); Keras Dense wants (in, out). fc6 reads pool5 flattened in Torch's
  (C, H, W) order while Keras' Flatten on NHWC gives (H, W, C): fc6's input rows are permuted.
- Every bias is copied; Float and Double tensors are both accepted and cast to float32.
"""
# About 350 lines: the Torch7 reader's checks of every module of VGG_FACE.t7 (sizes bounded by the
# file, topology, dtypes) are what makes a wrong or crafted file one clear line; they belong together.
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import torchfile

from model.errors import ModelError
from model.network.vggface import BLOCK_SIZES, CONV_NAMES, DENSE_NAMES, FULL_WIDTHS, VGGWidths
from pipeline.schema import DEFAULT_IMAGE_SIZE

CONV_CLASSES = ("nn.SpatialConvolutionMM", "nn.SpatialConvolution")


def _expected_modules() -> tuple[tuple[str, str], ...]:
    modules: list[tuple[str, str]] = []
    for b, n in enumerate(BLOCK_SIZES):
        for i in range(n):
            modules.append(("nn.SpatialConvolutionMM", f"conv{b + 1}_{i + 1}"))
            modules.append(("nn.ReLU", f"relu{b + 1}_{i + 1}"))
        modules.append(("nn.SpatialMaxPooling", f"pool{b + 1}"))
    modules.append(("nn.View", "flatten"))
    modules += [("nn.Linear", "fc6"), ("nn.ReLU", "relu6"), ("nn.Dropout", "drop6"),
                ("nn.Linear", "fc7"), ("nn.ReLU", "relu7"), ("nn.Dropout", "drop7"),
                ("nn.Linear", "fc8"), ("nn.SoftMax", "prob")]
    return tuple(modules)


# The 40 modules of VGG_FACE.t7 in order, as (expected class, layer name).
EXPECTED_MODULES = _expected_modules()

_FLOAT_TYPES = (np.float32, np.float64)

# Bounds from the real network: no tensor of VGG_FACE.t7 is larger than fc6's weight (4096 x
# 512·7·7 = 102,760,448 elements), no convolution wider than 512 channels, no Linear wider than
# 4096 units. Every size a file declares is also bounded by the file's own size (a storage holds
# its values; a tensor has no more elements than its storage), so a small crafted file cannot make
# the reader or the conversion allocate more than the file could describe.
MAX_TENSOR_ELEMENTS = FULL_WIDTHS.conv[-1] * (DEFAULT_IMAGE_SIZE // 32) ** 2 * FULL_WIDTHS.fc6
MAX_CONV_WIDTH = max(FULL_WIDTHS.conv)
MAX_DENSE_WIDTH = max(FULL_WIDTHS.fc6, FULL_WIDTHS.fc7, FULL_WIDTHS.fc8)


class _Truncated(Exception):
    """The file ended inside a value (raised by the checked storage reader below)."""


class _Refused(ValueError):
    """The file declares a size, stride or width that VGG-Face never has (a crafted or corrupt file)."""


def _checked_storage_reader(dtype):
    """torchfile's storage reader, but refusing short reads and absurd sizes.

    torchfile reads storages with np.fromfile, which silently returns fewer elements at the end
    of a truncated file (and the tensor built over it would then index past the data).
    torchfile's documented extension point, `register_handler`, lets us check the count.
    """
    itemsize = np.dtype(dtype).itemsize

    def read_storage(reader, version):
        size = reader.read_long()
        remaining = os.fstat(reader.f.fileno()).st_size - reader.f.tell()
        if size > MAX_TENSOR_ELEMENTS:
            raise _Refused(f"a storage of {size:,} elements, more than VGG-Face's largest tensor "
                           f"({MAX_TENSOR_ELEMENTS:,})")
        if size < 0 or size * itemsize > remaining:
            raise _Truncated(f"a storage of {size} elements needs {size * itemsize} bytes, "
                             f"{remaining} left")
        return np.fromfile(reader.f, dtype=dtype, count=size)

    return read_storage


def _checked_tensor_reader(dtype):
    """torchfile's tensor reader, refusing sizes/strides that point outside the storage."""

    def read_tensor(reader, version):
        ndim = reader.read_int()
        if not 0 <= ndim <= 8:
            raise ValueError(f"tensor with {ndim} dimensions")
        size = reader.read_long_array(ndim)
        stride = reader.read_long_array(ndim)
        offset = reader.read_long() - 1
        storage = reader.read_obj()
        if storage is None or ndim == 0:
            return np.empty((0,), dtype=dtype)
        if not isinstance(storage, np.ndarray):
            raise ValueError("tensor storage is not a storage")
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            raise ValueError("negative tensor size, stride or offset")
        # A zero stride repeats one value along a dimension: a few bytes could then stand for
        # gigabytes once the conversion copies the tensor. Real tensors never do it.
        if any(s < 1 for n, s in zip(size, stride) if n > 1):
            raise _Refused(f"a tensor of shape {tuple(size)} with a zero stride {tuple(stride)}")
        elements = int(np.prod(size, dtype=object))
        if elements > storage.size or elements > MAX_TENSOR_ELEMENTS:
            raise _Refused(f"a tensor of shape {tuple(size)} ({elements:,} elements), larger than its "
                           f"storage ({storage.size:,}) or VGG-Face's largest tensor ({MAX_TENSOR_ELEMENTS:,})")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
        if last >= storage.size and all(size):
            raise ValueError(f"tensor of shape {tuple(size)} reaches past its storage "
                             f"of {storage.size} elements")
        return np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[storage.dtype.itemsize * s for s in stride])

    return read_tensor


for _kind, _dtype in (("Float", np.float32), ("Double", np.float64), ("Long", np.int64),
                      ("Int", np.int32), ("Short", np.int16), ("Char", np.int8),
                      ("Byte", np.uint8)):
    torchfile.register_handler(f"torch.{_kind}Storage".encode())(_checked_storage_reader(_dtype))
    torchfile.register_handler(f"torch.{_kind}Tensor".encode())(_checked_tensor_reader(_dtype))


class _CheckedReader(torchfile.T7Reader):
    """torchfile's reader, refusing string lengths beyond the end of the file.

    A corrupt length would otherwise make it read (and allocate) up to 2 GB, or with a negative
    length the whole rest of the file, before failing somewhere unhelpful.
    """

    def read_string(self, disable_utf8=False):
        size = self.read_int()
        remaining = os.fstat(self.f.fileno()).st_size - self.f.tell()
        if size < 0 or size > remaining:
            raise _Truncated(f"a string of {size} bytes, {remaining} left")
        data = self.f.read(size)
        if disable_utf8 or not self.utf8_decode_strings:
            return data
        return data.decode("utf8")


def _read_torch_file(path: str):
    """The top-level object of a Torch7 file, or ModelError saying why it cannot be read."""
    if not os.path.exists(path):
        raise ModelError(f"weights file {path} does not exist; download VGG_FACE.t7 "
                         f"(see the README) and pass its path")
    if os.path.isdir(path):
        raise ModelError(f"weights path {path} is a directory, not a VGG_FACE.t7 file")
    size = os.path.getsize(path)
    if size == 0:
        raise ModelError(f"weights file {path} is empty")
    with open(path, "rb") as f:
        head = f.read(4)
        # A torch.save'd value starts with a type code (a network: 4, a torch object); anything
        # else is not a Torch7 binary file (a JPEG, a zip, text, a .keras file …).
        if len(head) < 4 or struct.unpack("<i", head)[0] not in (1, 2, 3, 4, 5):
            raise ModelError(f"{path} is not a Torch7 file (expected VGG_FACE.t7 from the "
                             f"VGG-Face distribution)")
        f.seek(0)
        reader = _CheckedReader(f)
        try:
            return reader.read_obj()
        except _Refused as err:
            raise ModelError(f"{path} is not a VGG_FACE.t7 file: it declares {err}") from None
        except MemoryError:
            raise ModelError(f"{path} is not a readable Torch7 file (it declares absurd sizes)")
        except RecursionError:
            raise ModelError(f"{path} is not a readable Torch7 file (nesting too deep)")
        # torchfile raises whatever its struct/array/numpy calls raise on malformed data.
        except (_Truncated, struct.error, EOFError, ValueError, TypeError, IndexError, KeyError,
                AttributeError, OverflowError, UnicodeDecodeError, NotImplementedError,
                torchfile.T7ReaderException) as err:
            at_end = f.tell() >= size
            if at_end or isinstance(err, (_Truncated, EOFError)):
                raise ModelError(f"{path} is truncated ({size:,} bytes; the file ends inside "
                                 f"its data): download VGG_FACE.t7 again") from None
            raise ModelError(f"{path} is not a readable Torch7 file "
                             f"({type(err).__name__} at byte {f.tell():,})") from None


def _class_name(obj) -> str:
    if isinstance(obj, torchfile.TorchObject):
        name = obj.torch_typename()
        return name.decode("latin-1") if isinstance(name, bytes) else str(name)
    if isinstance(obj, np.ndarray):
        return "a tensor"
    if isinstance(obj, (dict, list)):
        return "a Lua table"
    if obj is None:
        return "nil"
    return "a string" if isinstance(obj, bytes) else f"a Lua {type(obj).__name__}"


@dataclass(frozen=True)
class TorchVGGFace:
    """The weights of a VGG_FACE.t7 in Torch layout, with the widths they imply."""

    widths: VGGWidths
    # layer name -> (weight, bias), as stored (conv 2-D (O, C·9) or 4-D (O, C, 3, 3); Linear (out, in))
    weights: dict[str, tuple[np.ndarray, np.ndarray]]


def _float_tensor(path: str, index: int, name: str, field: str, value) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype not in _FLOAT_TYPES:
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise ModelError(f"{path}: module {index} ({name}) has no float {field} tensor "
                         f"(found {kind}); not a VGG-Face Torch file")
    return value


def _check_field(path: str, index: int, label: str, module, field: str, expected) -> None:
    """Compare an integer module field when the file has it (older nn versions lack some)."""
    value = getattr(module, field)
    if value is not None and value != expected:
        raise ModelError(f"{path}: module {index} ({label}) has {field}={value}, expected "
                         f"{expected}; not the VGG-Face network")


def _check_width(path: str, index: int, label: str, width: int, largest: int) -> None:
    if not 1 <= width <= largest:
        raise ModelError(f"{path}: module {index} ({label}) is {width} units wide; VGG-Face's widest "
                         f"such layer has {largest}: not the VGG-Face network")


# Over 60 lines on purpose: the file's modules are read and checked in order, each check needing the
# previous module's shapes; split, the order would have to travel between functions.
def read_vggface_t7(path: str) -> TorchVGGFace:
    """Read a VGG_FACE.t7-structured file and check its 40-module topology and shapes.

    Module numbers in messages are Torch's, counting from 1. Widths come from the weight shapes,
    so a slim file with the same topology reads too.
    """
    net = _read_torch_file(path)
    if _class_name(net) != "nn.Sequential" or not isinstance(net.modules, list):
        raise ModelError(f"{path} holds {_class_name(net)}, not the nn.Sequential network of "
                         f"VGG_FACE.t7")
    modules = net.modules
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    in_planes = 3
    for index, (expected, name) in enumerate(EXPECTED_MODULES, start=1):
        if index > len(modules):
            raise ModelError(f"{path} has {len(modules)} modules, expected 40: module {index} "
                             f"({name}, {expected}) is missing; not the VGG-Face network")
        module = modules[index - 1]
        found = _class_name(module)
        accepted = CONV_CLASSES if expected == CONV_CLASSES[0] else (expected,)
        if found not in accepted:
            raise ModelError(f"{path}: module {index} is {found}, expected {expected} ({name}); "
                             f"not the VGG-Face network")
        label = f"{found} {name}"
        if name in CONV_NAMES:
            # ("padding" is the field of nn versions older than padW/padH.)
            for field, value in (("kW", 3), ("kH", 3), ("dW", 1), ("dH", 1), ("padW", 1),
                                 ("padH", 1), ("padding", 1)):
                _check_field(path, index, label, module, field, value)
            w = _float_tensor(path, index, name, "weight", module.weight)
            b = _float_tensor(path, index, name, "bias", module.bias)
            out_planes = w.shape[0]
            _check_width(path, index, label, out_planes, MAX_CONV_WIDTH)
            if w.ndim == 2:
                ok = w.shape[1] == in_planes * 9
            else:
                ok = w.ndim == 4 and w.shape[1:] == (in_planes, 3, 3)
            if not ok or b.shape != (out_planes,):
                raise ModelError(
                    f"{path}: module {index} ({label}) has weight {tuple(w.shape)} and bias "
                    f"{tuple(b.shape)}, expected ({out_planes}, {in_planes * 9}) or "
                    f"({out_planes}, {in_planes}, 3, 3) and ({out_planes},) for 3×3 kernels over "
                    f"{in_planes} channels; not the VGG-Face network")
            _check_field(path, index, label, module, "nInputPlane", in_planes)
            _check_field(path, index, label, module, "nOutputPlane", out_planes)
            weights[name] = (w, b)
            in_planes = out_planes
        elif found == "nn.SpatialMaxPooling":
            for field, value in (("kW", 2), ("kH", 2), ("dW", 2), ("dH", 2), ("padW", 0),
                                 ("padH", 0)):
                _check_field(path, index, label, module, field, value)
        elif found == "nn.ReLU":
            # nn.ReLU is nn.Threshold(0, 0); another threshold is another function.
            _check_field(path, index, label, module, "threshold", 0)
            _check_field(path, index, label, module, "val", 0)
        elif found == "nn.Linear":
            w = _float_tensor(path, index, name, "weight", module.weight)
            b = _float_tensor(path, index, name, "bias", module.bias)
            _check_width(path, index, label, w.shape[0] if w.ndim else 0, MAX_DENSE_WIDTH)
            pool5 = DEFAULT_IMAGE_SIZE // 32
            fan_in = in_planes * pool5 * pool5 if name == "fc6" else in_planes
            if w.ndim != 2 or w.shape[1] != fan_in or b.shape != (w.shape[0],):
                raise ModelError(
                    f"{path}: module {index} ({label}) has weight {tuple(w.shape)} and bias "
                    f"{tuple(b.shape)}, expected (n, {fan_in}) and (n,); not the VGG-Face network")
            weights[name] = (w, b)
            in_planes = w.shape[0]
    if len(modules) != len(EXPECTED_MODULES):
        raise ModelError(f"{path} has {len(modules)} modules, expected 40 (module 41 is "
                         f"{_class_name(modules[40])}); not the VGG-Face network")
    widths = VGGWidths(conv=tuple(int(weights[n][0].shape[0]) for n in CONV_NAMES),
                       fc6=int(weights["fc6"][0].shape[0]), fc7=int(weights["fc7"][0].shape[0]),
                       fc8=int(weights["fc8"][0].shape[0]))
    return TorchVGGFace(widths=widths, weights=weights)


def conv_kernel_to_keras(weight: np.ndarray) -> np.ndarray:
    """Torch conv weight (O, C·kH·kW) with (c, kh, kw) columns, or (O, C, kH, kW) -> Keras
    (kH, kW, C, O) float32. Cross-correlation on both sides: no spatial flip."""
    out_planes = weight.shape[0]
    if weight.ndim == 2:
        weight = weight.reshape(out_planes, -1, 3, 3)
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), dtype=np.float32)


def linear_kernel_to_keras(weight: np.ndarray, channels: int | None = None) -> np.ndarray:
    """Torch Linear weight (out, in) -> Keras Dense kernel (in, out) float32.

    With channels, the input is a Torch (C, H, W) flatten (fc6 reading pool5) and the rows are
    reordered to the (H, W, C) order of Keras' Flatten on NHWC: Keras row (h, w, c) is Torch
    column (c, h, w).
    """
    out, fan_in = weight.shape
    channels = channels or fan_in
    spatial = fan_in // channels  # H·W (49 for fc6 at 224×224; 1 for fc7 and fc8)
    by_channel = weight.reshape(out, channels, spatial)
    kernel = np.empty((spatial, channels, out), dtype=np.float32)
    # In blocks of output units: transposing fc6 (100M floats) in one go strides through memory
    # and takes about 5 s; blocks that stay in cache take about 1 s.
    block = 64
    for start in range(0, out, block):
        kernel[:, :, start:start + block] = by_channel[start:start + block].transpose(2, 1, 0)
    return kernel.reshape(spatial * channels, out)


def to_keras_weights(torch_net: TorchVGGFace) -> dict[str, list[np.ndarray]]:
    """Keras [kernel, bias] (float32) per layer name, from Torch-layout weights."""
    out: dict[str, list[np.ndarray]] = {}
    for name in CONV_NAMES:
        w, b = torch_net.weights[name]
        out[name] = [conv_kernel_to_keras(w), np.asarray(b, dtype=np.float32)]
    for name in DENSE_NAMES:
        w, b = torch_net.weights[name]
        kernel = linear_kernel_to_keras(w, torch_net.widths.conv[-1] if name == "fc6" else None)
        out[name] = [kernel, np.asarray(b, dtype=np.float32)]
    return out


def load_t7_keras_weights(path: str) -> tuple[VGGWidths, dict[str, list[np.ndarray]]]:
    """Widths and Keras-layout weights of a VGG_FACE.t7-structured file (ModelError if it is not)."""
    torch_net = read_vggface_t7(path)
    return torch_net.widths, to_keras_weights(torch_net)
