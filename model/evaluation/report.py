"""The evaluation report on disk: report.json, predictions.csv and PNG plots, plus the short summary.

Plots use matplotlib's Agg backend (files only, no display needed). One set of plots per split,
named `<split>_<kind>.png`.
"""
from __future__ import annotations

import csv
import os
from typing import Iterable

import numpy as np

from model.contract import DECISION_RULE, DECISION_THRESHOLD, POSITIVE_CLASS, label_name
from model.evaluation.evaluate import AGE_GROUP_RULE, Evaluation, SplitPredictions
from model.evaluation.model_card import write_model_card
from pipeline.files import write_json_atomically
from pipeline.schema import AGE_GROUP_NAMES, LABEL_NAMES

REPORT_NAME = "report.json"
PREDICTIONS_NAME = "predictions.csv"
PREDICTION_COLUMNS = ("split", "path", "age", "age_group", "label", "score", "predicted")
PLOT_KINDS = ("roc", "confusion", "age_accuracy", "score_hist")
_GENDER_COLORS = {"female": "#c2477a", "male": "#2f6db5"}


def default_report_dir(model_path: str) -> str:
    """<model dir>/<model stem>_report, beside the model."""
    stem = os.path.splitext(os.path.basename(model_path.rstrip("/")))[0]
    return os.path.join(os.path.dirname(model_path), f"{stem}_report")


def build_report(evaluation: Evaluation) -> dict:
    """The report.json body (without the file list): shared facts, `splits` (the names evaluated),
    then one entry per split under its own name (report["valid"]["accuracy"], ...)."""
    return {
        "model": evaluation.model_path,
        "records": evaluation.records_dir,
        "threshold": DECISION_THRESHOLD,
        "positive_class": POSITIVE_CLASS,
        "decision_rule": DECISION_RULE,
        "age_groups": list(AGE_GROUP_NAMES),
        "age_group_rule": AGE_GROUP_RULE,
        "splits": list(evaluation.metrics),
        **evaluation.metrics,
    }


def write_report(evaluation: Evaluation, report_dir: str) -> dict:
    """Write report.json, predictions.csv and the plots into report_dir; return the report body."""
    os.makedirs(report_dir, exist_ok=True)
    report = build_report(evaluation)
    plots = {}
    for split, predictions in evaluation.predictions.items():
        plots[split] = write_plots(predictions, evaluation.metrics[split], report_dir)
    write_predictions_csv(os.path.join(report_dir, PREDICTIONS_NAME), evaluation.predictions.values())
    report["files"] = {"predictions": PREDICTIONS_NAME, "plots": plots}
    report["files"]["model_card"] = write_model_card(report, report_dir)
    write_json_atomically(os.path.join(report_dir, REPORT_NAME), report)
    return report


def write_predictions_csv(path: str, predictions: Iterable[SplitPredictions]) -> int:
    """One row per example (header first); returns the number of rows written."""
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for p in predictions:
            for path_, age, group, label, score in zip(p.paths, p.ages, p.age_groups, p.labels, p.scores):
                # 9 significant digits round-trip a float32 exactly.
                writer.writerow((p.split, path_, int(age), group, LABEL_NAMES[int(label)],
                                 f"{float(score):.9g}", label_name(float(score))))
                rows += 1
    return rows


# ------------------------------------------------------------------ plots
def _figure(width: float = 6.4, height: float = 4.8):
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _save(plt, fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(predictions: SplitPredictions, metrics: dict, report_dir: str) -> dict[str, str]:
    """The four plots of one split; returns kind -> file name (relative to report_dir)."""
    names = {kind: f"{predictions.split}_{kind}.png" for kind in PLOT_KINDS}
    plot_roc(predictions, metrics, os.path.join(report_dir, names["roc"]))
    plot_confusion(predictions.split, metrics, os.path.join(report_dir, names["confusion"]))
    plot_age_accuracy(predictions.split, metrics, os.path.join(report_dir, names["age_accuracy"]))
    plot_score_histogram(predictions, os.path.join(report_dir, names["score_hist"]))
    return names


def plot_roc(predictions: SplitPredictions, metrics: dict, path: str) -> None:
    from sklearn.metrics import roc_curve

    plt, fig = _figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    if metrics["auc"] is not None:
        fpr, tpr, _ = roc_curve(predictions.labels, predictions.scores)
        ax.plot(fpr, tpr, color="#d55e00", linewidth=2, label=f"model (AUC = {metrics['auc']:.4f})")
    else:
        ax.text(0.5, 0.5, metrics.get("auc_note", "ROC undefined"), ha="center", va="center", wrap=True)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"false positive rate (females taken for {POSITIVE_CLASS})")
    ax.set_ylabel(f"true positive rate ({POSITIVE_CLASS} recall)")
    ax.set_title(f"ROC, {predictions.split} (n = {predictions.n})")
    ax.legend(loc="lower right")
    _save(plt, fig, path)


