"""model_card.md: written by evaluate beside report.json, with the report's numbers and the warnings."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from model.evaluation.model_card import MODEL_CARD_NAME, model_card, wilson_interval


@pytest.mark.parametrize("correct, n, expected", [
    (8, 10, (0.4902, 0.9433)),     # worked by hand from Wilson's formula (z = 1.96)
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
    (450, 500, (0.8706, 0.9233)),
])
def test_wilson_interval(correct, n, expected):
    low, high = wilson_interval(correct, n)
    assert (round(low, 4), round(high, 4)) == expected
    assert wilson_interval(0, 0) is None


def _report(labels, scores, ages) -> dict:
    from model.evaluation.evaluate import AGE_GROUP_RULE, split_metrics
    from pipeline.schema import AGE_GROUP_NAMES

    return {"model": "/m/gender_classifier.keras", "records": "/r", "positive_class": "male",
            "decision_rule": "predicted male when score > 0.5, female otherwise",
            "age_groups": list(AGE_GROUP_NAMES), "age_group_rule": AGE_GROUP_RULE, "splits": ["valid"],
            "valid": split_metrics(np.array(labels), np.array(scores), np.array(ages))}


def test_the_card_shows_the_report_by_gender_and_age_group():
    # 6 women (one misclassified, all aged 30), 4 men (two misclassified, aged 5 and 30).
    labels = [0] * 6 + [1] * 4
    scores = [0.1, 0.2, 0.3, 0.1, 0.2, 0.9] + [0.8, 0.7, 0.4, 0.3]
    ages = [30] * 6 + [30, 5, 5, 30]
    card = model_card(_report(labels, scores, ages))
    assert card.startswith("# Model card: gender_classifier.keras")
    row = re.search(r"^\| 10 \| 0\.700 \[(\S+), (\S+)\] \|", card, re.M)
    assert row and (float(row[1]), float(row[2])) == tuple(round(x, 3) for x in wilson_interval(7, 10))
    assert re.search(r"^\| female \| 6 \| 0\.833 \[", card, re.M)
    assert re.search(r"^\| male \| 4 \| 0\.500 \[", card, re.M)
    assert re.search(r"^\| 4-6 \| 2 \| 0\.500 \[.*\| – \| 0\.500 \(2\) \|$", card, re.M)
    assert re.search(r"^\| 25-32 \| 8 \| 0\.750 \[.*\| 0\.833 \(6\) \| 0\.500 \(2\) \|$", card, re.M)
    assert re.search(r"^\| 0-2 \| 0 \| – \| – \| – \|$", card, re.M)
    assert "Worst age group: **4-6**, accuracy 0.500 (n = 2)" in card
    assert "Against always answering the more frequent class (female): accuracy 0.600." in card
    assert "Warning" not in card
    one_class = model_card(_report(labels, [0.1] * 10, ages))
    assert "**Warning: the model answered female for every face of this split.**" in one_class
    for heading in ("## Model", "## Data", "## Metrics", "## Intended use", "## Limitations and ethical considerations"):
        assert heading in card
    assert "not anybody's gender identity" in card and "Not for decisions about real people" in card


def test_evaluate_writes_the_card_beside_the_report(classifier_path, records_dir, tmp_path):
    from model.evaluation.evaluate import evaluate
    from model.evaluation.report import write_report

    report = write_report(evaluate(classifier_path, records_dir, split="all"), str(tmp_path))
    assert report["files"]["model_card"] == MODEL_CARD_NAME
    with open(tmp_path / "report.json") as f:
        assert json.load(f)["files"]["model_card"] == MODEL_CARD_NAME
    card = (tmp_path / MODEL_CARD_NAME).read_text()
    with open(os.path.join(records_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert f"`{manifest['source_root']}`" in card
    for split in ("train", "valid"):
        m = report[split]
        assert f"### {split}" in card
        assert f"| {m['n']} | {m['accuracy']:.3f} [" in card
        assert f"Evaluated split `{split}`: {m['n']} faces ({m['by_gender']['female']['n']} female" in card
    assert not list(tmp_path.glob("*.tmp"))
