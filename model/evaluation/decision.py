"""`evaluate`'s calibration step and decision threshold: which threshold a report decides at and where
it came from, the temperature fitted on a split the user names (never a reported one), the two
thresholds chosen there, what each does to every group of the reported splits, and writing the
temperature and a threshold into the model file when the user asks.

Order of precedence of the threshold a report decides at: `threshold` (source "flag"), else the
one this run stores (`store_threshold`, source "model"), else the one stored in the model file
(source "model"), else DECISION_THRESHOLD (source "default").
"""
from __future__ import annotations

import numpy as np

from model.contract import DECISION_THRESHOLD, checked_threshold
from model.evaluation.calibration import (EQUAL_ERROR, MAX_ACCURACY, THRESHOLD_CHOICES, at_bound, brier_score,
                                          choose_thresholds, expected_calibration_error, fit_temperature,
                                          rates_at)
from pipeline.errors import DataError

DEFAULT_KEY = "default"     # the at_thresholds entry of DECISION_THRESHOLD


def check_request(splits: list[str], threshold: float | None, calibrate_on: str | None,
                  store_calibration: bool, store_threshold: str | None) -> None:
    """InputError before any scoring when the settings contradict each other."""
    if threshold is not None:
        checked_threshold(threshold)
    if calibrate_on == "all":
        raise DataError("`calibrate_on` must name one split, not all", field="calibrate_on")
    if calibrate_on is not None and calibrate_on in splits:
        raise DataError(f"`calibrate_on` {calibrate_on} is a split being reported: fit on another split "
                        f"(a temperature or threshold judged on the faces it was fitted to looks better than it is)",
                        field="calibrate_on")
    if store_calibration and calibrate_on is None:
        raise DataError("`store_calibration` needs `calibrate_on`: the split to fit the temperature on",
                        field="store_calibration")
    if store_threshold in THRESHOLD_CHOICES and not store_calibration:
        # The chosen thresholds are thresholds of temperature-scaled scores: storing one alone
        # would decide on the uncalibrated scores with a threshold chosen for other ones.
        raise DataError(f"`store_threshold` {store_threshold} is chosen on the temperature-scaled scores: "
                        f"store the temperature with it (`store_calibration`)", field="store_threshold")
    if store_threshold is not None and store_threshold not in THRESHOLD_CHOICES:
        try:
            value = float(store_threshold)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise DataError(f"`store_threshold` must be {' or '.join(THRESHOLD_CHOICES)} or a number in [0, 1], "
                            f"got {store_threshold!r}", field="store_threshold")


def resolve_threshold(threshold: float | None, stored: float | None) -> dict:
    """{"threshold", "source"} before this run stores anything."""
    if threshold is not None:
        return {"threshold": checked_threshold(threshold), "source": "flag"}
    if stored is not None:
        return {"threshold": stored, "source": "model"}
    return {"threshold": DECISION_THRESHOLD, "source": "default"}


def scores_at(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float32 sigmoid(logit x float32(1 / T)): the ops, in the order and precision, of the model's
    male_temperature and male_prob layers, so these scores are the ones the stored model gives."""
    import tensorflow as tf

    z = np.asarray(logits, np.float32) * np.float32(1.0 / temperature)
    return tf.sigmoid(tf.constant(z, tf.float32)).numpy()


def calibrate(calibration_split, predictions: dict, loaded_temperature: float) -> dict:
    """Fit a temperature on `calibration_split` (SplitPredictions whose scores are logits), turn every
    reported split's logits into temperature-scaled scores in place, and choose the thresholds on the
    calibration split's scaled scores. Returns the report's `calibration_fit` body."""
    temperature = fit_temperature(calibration_split.labels, calibration_split.scores)
    scaled = scores_at(calibration_split.scores, temperature)
    chosen = choose_thresholds(calibration_split.labels, scaled)
    before = {}
    for name, p in predictions.items():
        as_loaded = scores_at(p.scores, loaded_temperature)
        before[name] = {"ece": expected_calibration_error(p.labels, as_loaded), "brier": brier_score(p.labels, as_loaded)}
        p.scores = scores_at(p.scores, temperature)
    loaded = scores_at(calibration_split.scores, loaded_temperature)
    return {"split": calibration_split.split, "n": calibration_split.n, "temperature": temperature,
            "at_bound": at_bound(temperature), "loaded_temperature": loaded_temperature,
            "on_split": {"ece_before": expected_calibration_error(calibration_split.labels, loaded),
                         "ece_after": expected_calibration_error(calibration_split.labels, scaled),
                         "brier_before": brier_score(calibration_split.labels, loaded),
                         "brier_after": brier_score(calibration_split.labels, scaled)},
            "reported_before": before, "thresholds": chosen}


def threshold_to_store(store_threshold: str | None, fit: dict | None) -> float | None:
    """The number `store_threshold` names (a chosen one, or a value); None when nothing is stored."""
    if store_threshold is None:
        return None
    if store_threshold in THRESHOLD_CHOICES:
        return fit["thresholds"][store_threshold]["threshold"]
    return checked_threshold(store_threshold)


def thresholds_for_groups(decision: dict, fit: dict | None) -> dict[str, float]:
    """The thresholds whose effect on every group the report shows: the default, the one decided at,
    and the two chosen on the calibration split."""
    out = {DEFAULT_KEY: DECISION_THRESHOLD}
    if decision["source"] != "default":
        out[f"used ({decision['source']})"] = decision["threshold"]
    if fit is not None:
        for name in (EQUAL_ERROR, MAX_ACCURACY):
            out[name] = fit["thresholds"][name]["threshold"]
    return out


def add_group_rates(metrics: dict, predictions: dict, thresholds: dict[str, float]) -> None:
    """metrics[split]["at_thresholds"][name] = accuracy and error rate of every group at each threshold."""
    for name, p in predictions.items():
        metrics[name]["at_thresholds"] = {key: rates_at(p.labels, p.scores, p.ages, t) for key, t in thresholds.items()}


def store(model_path: str, model, fit: dict | None, store_calibration: bool, threshold: float | None,
          store_threshold: str | None, records_dir: str) -> dict:
    """Rewrite the model file (and the SavedModel beside it) with the fitted temperature and/or the
    threshold; returns what was stored, for the report."""
    from model.network.calibrated import load_decision, save_classifier, with_temperature

    stored: dict = {"model": model_path}
    if store_calibration and fit["at_bound"]:
        raise DataError(f"the temperature fit on split {fit['split']} ended at a bound ({fit['temperature']:.4g}): "
                        f"the model separates that split perfectly, so it says nothing about calibration; "
                        f"not stored (calibrate on a larger or harder held-out split)", field="calibrate_on")
    if store_calibration:
        model = with_temperature(model, fit["temperature"])
        stored["temperature"] = fit["temperature"]
        stored["temperature_fitted_on"] = fit["split"]
    decision = load_decision(model_path)
    if store_calibration and threshold is None and decision is not None:
        # A threshold stored for the old temperature's scores means something else on the new ones.
        stored["threshold_removed"] = decision["threshold"]
        decision = None
    if threshold is not None:
        decision = {"threshold": threshold, "rule": store_threshold, "records": records_dir,
                    "chosen_on": fit["split"] if store_threshold in THRESHOLD_CHOICES else None}
        stored["threshold"] = threshold
    savedmodel = save_classifier(model, model_path, decision)
    stored["savedmodel"] = savedmodel
    return stored
