"""The evaluation report on disk: report.json, predictions.csv and PNG plots, plus the short summary.

One set of plots per split, named `<split>_<kind>.png` (model/evaluation/plots.py draws them).
"""
from __future__ import annotations

import csv
import os
from contextlib import contextmanager
from typing import Iterable, Iterator

from model.contract import DECISION_THRESHOLD, POSITIVE_CLASS, decision_rule, label_name
from model.evaluation.evaluate import AGE_GROUP_RULE, Evaluation, SplitPredictions
from model.evaluation.model_card import write_model_card
from model.evaluation.plots import write_plots
from model.tta import TTA_DESCRIPTIONS
from pipeline.errors import DataError
from pipeline.files import replacing, write_json_atomically
from pipeline.schema import AGE_GROUP_NAMES, LABEL_NAMES

REPORT_NAME = "report.json"
CV_REPORT_NAME = "cv_report.json"     # evaluate --folds (model/evaluation/crossval.py)
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


def check_report_dir(report_dir: str) -> None:
    """Before any evaluation: the report folder can be replaced whole (it is written as a new folder
    beside it and swapped in at the end). DataError when it is a file, when it holds files that are
    not a report's (the swap would remove them), or when its parent cannot take the new folder."""
    report_dir = os.path.normpath(report_dir)
    parent = os.path.dirname(os.path.abspath(report_dir))
    if os.path.lexists(report_dir):
        if os.path.islink(report_dir):
            raise DataError(f"`report_dir` {report_dir} is a symbolic link, and a report replaces its folder "
                            f"whole; pass the folder it points to", field="report_dir")
        if not os.path.isdir(report_dir):
            raise DataError(f"`report_dir` {report_dir} is not a folder; pass a folder path for the report",
                            field="report_dir")
        names = set(os.listdir(report_dir))
        if names and not names & {REPORT_NAME, CV_REPORT_NAME}:
            raise DataError(f"`report_dir` {report_dir} holds files but no {REPORT_NAME}: it is not an earlier "
                            f"report, and a report replaces its folder whole; pass a new or empty folder",
                            field="report_dir")
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"cannot write the report beside {report_dir}: no permission to write in {parent}; "
                        f"pass another `report_dir`", field="report_dir")


@contextmanager
def new_report_dir(report_dir: str) -> Iterator[str]:
    """A new, empty folder beside report_dir for every file of a report; when the block ends without
    an exception it replaces report_dir whole (pipeline.files.replacing), otherwise it is removed
    and report_dir is untouched. A killed or interrupted run never leaves a report folder whose files
    come from two runs. Every writer of a report file takes the folder this yields."""
    check_report_dir(report_dir)
    with replacing(report_dir) as folder:
        os.makedirs(folder)
        yield folder


def write_report(evaluation: Evaluation, report_dir: str) -> dict:
    """Write report.json, predictions.csv, the plots and the model card as a new report_dir, swapped
    in whole at the end (new_report_dir); return the report body."""
    with new_report_dir(report_dir) as folder:
        return write_report_files(evaluation, folder)


def write_report_files(evaluation: Evaluation, report_dir: str) -> dict:
    """Write report.json, predictions.csv and the plots into report_dir (new_report_dir's temporary
    folder: write_report swaps it in); return the report body."""
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
