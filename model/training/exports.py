"""What a finished run leaves behind: the .keras model, the SavedModel for TF Serving (with a signature
that takes encoded images: model/network/serving.py), the history CSV,
and the digest that proves every worker ended with the same weights.

Saved and exported in float32 outside the strategy, so they load and serve anywhere; each written
under a temporary name and then renamed, so a crash never leaves half a model.
"""
from __future__ import annotations

import csv
import hashlib
import os

import keras
import numpy as np
import tensorflow as tf

from model.network.head import as_float32
from model.runtime import precision
from model.network.serving import export_savedmodel
from pipeline.files import replacing

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "images_per_s", "seconds")


def write_outputs(model: keras.Model, paths: dict[str, str], history: list[dict]) -> None:
    """The model (.keras), its SavedModel and the history CSV at `paths` (training.config.output_paths)."""
    output, savedmodel = paths["output"], paths["savedmodel"]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with precision("float32"):
        final = as_float32(model)
    with replacing(output, suffix=".keras") as partial:
        final.save(partial)
    export_savedmodel(final, savedmodel)        # atomic itself; signatures in model/network/serving.py
    with open(paths["history_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({key: (f"{row[key]:.6g}" if isinstance(row[key], float) else row[key])
                             for key in HISTORY_FIELDS})


def _digest(arrays) -> str:
    digest = hashlib.sha256()
    for value in arrays:
        array = np.ascontiguousarray(value)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every weight of the model, in layer order: equal digests = identical weights."""
    return _digest(model.get_weights())


def replica_digests(model: keras.Model, strategy: tf.distribute.Strategy) -> list[str]:
    """weights_digest of each local replica's copy of the weights (mirrored variables hold one per
    device): all equal when the replicas stayed in sync."""
    per_variable = [strategy.experimental_local_results(v.value) for v in model.weights]
    count = len(per_variable[0]) if per_variable else 0
    return [_digest(copies[index].numpy() for copies in per_variable) for index in range(count)]
