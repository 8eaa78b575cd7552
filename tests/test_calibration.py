"""Calibration maths (model/evaluation/calibration.py) against hand computations: no model, no TensorFlow."""
from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.calibration import (ECE_BINS, EQUAL_ERROR, MAX_ACCURACY, brier_score, calibration_metrics,
                                          choose_thresholds, expected_calibration_error, fit_temperature,
                                          rates_at, reliability_bins, sigmoid)
from pipeline.errors import DataError


def test_ece_and_brier_match_a_hand_computation():
    # Scores p (probability of male) and labels y; confidence max(p, 1 - p); correct = (p > 0.5) == y.
    p = np.array([0.9, 0.8, 0.3, 0.1, 0.6, 0.55])
    y = np.array([1, 0, 0, 0, 1, 0])
    # Confidences 0.9, 0.8, 0.7, 0.9, 0.6, 0.55 in 15 bins of width 1/15:
    #   0.55 -> (0.5333, 0.6]  : 0.55 (wrong), 0.6 (right) -> bin of two: confidence 0.575, accuracy 0.5
    #   0.7  -> (0.6667, 0.7333]: right -> |1 - 0.7| = 0.3
    #   0.8  -> (0.8, ...]? 0.8 = 12/15 is a bin edge: bin (0.7333, 0.8] -> wrong -> |0 - 0.8| = 0.8
    #   0.9  -> (0.8667, 0.9333]: both right -> |1 - 0.9| = 0.1
    expected = (2 * abs(0.5 - 0.575) + 1 * 0.3 + 1 * 0.8 + 2 * 0.1) / 6
    assert expected_calibration_error(y, p) == pytest.approx(expected, abs=1e-12)
    brier = np.mean([(0.9 - 1) ** 2, 0.8 ** 2, 0.3 ** 2, 0.1 ** 2, (0.6 - 1) ** 2, 0.55 ** 2])
    assert brier_score(y, p) == pytest.approx(brier, abs=1e-12)
    bins = reliability_bins(y, p)
    assert len(bins) == ECE_BINS and sum(b["n"] for b in bins) == 6
    assert [b["n"] for b in bins if b["n"]] == [2, 1, 1, 2]


def test_a_perfectly_calibrated_split_has_zero_ece_and_per_group_entries():
    # In the 0.75-confidence bin three of four are right: calibrated.
    p = np.array([0.75, 0.75, 0.75, 0.75, 0.25, 0.25, 0.25, 0.25])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    ages = np.array([30, 30, 30, 30, 5, 5, 5, 5])
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    m = calibration_metrics(y, p, ages)
    assert m["n"] == 8 and m["bins"] == ECE_BINS and "Guo" in m["ece_rule"]
    assert m["by_gender"]["female"]["n"] == 4
    # Per gender the confidence is the same, accuracy 3/4 for each: still calibrated.
    assert m["by_gender"]["male"]["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["by_age"]["25-32"]["n"] == 4 and m["by_age"]["0-2"]["ece"] is None
    assert m["by_age"]["25-32"]["by_gender"]["male"]["brier"] == pytest.approx(0.0625)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 6, 20000)
    labels = (rng.random(20000) < sigmoid(logits / 3.0)).astype(np.int64)
    assert fit_temperature(labels, logits) == pytest.approx(3.0, rel=0.05)
    with pytest.raises(DataError):
        fit_temperature([], [])


def test_thresholds_equalize_errors_and_maximize_accuracy():
    # Females 0.1 0.2 0.6, males 0.4 0.7 0.8 0.9: at 0.5 female error 1/3, male error 1/4.
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.8, 0.9])
    chosen = choose_thresholds(y, p)
    best = chosen[MAX_ACCURACY]
    # 0.3 and 0.65 both give 6/7 (0.5 gives 5/7); 0.65 is the nearer 0.5.
    assert best["accuracy"] == pytest.approx(6 / 7)
    assert best["threshold"] == pytest.approx(0.65)
    equal = chosen[EQUAL_ERROR]
    # At 0.3: female 1/3, male 0; at 0.5: 1/3 vs 1/4 (gap 1/12); at 0.65: 0 vs 1/4; at 0.15: 2/3 vs 0.
    assert equal["threshold"] == pytest.approx(0.5)
    assert equal["error_rate"] == {"female": pytest.approx(1 / 3), "male": pytest.approx(1 / 4)}
    at = rates_at(y, p, np.full(7, 30), 0.65)
    assert at["by_gender"]["female"]["error_rate"] == 0.0 and at["by_gender"]["male"]["error_rate"] == 0.25
    assert at["by_age"]["25-32"]["n"] == 7 and at["by_age"]["0-2"]["accuracy"] is None
    with pytest.raises(DataError):
        choose_thresholds([1, 1], [0.2, 0.9])


def test_a_perfectly_separated_split_ends_the_fit_at_a_bound():
    from model.evaluation.calibration import TEMPERATURE_BOUNDS, at_bound

    temperature = fit_temperature([0, 0, 1, 1], [-3.0, -1.0, 2.0, 4.0])
    assert temperature == pytest.approx(TEMPERATURE_BOUNDS[0], rel=0.01) and at_bound(temperature)
    assert not at_bound(1.0)


def test_the_report_and_the_card_say_which_threshold_decided_and_where_from(tmp_path):
    from model.evaluation.evaluate import Evaluation, SplitPredictions, split_metrics
    from model.evaluation.model_card import model_card
    from model.evaluation.report import build_report, write_predictions_csv

    y = np.array([0, 0, 1, 1])
    p = np.array([0.2, 0.6, 0.65, 0.9], np.float32)
    ages = np.array([30, 30, 5, 5])
    predictions = SplitPredictions("valid", ["a", "b", "c", "d"], y, ages, p)
    evaluation = Evaluation("m.keras", "r", {"valid": predictions}, {"valid": split_metrics(y, p, ages, 0.62)},
                            decision={"threshold": 0.62, "source": "flag", "temperature": 1.0})
    report = build_report(evaluation)
    assert (report["threshold"], report["threshold_source"]) == (0.62, "flag")
    assert report["valid"]["accuracy"] == 1.0 and "score > 0.62" in report["decision_rule"]
    card = model_card(report)
    assert "Decision threshold: 0.62, given to this run (`--threshold`)." in card
    write_predictions_csv(str(tmp_path / "p.csv"), [predictions], 0.62)
    assert [line.split(",")[-1] for line in open(tmp_path / "p.csv").read().split()[1:]] == \
        ["female", "female", "male", "male"]
