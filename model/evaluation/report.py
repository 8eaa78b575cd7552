"""The evaluation report on disk: report.json, predictions.csv and PNG plots, plus the short summary.

One set of plots per split, named `<split>_<kind>.png` (model/evaluation/plots.py draws them).
"""
from __future__ import annotations

import csv
import os
from typing import Iterable

from model.contract import DECISION_THRESHOLD, POSITIVE_CLASS, decision_rule, label_name
from model.evaluation.evaluate import AGE_GROUP_RULE, Evaluation, SplitPredictions
from model.evaluation.model_card import write_model_card
from model.evaluation.plots import write_plots
from model.tta import TTA_DESCRIPTIONS
from pipeline.files import write_json_atomically
from pipeline.schema import AGE_GROUP_NAMES, LABEL_NAMES

REPORT_NAME = "report.json"
PREDICTIONS_NAME = "predictions.csv"
PREDICTION_COLUMNS = ("split", "path", "age", "age_group", "label", "score", "predicted")


def default_report_dir(model_path: str) -> str:
    """<model dir>/<model stem>_report, beside the model."""
    stem = os.path.splitext(os.path.basename(model_path.rstrip("/")))[0]
    return os.path.join(os.path.dirname(model_path), f"{stem}_report")


def build_report(evaluation: Evaluation) -> dict:
    """The report.json body (without the file list): shared facts, `splits` (the names evaluated),
    then one entry per split under its own name (report["valid"]["accuracy"], ...)."""
    decision = evaluation.decision
    return {
        "model": evaluation.model_path,
        "records": evaluation.records_dir,
        "threshold": decision["threshold"],
        # default (model/contract.py), flag (given to this run) or model (stored in the model file).
        "threshold_source": decision["source"],
        "positive_class": POSITIVE_CLASS,
        "decision_rule": decision_rule(decision["threshold"]),
        "temperature": temperature_entry(decision),
        "calibration_fit": decision.get("calibration_fit"),
        "stored": decision.get("stored"),
        # Which test-time augmentation made the scores: the same model gives other numbers with another.
        "tta": evaluation.tta,
        "tta_rule": TTA_DESCRIPTIONS[evaluation.tta],
        "age_groups": list(AGE_GROUP_NAMES),
        "age_group_rule": AGE_GROUP_RULE,
        "splits": list(evaluation.metrics),
        **evaluation.metrics,
    }


def temperature_entry(decision: dict) -> dict:
    """The temperature the reported scores were divided by, and where it came from."""
    fit = decision.get("calibration_fit")
    if fit is not None:
        where = "stored in the model by this run" if decision.get("stored", {}) and "temperature" in decision["stored"] \
            else "not stored: the model file still gives the scores of the loaded temperature"
        return {"value": fit["temperature"], "source": f"fitted on split {fit['split']} ({where})"}
    loaded = decision.get("temperature", 1.0)
    return {"value": loaded, "source": "model" if loaded != 1.0 else "none: the trained scores"}


def write_report(evaluation: Evaluation, report_dir: str) -> dict:
    """Write report.json, predictions.csv and the plots into report_dir; return the report body."""
    os.makedirs(report_dir, exist_ok=True)
    report = build_report(evaluation)
    plots = {}
    for split, predictions in evaluation.predictions.items():
        plots[split] = write_plots(predictions, evaluation.metrics[split], report_dir, evaluation.decision["threshold"])
    write_predictions_csv(os.path.join(report_dir, PREDICTIONS_NAME), evaluation.predictions.values(),
                          evaluation.decision["threshold"])
    report["files"] = {"predictions": PREDICTIONS_NAME, "plots": plots}
    report["files"]["model_card"] = write_model_card(report, report_dir)
    write_json_atomically(os.path.join(report_dir, REPORT_NAME), report)
    return report


def write_predictions_csv(path: str, predictions: Iterable[SplitPredictions], threshold: float = DECISION_THRESHOLD) -> int:
    """One row per example (header first), decided at `threshold`; returns the number of rows written."""
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for p in predictions:
            for path_, age, group, label, score in zip(p.paths, p.ages, p.age_groups, p.labels, p.scores):
                # 9 significant digits round-trip a float32 exactly.
                writer.writerow((p.split, path_, int(age), group, LABEL_NAMES[int(label)],
                                 f"{float(score):.9g}", label_name(float(score), threshold)))
                rows += 1
    return rows
