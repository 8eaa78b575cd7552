"""The VGG-Face backbone from either VGG_FACE.t7 or the .keras file that `convert` writes.

Whatever the source, the model is built fresh by build_vggface under the active dtype policy (so
mixed precision applies to a converted file too) and the weights are copied by layer name.
"""
from __future__ import annotations

import os
import time
import zipfile
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from model.errors import ModelError
from model.progress import ConvertEvent, Reading, Writing
from model.network.t7 import load_t7_keras_weights, read_vggface_t7

# Importing model.network.vggface also registers MeanSubtract, which safe-mode loading needs.
from model.network.vggface import CONV_NAMES, LAYER_NAMES, WEIGHTED_NAMES, VGGWidths, build_vggface
from model.runtime import precision
from pipeline.files import replacing
from pipeline.schema import DEFAULT_IMAGE_SIZE

_NOT_VGGFACE = "is not a VGG-Face model; convert VGG_FACE.t7 with `python cli.py convert`"


def _is_keras_file(path: str) -> bool:
    # A .keras file is a zip archive; a Torch7 file never starts with "PK".
    return path.endswith(".keras") or zipfile.is_zipfile(path)


def _load_keras_weights(path: str) -> tuple[VGGWidths, dict[str, list[np.ndarray]]]:
    """Widths and weights per layer name of a .keras VGG-Face (ModelError for anything else)."""
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a .keras file (not a zip archive); give VGG_FACE.t7 or "
                         f"the .keras file written by `python cli.py convert`")
    from model.network.archive import check_keras_archive

    check_keras_archive(path, "convert VGG_FACE.t7 with `python cli.py convert`")
    try:
        loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # Keras raises many types for foreign archives; all mean "bad file"
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path} cannot be loaded as a Keras model ({reason}); "
                         f"convert VGG_FACE.t7 with `python cli.py convert`") from None
    names = {layer.name for layer in loaded.layers}
    missing = [name for name in LAYER_NAMES if name not in names]
    if missing:
        raise ModelError(f"{path} {_NOT_VGGFACE} (no layer {missing[0]})")
    weights: dict[str, list[np.ndarray]] = {}
    for name in WEIGHTED_NAMES:
        values = loaded.get_layer(name).get_weights()
        if len(values) != 2:
            raise ModelError(f"{path} {_NOT_VGGFACE} (layer {name} has {len(values)} weights)")
        weights[name] = [np.asarray(v, dtype=np.float32) for v in values]
    try:
        widths = VGGWidths(conv=tuple(int(weights[n][0].shape[-1]) for n in CONV_NAMES),
                           fc6=int(weights["fc6"][0].shape[-1]),
                           fc7=int(weights["fc7"][0].shape[-1]),
                           fc8=int(weights["fc8"][0].shape[-1]))
    except (IndexError, ValueError):
        raise ModelError(f"{path} {_NOT_VGGFACE} (unexpected weight shapes)") from None
    return widths, weights


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise ModelError(f"weights file {path} does not exist; download VGG_FACE.t7 (see the "
                         f"README) or give the .keras file written by `python cli.py convert`")
    if os.path.isdir(path):
        raise ModelError(f"backbone path {path} is a directory; give VGG_FACE.t7 or a .keras file")


def _load_weights(path: str) -> tuple[VGGWidths, dict[str, list[np.ndarray]]]:
    _check_path(path)
    if _is_keras_file(path):
        return _load_keras_weights(path)
    return load_t7_keras_weights(path)


def read_vggface_widths(path: str) -> VGGWidths:
    """The channel widths of a VGG_FACE.t7 or converted .keras file."""
    _check_path(path)
    if _is_keras_file(path):
        return _load_keras_weights(path)[0]
    return read_vggface_t7(path).widths  # checked, but no conversion needed


def load_backbone(path: str, image_size: int = DEFAULT_IMAGE_SIZE) -> keras.Model:
    """VGG-Face with the weights of a VGG_FACE.t7 or converted .keras, under the current policy.

    At image_size 224 every layer carries the file's weights. At another size pool5 is not 7×7,
    so fc6 cannot take the file's fc6 (which reads a 7×7 map): every layer through pool5, fc7 and
    fc8 carry the file's weights, and fc6 is set to zeros so that nothing above pool5 can pass
    for VGG-Face features. Cut at or below pool5 at such sizes.
    """
    widths, weights = _load_weights(path)
    model = build_vggface(widths, image_size)
    for name in WEIGHTED_NAMES:
        layer = model.get_layer(name)
        kernel, bias = weights[name]
        if name == "fc6" and tuple(layer.kernel.shape) != kernel.shape:
            kernel = np.zeros(tuple(layer.kernel.shape), dtype=np.float32)
            bias = np.zeros_like(bias)
        if tuple(layer.kernel.shape) != kernel.shape or tuple(layer.bias.shape) != bias.shape:
            raise ModelError(f"{path}: layer {name} has weights {kernel.shape}/{bias.shape} but "
                             f"the model needs {tuple(layer.kernel.shape)}/"
                             f"{tuple(layer.bias.shape)}")
        layer.set_weights([kernel, bias])
    return model


@dataclass(frozen=True)
class ConvertSummary:
    """What `convert` did: the widths read, the parameter count, where it wrote, how long it took."""

    widths: VGGWidths
    params: int
    output: str
    bytes_written: int
    seconds: float


def convert_t7_to_keras(weights_path: str, output_path: str,
                        progress: Callable[[ConvertEvent], None] | None = None) -> ConvertSummary:
    """Convert a VGG_FACE.t7-structured file to a .keras VGG-Face, written atomically.

    A .keras VGG-Face given as input is checked and rewritten the same way. progress (optional)
    gets a Reading, then a Writing event (model/progress.py).
    """
    if not output_path.endswith(".keras"):
        raise ModelError(f"output {output_path} must end in .keras (Keras 3 saves whole models "
                         f"only as .keras files)")
    report = progress or (lambda info: None)
    start = time.perf_counter()
    report(Reading(weights_path))
    widths, weights = _load_weights(weights_path)
    # The file on disk is always float32, whatever global policy a caller has set.
    with precision("float32"):
        model = build_vggface(widths)
    for name in WEIGHTED_NAMES:
        model.get_layer(name).set_weights(weights[name])
    del weights
    report(Writing(output_path, int(model.count_params())))
    try:
        with replacing(output_path, suffix=".keras") as partial:
            model.save(partial)
    except OSError as err:
        raise ModelError(f"cannot write {output_path}: {err.strerror or err}") from None
    summary = ConvertSummary(widths=widths, params=int(model.count_params()), output=output_path,
                             bytes_written=os.path.getsize(output_path),
                             seconds=time.perf_counter() - start)
    return summary
