"""The contract every command shares: a score of exactly 0.5 is one class everywhere (training's
counts, `evaluate`, `classify`, the SavedModel), and a cut the weights cannot carry is refused."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from model.contract import DECISION_THRESHOLD, label_name, predicted_labels
from pipeline.schema import LABEL_NAMES


@pytest.fixture(scope="module")
def half_model(model, tmp_path_factory):
    """The trained classifier with its output layer zeroed: every score is exactly sigmoid(0) = 0.5."""
    import keras

    from model.network.head import OUTPUT_LAYER

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    output = clone.get_layer(OUTPUT_LAYER)
    output.set_weights([np.zeros_like(w) for w in output.get_weights()])
    path = str(tmp_path_factory.mktemp("half") / "half.keras")
    clone.save(path)
    return clone, path


def _valid_images(records_dir: str):
    from pipeline.reader import make_dataset

    return make_dataset(records_dir, "valid", batch_size=8)


def test_the_threshold_is_strict_and_one_definition_decides(records_dir):
    assert DECISION_THRESHOLD == 0.5
    assert predicted_labels(np.array([0.5, np.nextafter(0.5, 1)])).tolist() == [0, 1]
    assert label_name(0.5) == LABEL_NAMES[0]


def test_training_counts_a_score_of_one_half_as_female(half_model, records_dir):
    import keras

    from model.training.steps import make_steps

    clone, _ = half_model
    images = clone.input_shape[1]
    strategy = tf.distribute.get_strategy()
    steps = make_steps(strategy, clone, keras.optimizers.Adam(),
                       global_batch=8, loss_scaling=False, image_size=images, jit=False)
    labels = np.concatenate([b[1].numpy() for b in _valid_images(records_dir)])
    sums = steps.evaluate(iter(_valid_images(records_dir)), 1000).numpy()
    _, correct, count, male, _ = sums
    assert count == len(labels)
    assert male == 0, "a score of exactly 0.5 was counted as male in training"
    assert correct == np.sum(labels == 0)


def test_evaluate_classify_and_savedmodel_say_female_at_one_half(half_model, records_dir, adience_root, tmp_path):
    from model.evaluation.evaluate import evaluate
    from model.inference.classify import classify_files
    from model.network.serving import LABEL_OUTPUT, SERVING_DEFAULT, export_savedmodel

    clone, path = half_model
    result = evaluate(path, records_dir, split="valid")
    metrics = result.metrics["valid"]
    assert metrics["one_class_predictions"] == LABEL_NAMES[0]
    assert metrics["accuracy"] == pytest.approx(metrics["by_gender"][LABEL_NAMES[0]]["n"] / metrics["n"])

    root, summary = adience_root
    rows = classify_files(clone, [os.path.join(root, rel) for rel in sorted(summary.images)[:4]])
    assert [r.score for r in rows] == [0.5] * 4
    assert {r.label for r in rows} == {LABEL_NAMES[0]}

    export_savedmodel(clone, str(tmp_path / "sm"))
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures[SERVING_DEFAULT]
    size = clone.input_shape[1]
    out = served(image=tf.zeros([2, size, size, 3], tf.uint8))
    assert [v.decode() for v in out[LABEL_OUTPUT].numpy()] == [LABEL_NAMES[0]] * 2


def test_a_cut_above_pool5_at_another_image_size_is_refused_in_one_line(slim_t7):
    from model.errors import ModelError
    from model.network.backbone import load_backbone
    from model.network.head import build_classifier

    backbone = load_backbone(slim_t7, image_size=160)
    build_classifier(backbone, cut_layer="pool5", freeze_through="pool5")   # at or below pool5: fine
    with pytest.raises(ModelError, match=r"above pool5.*224x224.*160x160") as caught:
        build_classifier(backbone, cut_layer="relu6", freeze_through="relu6")
    assert "\n" not in str(caught.value)


def test_library_errors_name_settings_and_the_cli_shows_their_flags(slim_t7, records_dir, tmp_path):
    import cli
    from model.errors import ModelError
    from model.training import TrainConfig
    from model.training.config import check_config

    config = TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "m.keras"), batch_size=0)
    with pytest.raises(ModelError) as caught:
        check_config(config)
    assert caught.value.field == "batch_size" and "--" not in str(caught.value)
    parser = cli.build_parser()
    assert cli.in_flags(str(caught.value), parser, "train").startswith("-b1/--batch-size must be at least 1")
    # A name that is no flag of the command stays as the library wrote it.
    assert cli.in_flags("`records` and `nothing_like_it`", parser, "train") == "-i/--input and `nothing_like_it`"
