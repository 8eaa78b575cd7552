"""The linear-probe reference: scikit-learn's logistic regression on a backbone's frozen,
standardized cut-layer features. What a trained head should reach on the same features (issue #10's
yardstick); used by tests/test_feature_scale.py and bench/feature_scale_table.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from model.defaults import DEFAULT_CUT_LAYER
from pipeline.schema import DEFAULT_IMAGE_SIZE

FEATURE_BATCH = 50
# Above this many bytes of float64 training features the reference runs in float32 (scikit-learn's
# scaler and lbfgs keep float32): 2,000 images at the full network's relu4_2 are 6.4 GB in float64,
# and the scaler copies them.
FLOAT64_LIMIT = 2 << 30


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float           # on the validation split
    train_feature_rms: float  # sqrt of the mean square of the training images' features


def cut_model(weights: str, image_size: int = DEFAULT_IMAGE_SIZE, layer: str = DEFAULT_CUT_LAYER) -> keras.Model:
    """The VGG-Face of `weights` (a VGG_FACE.t7 or converted .keras) up to `layer`."""
    from model.network.backbone import load_backbone

    backbone = load_backbone(weights, image_size=image_size)
    return keras.Model(backbone.input, backbone.get_layer(layer).output)


def frozen_features(cut: keras.Model, records_dir: str, split: str,
                    dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The flattened features of every image of a records split, in file order, and the labels."""
    from pipeline.reader import make_dataset

    xs, ys = [], []
    for images, labels in make_dataset(records_dir, split, FEATURE_BATCH):
        xs.append(np.asarray(cut(images), dtype).reshape(len(images), -1))
        ys.append(labels.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray) -> float:
    """scikit-learn's StandardScaler + LogisticRegression (C=1) fitted on the training features,
    scored on the validation ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x_train, y_train)
    return float(probe.score(x_valid, y_valid))


def linear_probe(cut: keras.Model, records_dir: str) -> ProbeResult:
    """Logistic regression fitted on the standardized training features, scored on the validation split."""
    from pipeline.manifest import load_manifest

    features = int(np.prod(cut.output.shape[1:]))
    dtype = np.float64 if load_manifest(records_dir).splits["train"].count * features * 8 <= FLOAT64_LIMIT else np.float32
    x_train, y_train = frozen_features(cut, records_dir, "train", dtype)
    x_valid, y_valid = frozen_features(cut, records_dir, "valid", dtype)
    return ProbeResult(accuracy=probe_accuracy(x_train, y_train, x_valid, y_valid),
                       train_feature_rms=float(np.sqrt(np.mean(np.square(x_train, dtype=np.float64)))))
