"""Guards on a `.keras` file before Keras reads any of it: its zip members may only be as large as
the architecture needs (issue 19: a 5.8 MB file whose config.json was 2.5 GiB of spaces, a 4 MB
one with 4 GiB of zero weights, were read whole).

A member's size is what the zip's central directory declares (`ZipInfo.file_size`); Python's
zipfile never returns more than that from a member (it cuts the stream there, and a member that
decompresses to a different size fails its CRC), and Keras reads the archive through it, so
checking the declared sizes bounds what is read:
- `config.json` at most MAX_CONFIG_BYTES (the full VGG-Face classifier's is about 25 KB);
- `metadata.json` and any other small member at most MAX_SMALL_MEMBER_BYTES;
- `model.weights.h5` at most the float32 bytes of the parameters the config declares, plus
  HDF5's overhead (measured: about 3 KB per variable; allowed: WEIGHTS_SLACK), computed from the
  config's layers and their recorded input shapes, without building anything.
The config is parsed only once its size passed; a layer kind this project never writes, holding
weights of a size that cannot be computed here, is refused.
"""
from __future__ import annotations

import json
import zipfile

from model.errors import ModelError

MAX_CONFIG_BYTES = 2**20
MAX_SMALL_MEMBER_BYTES = 64 * 2**10
CONFIG_NAME, METADATA_NAME, WEIGHTS_NAME = "config.json", "metadata.json", "model.weights.h5"
# HDF5 headers per layer (groups, dataset headers) and for the file itself.
WEIGHTS_SLACK_PER_LAYER = 8 * 2**10
WEIGHTS_SLACK = 2**20
BYTES_PER_WEIGHT = 4     # float32: what `train` and `convert` save (as_float32)

# Built-in layers without weights, and nested models (whose layers are walked).
WEIGHTLESS = frozenset({"InputLayer", "Rescaling", "ReLU", "Activation", "Softmax", "MaxPooling2D",
                        "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten",
                        "Dropout", "ZeroPadding2D", "Reshape", "Permute", "Identity", "MeanSubtract"})
MODELS = frozenset({"Functional", "Sequential", "Model"})


def _channels(shape: list, axis: int) -> int:
    value = shape[axis]
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"unknown dimension in {shape}")
    return value


def _layer_weights(layer: dict) -> int:
    """The number of weights of one layer config (a dict with class_name, config, build_config)."""
    kind, config = layer.get("class_name"), layer.get("config") or {}
    if kind in WEIGHTLESS:
        return 0
    if kind in MODELS:
        return sum(_layer_weights(inner) for inner in config.get("layers", []))
    shape = ((layer.get("build_config") or {}).get("input_shape"))
    if not isinstance(shape, list):
        raise ValueError(f"layer {config.get('name')!r} ({kind}) records no input shape")
    if kind == "Dense":
        units = int(config["units"])
        return _channels(shape, -1) * units + units * bool(config.get("use_bias", True))
    if kind == "Conv2D":
        filters, (kh, kw) = int(config["filters"]), config["kernel_size"]
        channels = _channels(shape, 1 if config.get("data_format") == "channels_first" else -1)
        return int(kh) * int(kw) * (channels // int(config.get("groups", 1))) * filters + filters * bool(
            config.get("use_bias", True))
    if kind == "BatchNormalization":
        axes = config.get("axis", -1)
        width = 1
        for axis in axes if isinstance(axes, list) else [axes]:
            width *= _channels(shape, int(axis))
        return width * (2 + bool(config.get("center", True)) + bool(config.get("scale", True)))
    raise ValueError(f"layer {config.get('name')!r} is a {kind}, a kind this tool never writes")


def _count_layers(layer: dict) -> int:
    inner = (layer.get("config") or {}).get("layers", []) if layer.get("class_name") in MODELS else []
    return 1 + sum(_count_layers(x) for x in inner)


def expected_weight_bytes(config: dict) -> int:
    """The most bytes model.weights.h5 may take for the model `config` (config.json's content);
    ValueError when the config does not say."""
    return _layer_weights(config) * BYTES_PER_WEIGHT + WEIGHTS_SLACK_PER_LAYER * _count_layers(config) + WEIGHTS_SLACK


def check_keras_archive(path: str, hint: str) -> None:
    """ModelError (ending with `hint`, what to do instead) when a member of the .keras zip at `path`
    is larger than the model needs; nothing above the small caps is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for name, info in members.items():
                cap = MAX_CONFIG_BYTES if name == CONFIG_NAME else (
                    None if name == WEIGHTS_NAME else MAX_SMALL_MEMBER_BYTES)
                if cap is not None and info.file_size > cap:
                    raise ModelError(f"{path}: its {name} declares {info.file_size:,} bytes, over the "
                                     f"{cap:,}-byte cap (a zip bomb or not a model of this tool); {hint}")
            if CONFIG_NAME not in members or WEIGHTS_NAME not in members:
                return          # Keras says what is missing
            config = json.loads(archive.read(CONFIG_NAME).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: not a readable .keras archive ({err}); {hint}") from None
    try:
        allowed = expected_weight_bytes(config)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ModelError(f"{path}: its architecture cannot be sized ({err}); {hint}") from None
    size = members[WEIGHTS_NAME].file_size
    if size > allowed:
        raise ModelError(f"{path}: its {WEIGHTS_NAME} declares {size:,} bytes, but the architecture's "
                         f"weights need at most {allowed:,}; {hint}")