def plot_confusion(split: str, metrics: dict, path: str) -> None:
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    plt, fig = _figure(10.0, 4.5)
    for i, (matrix, title, fmt) in enumerate(((counts, "counts", "{:d}"),
                                              (normalized, "row-normalized (recall per true class)", "{:.3f}"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
        for r in range(2):
            for c in range(2):
                value = matrix[r, c]
                ax.text(c, r, fmt.format(int(value) if fmt == "{:d}" else float(value)), ha="center",
                        va="center", color="white" if normalized[r, c] > 0.5 else "black", fontsize=14)
        ax.set_xticks([0, 1], [f"pred. {n}" for n in LABEL_NAMES])
        ax.set_yticks([0, 1], [f"true {n}" for n in LABEL_NAMES])
        ax.set_title(f"{split}: {title}")
    _save(plt, fig, path)


def plot_age_accuracy(split: str, metrics: dict, path: str) -> None:
    by_age = metrics["by_age"]
    groups = list(by_age)
    x = np.arange(len(groups))
    width = 0.38
    plt, fig = _figure(10.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for k, gender in enumerate(LABEL_NAMES):
        offset = (k - 0.5) * width
        labelled = False
        for i, group in enumerate(groups):
            entry = by_age[group]["by_gender"][gender]
            if entry["n"] == 0:
                ax.text(x[i] + offset, 0.01, "n=0", ha="center", va="bottom", fontsize=8, color="grey")
                continue
            ax.bar(x[i] + offset, entry["accuracy"], width, color=_GENDER_COLORS[gender],
                   label=None if labelled else gender)
            labelled = True
            ax.text(x[i] + offset, entry["accuracy"] + 0.01, f"n={entry['n']}", ha="center", va="bottom",
                    fontsize=8)
    overall = metrics["accuracy"]
    ax.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"overall {overall:.3f}")
    ax.set_xticks(x, [f"{g}\n(n={by_age[g]['n']})" for g in groups])
    ax.set_ylim(0, 1.25)
    ax.set_xlabel("Adience age group (ages between groups go to the nearest; see report.json)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Accuracy per age group and gender, {split}")
    ax.legend(loc="upper center", ncol=3)
    _save(plt, fig, path)


def plot_score_histogram(predictions: SplitPredictions, path: str) -> None:
    plt, fig = _figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 1.0, 41)
    for k, gender in enumerate(LABEL_NAMES):
        scores = predictions.scores[predictions.labels == k]
        ax.hist(scores, bins=bins, alpha=0.6, color=_GENDER_COLORS[gender], label=f"true {gender} (n={len(scores)})")
    ax.axvline(DECISION_THRESHOLD, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel(f"score (sigmoid = probability of {POSITIVE_CLASS})")
    ax.set_ylabel("examples")
    ax.set_title(f"Score distribution per true class, {predictions.split}")
    ax.legend(loc="upper center")
    _save(plt, fig, path)


# ------------------------------------------------------------------ summary
def summary_lines(report: dict, report_dir: str) -> list[str]:
    """A few lines for the terminal: accuracy and loss per split, the worst age group, where the report is."""
    lines = []
    for split in report["splits"]:
        m = report[split]
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.4f}"
        base = m["majority_baseline"]
        lines.append(f"{split}: n={m['n']}  accuracy={m['accuracy']:.4f} (always {base['class']}: "
                     f"{base['accuracy']:.4f})  loss={m['loss']:.4f}  auc={auc}")
        if m.get("one_class_predictions"):
            lines.append(f"  warning: every prediction is {m['one_class_predictions']}: the model has collapsed "
                         f"to one class (retrain with the default `head` standardized, or a lower `learning_rate`)")
        worst = m.get("worst_age_group")
        filled = [e["accuracy"] for g, e in m["by_age"].items() if e["n"] and g in AGE_GROUP_NAMES]
        if worst is not None and len(set(filled)) == 1:
            lines.append(f"  every age group ({len(filled)} with examples) at accuracy {worst['accuracy']:.4f}")
        elif worst is not None:
            lines.append(f"  worst age group: {worst['group']} accuracy={worst['accuracy']:.4f} (n={worst['n']})")
    lines.append(f"report: {os.path.join(report_dir, REPORT_NAME)} (plots and {PREDICTIONS_NAME} beside it)")
    return lines
