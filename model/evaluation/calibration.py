"""How far a classifier's scores can be read as probabilities, and what a decision threshold does to
each group: expected calibration error, Brier score, reliability bins, temperature scaling, the
error rate of each gender and age group at a threshold, and two thresholds chosen on a split.

Pure numpy (and scipy for the one-dimensional fit); no model, no files.

Definitions (stated in the report too, from the constants below):
- ECE as in Guo, Pleiss, Sun and Weinberger, "On calibration of modern neural networks" (ICML 2017):
  the confidence of a score p is that of the class it predicts, max(p, 1 - p); the confidences are
  cut into ECE_BINS equal-width bins over [0, 1] (each bin (low, high], the first also holding 0),
  and ECE = sum over bins of (bin count / n) x |accuracy in the bin - mean confidence in the bin|,
  accuracy being the argmax decision's (score > 0.5), whatever threshold the report decides at:
  calibration is a property of the probabilities, not of a threshold.
- Brier score: the mean of (p - y)^2, p the probability of male and y 1 for male, 0 for female.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.errors import DataError
from pipeline.schema import AGE_GROUP_NAMES, AGE_UNKNOWN_GROUP, LABEL_NAMES, age_group_of

ECE_BINS = 15
ECE_RULE = (f"expected calibration error (Guo et al. 2017): confidence max(p, 1 - p) in {ECE_BINS} equal-width "
            f"bins over [0, 1], the count-weighted mean of |accuracy - mean confidence| per bin, accuracy of "
            f"the argmax decision (score > 0.5)")
BRIER_RULE = "Brier score: mean of (p - y)^2, p the probability of male, y = 1 for male, 0 for female"
# The two thresholds the report chooses on a named split.
EQUAL_ERROR = "equal_error"
MAX_ACCURACY = "max_accuracy"
THRESHOLD_CHOICES = (EQUAL_ERROR, MAX_ACCURACY)
# Bounds of the temperature fit: far beyond any useful temperature, finite so the fit always ends.
# A fit that ends at one (a split the model separates perfectly wants T -> 0) is no calibration.
TEMPERATURE_BOUNDS = (1e-2, 1e2)
_LOG_T_BOUNDS = (math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1]))


# ------------------------------------------------------------------ calibration
def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, np.float64).reshape(-1)
    p = np.asarray(scores, np.float64).reshape(-1)
    if y.shape != p.shape:
        raise DataError(f"labels and scores differ in length ({len(y)} and {len(p)})")
    return y, p


def reliability_bins(labels, scores, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin: its bounds, count, mean confidence and accuracy (None when
    empty); the bins of the ECE and the bars of the reliability diagram."""
    y, p = _as_arrays(labels, scores)
    confidence = np.maximum(p, 1.0 - p)
    correct = ((p > 0.5).astype(np.float64) == y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin k holds (edges[k], edges[k + 1]]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for k in range(bins):
        mask = index == k
        n = int(mask.sum())
        out.append({"low": float(edges[k]), "high": float(edges[k + 1]), "n": n,
                    "confidence": float(confidence[mask].mean()) if n else None,
                    "accuracy": float(correct[mask].mean()) if n else None})
    return out


def expected_calibration_error(labels, scores, bins: int = ECE_BINS) -> float | None:
    """ECE of the module docstring; None without examples."""
    table = reliability_bins(labels, scores, bins)
    n = sum(b["n"] for b in table)
    if n == 0:
        return None
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in table if b["n"]))


def brier_score(labels, scores) -> float | None:
    """Mean squared difference between the probability of male and the 0/1 label; None without examples."""
    y, p = _as_arrays(labels, scores)
    return float(np.mean((p - y) ** 2)) if len(y) else None


def _ece_and_brier(labels: np.ndarray, scores: np.ndarray) -> dict:
    return {"n": int(len(labels)), "ece": expected_calibration_error(labels, scores),
            "brier": brier_score(labels, scores)}


def calibration_metrics(labels, scores, ages) -> dict:
    """ECE and Brier score of a split, per true gender and per age group (with its genders), and the
    reliability bins of the whole split."""
    labels = np.asarray(labels, np.int64)
    scores = np.asarray(scores, np.float64)
    groups = np.array([age_group_of(int(a)) for a in ages], dtype=object)
    out = {**_ece_and_brier(labels, scores), "bins": ECE_BINS, "ece_rule": ECE_RULE, "brier_rule": BRIER_RULE,
           "reliability": reliability_bins(labels, scores)}
    out["by_gender"] = {name: _ece_and_brier(labels[labels == k], scores[labels == k])
                        for k, name in enumerate(LABEL_NAMES)}
    by_age = {}
    for name in _age_groups_present(groups):
        mask = groups == name
        entry = _ece_and_brier(labels[mask], scores[mask])
        entry["by_gender"] = {g: _ece_and_brier(labels[mask & (labels == k)], scores[mask & (labels == k)])
                              for k, g in enumerate(LABEL_NAMES)}
        by_age[name] = entry
    out["by_age"] = by_age
    return out


