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


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float           # on the validation split
    train_feature_rms: float  # sqrt of the mean square of the training images' features


def cut_model(weights: str, image_size: int = DEFAULT_IMAGE_SIZE, layer: str = DEFAULT_CUT_LAYER) -> keras.Model:
    """The VGG-Face of `weights` (a VGG_FACE.t7 or converted .keras) up to `layer`."""
    from model.network.backbone import load_backbone

    backbone = load_backbone(weights, image_size=image_size)
    return keras.Model(backbone.input, backbone.get_layer(layer).output)


def frozen_features(cut: keras.Model, records_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The flattened features (float64) of every image of a records split, in file order, and the labels."""
    from pipeline.reader import make_dataset

    xs, ys = [], []
    for images, labels in make_dataset(records_dir, split, FEATURE_BATCH):
        xs.append(np.asarray(cut(images), np.float64).reshape(len(images), -1))
        ys.append(labels.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def linear_probe(cut: keras.Model, records_dir: str) -> ProbeResult:
    """Logistic regression fitted on the standardized training features, scored on the validation split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = frozen_features(cut, records_dir, "train")
    x_valid, y_valid = frozen_features(cut, records_dir, "valid")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x_train, y_train)
    return ProbeResult(accuracy=float(probe.score(x_valid, y_valid)),
                       train_feature_rms=float(np.sqrt(np.mean(np.square(x_train)))))
