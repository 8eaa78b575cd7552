"""`evaluate` with a calibration split: refusing the reported split, the temperature and thresholds in
report.json and the model card, storing them in the model file, and `classify --threshold`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import CLI
from model.contract import DECISION_THRESHOLD
from pipeline.errors import DataError


@pytest.mark.parametrize("split, calibrate_on", [("valid", "valid"), ("all", "train")])
def test_fitting_on_a_reported_split_is_refused(classifier_path, records_dir, split, calibrate_on):
    from model.evaluation.evaluate import evaluate

    with pytest.raises(DataError, match="`calibrate_on` .* is a split being reported"):
        evaluate(classifier_path, records_dir, split=split, calibrate_on=calibrate_on)


def test_a_chosen_threshold_cannot_be_stored_without_its_temperature(classifier_path, records_dir):
    from model.evaluation.evaluate import evaluate

    with pytest.raises(DataError, match="store_calibration"):
        evaluate(classifier_path, records_dir, split="valid", calibrate_on="train", store_threshold="equal_error")


def test_calibrated_report_and_stored_model(classifier_path, records_dir, tmp_path):
    from model.evaluation.calibration import EQUAL_ERROR, MAX_ACCURACY
    from model.evaluation.evaluate import evaluate
    from model.evaluation.report import write_report
    from model.network.calibrated import stored_threshold, temperature_of
    from model.network.head import load_classifier

    path = str(tmp_path / "m.keras")
    shutil.copy(classifier_path, path)
    evaluation = evaluate(path, records_dir, split="valid", calibrate_on="train", store_calibration=True,
                          store_threshold="0.3")
    report = write_report(evaluation, str(tmp_path / "report"))
    fit = report["calibration_fit"]
    assert fit["split"] == "train" and fit["temperature"] > 0
    assert report["threshold"] == pytest.approx(0.3) and report["threshold_source"] == "model"
    assert report["temperature"]["value"] == pytest.approx(fit["temperature"])
    assert "stored in the model" in report["temperature"]["source"]
    valid = report["valid"]
    assert valid["threshold"] == pytest.approx(0.3)
    assert set(valid["at_thresholds"]) == {"default", "used (model)", EQUAL_ERROR, MAX_ACCURACY}
    assert valid["at_thresholds"]["default"]["threshold"] == DECISION_THRESHOLD
    for entry in valid["at_thresholds"].values():
        assert set(entry["by_gender"]) == {"female", "male"} and "25-32" in entry["by_age"]
    assert valid["calibration"]["bins"] == 15 and valid["calibration"]["ece"] is not None
    assert os.path.exists(os.path.join(str(tmp_path / "report"), report["files"]["plots"]["valid"]["reliability"]))
    card = open(os.path.join(str(tmp_path / "report"), "model_card.md"), encoding="utf-8").read()
    assert "Decision threshold: 0.3, stored in the model file." in card
    assert "Temperature scaling fitted on split `train`" in card and "Calibration (expected calibration" in card

    # The file now holds them: scores of the model file are the report's scores.
    model = load_classifier(path)
    assert temperature_of(model) == pytest.approx(fit["temperature"], rel=1e-6)
    assert stored_threshold(path) == pytest.approx(0.3)
    again = evaluate(path, records_dir, split="valid")
    np.testing.assert_allclose(again.predictions["valid"].scores, evaluation.predictions["valid"].scores, atol=1e-6)
    assert again.decision["source"] == "model" and again.decision["threshold"] == pytest.approx(0.3)


def test_classify_threshold_changes_labels(model, classifier_path, adience_root):
    from model.inference.classify import classify_files

    root, _ = adience_root
    images = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                    if f.startswith("landmark_aligned_face."))[:8]
    default = classify_files(model, images)
    scores = [r.score for r in default]
    assert [r.label for r in classify_files(model, images, threshold=1.0)] == ["female"] * len(images)
    middle = float(np.median(scores))
    assert [r.label for r in classify_files(model, images, threshold=middle)] == \
        ["male" if s > middle else "female" for s in scores]

    out = subprocess.run([*CLI, "classify", "-m", classifier_path, "-i", *images, "--format", "jsonl",
                          "--threshold", "0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["male" if s > 0 else "female" for s in scores]
    assert "deciding male when score > 0 (--threshold)" in out.stderr