def _age_groups_present(groups: np.ndarray) -> tuple[str, ...]:
    # As evaluate's split_metrics: every Adience group, "unknown" only when some ages are unknown.
    return AGE_GROUP_NAMES + ((AGE_UNKNOWN_GROUP,) if np.any(groups == AGE_UNKNOWN_GROUP) else ())


# ------------------------------------------------------------------ temperature scaling
def sigmoid(z) -> np.ndarray:
    """The logistic function in float64, without overflow warnings."""
    z = np.asarray(z, np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def fit_temperature(labels, logits) -> float:
    """The temperature T > 0 minimizing the mean binary cross-entropy of sigmoid(logit / T) (Guo et al.
    2017): one parameter, so the ranking of the scores (and the ROC AUC) does not change."""
    from scipy.optimize import minimize_scalar

    y, z = _as_arrays(labels, logits)
    if len(y) == 0:
        raise DataError("no examples to fit a temperature on")
    if not np.all(np.isfinite(z)):
        raise DataError("cannot fit a temperature on non-finite logits")

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + e^-s) for males, log(1 + e^s) for females, stable for any s.
        return float(np.mean(np.logaddexp(0.0, np.where(y > 0.5, -s, s))))

    result = minimize_scalar(loss, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def at_bound(temperature: float) -> bool:
    """True when a fitted temperature sits at a bound of the fit (within 1 %): the loss kept falling
    there, as it does on a split the model separates perfectly, and the value means nothing."""
    low, high = TEMPERATURE_BOUNDS
    return temperature <= low * 1.01 or temperature >= high / 1.01


# ------------------------------------------------------------------ thresholds
def _rates(labels: np.ndarray, predicted: np.ndarray) -> dict:
    n = int(len(labels))
    accuracy = float(np.mean(labels == predicted)) if n else None
    return {"n": n, "accuracy": accuracy, "error_rate": None if accuracy is None else 1.0 - accuracy}


def _by_gender(labels: np.ndarray, predicted: np.ndarray) -> dict:
    return {name: _rates(labels[labels == k], predicted[labels == k]) for k, name in enumerate(LABEL_NAMES)}


def rates_at(labels, scores, ages, threshold: float) -> dict:
    """Accuracy and error rate overall, per true gender and per age group (with its genders) when
    deciding male for score > threshold."""
    from model.contract import predicted_labels

    labels = np.asarray(labels, np.int64)
    predicted = predicted_labels(scores, threshold)
    groups = np.array([age_group_of(int(a)) for a in ages], dtype=object)
    out = {"threshold": float(threshold), **_rates(labels, predicted), "by_gender": _by_gender(labels, predicted)}
    out["by_age"] = {}
    for name in _age_groups_present(groups):
        mask = groups == name
        out["by_age"][name] = {**_rates(labels[mask], predicted[mask]),
                               "by_gender": _by_gender(labels[mask], predicted[mask])}
    return out


def _candidate_errors(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every threshold that separates the scores differently (0, then the midpoints between distinct
    scores, then 1), with the female and male error rates at each."""
    y, p = _as_arrays(labels, scores)
    females, males = np.sort(p[y < 0.5]), np.sort(p[y > 0.5])
    if len(females) == 0 or len(males) == 0:
        raise DataError("choosing a threshold needs faces of both genders in the split")
    distinct = np.unique(p)
    candidates = np.unique(np.concatenate([[0.0], (distinct[:-1] + distinct[1:]) / 2.0, [1.0]]))
    female_error = (len(females) - np.searchsorted(females, candidates, side="right")) / len(females)
    male_error = np.searchsorted(males, candidates, side="right") / len(males)
    return candidates, female_error, male_error


def choose_thresholds(labels, scores) -> dict:
    """The threshold at which the two genders' error rates are closest (ties: the better accuracy, then
    the nearer 0.5) and the one of the best accuracy (ties: the nearer 0.5), each with the error
    rates it gives on these labels and scores."""
    candidates, female_error, male_error = _candidate_errors(labels, scores)
    y = np.asarray(labels).reshape(-1)
    n_male = float(np.sum(y > 0.5))
    accuracy = 1.0 - (female_error * (len(y) - n_male) + male_error * n_male) / len(y)
    near_half = np.abs(candidates - 0.5)
    gap = np.abs(female_error - male_error)
    # np.lexsort sorts by its last key first.
    equal = int(np.lexsort((near_half, -accuracy, np.round(gap, 12)))[0])
    best = int(np.lexsort((near_half, -np.round(accuracy, 12)))[0])
    # Thresholds as float32 values: what the model's float32 scores are compared with (model/contract.py).
    return {name: {"threshold": float(np.float32(candidates[i])), "accuracy": float(accuracy[i]),
                   "error_rate": {LABEL_NAMES[0]: float(female_error[i]), LABEL_NAMES[1]: float(male_error[i])}}
            for name, i in ((EQUAL_ERROR, equal), (MAX_ACCURACY, best))}
