"""Every picture of a report, drawn with matplotlib's Agg backend (files only, no display needed):
per split the ROC curve, the confusion matrix, accuracy per age group and the score histograms;
for `evaluate --folds` the per-fold accuracy and the per-age-group spread across folds."""
from __future__ import annotations

import os

import numpy as np

from model.contract import DECISION_THRESHOLD, POSITIVE_CLASS
from model.evaluation.evaluate import SplitPredictions
from pipeline.schema import LABEL_NAMES

PLOT_KINDS = ("roc", "confusion", "age_accuracy", "score_hist", "reliability")
CV_PLOTS = {"accuracy": "cv_accuracy.png", "age_accuracy": "cv_age_accuracy.png"}
_GENDER_COLORS = {"female": "#c2477a", "male": "#2f6db5"}


def figure(width: float = 6.4, height: float = 4.8):
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def save(plt, fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(predictions: SplitPredictions, metrics: dict, report_dir: str,
                threshold: float = DECISION_THRESHOLD) -> dict[str, str]:
    """The plots of one split (PLOT_KINDS); returns kind -> file name (relative to report_dir)."""
    names = {kind: f"{predictions.split}_{kind}.png" for kind in PLOT_KINDS}
    plot_roc(predictions, metrics, os.path.join(report_dir, names["roc"]))
    plot_confusion(predictions.split, metrics, os.path.join(report_dir, names["confusion"]))
    plot_age_accuracy(predictions.split, metrics, os.path.join(report_dir, names["age_accuracy"]))
    plot_score_histogram(predictions, os.path.join(report_dir, names["score_hist"]), threshold)
    plot_reliability(predictions, metrics, os.path.join(report_dir, names["reliability"]))
    return names


def plot_roc(predictions: SplitPredictions, metrics: dict, path: str) -> None:
    from sklearn.metrics import roc_curve

    plt, fig = figure(5.5, 5.0)
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
    save(plt, fig, path)


def plot_confusion(split: str, metrics: dict, path: str) -> None:
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    plt, fig = figure(10.0, 4.5)
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
    save(plt, fig, path)


def plot_age_accuracy(split: str, metrics: dict, path: str) -> None:
    by_age = metrics["by_age"]
    groups = list(by_age)
    x = np.arange(len(groups))
    width = 0.38
    plt, fig = figure(10.0, 5.0)
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
    save(plt, fig, path)


def plot_score_histogram(predictions: SplitPredictions, path: str, threshold: float = DECISION_THRESHOLD) -> None:
    plt, fig = figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 1.0, 41)
    for k, gender in enumerate(LABEL_NAMES):
        scores = predictions.scores[predictions.labels == k]
        ax.hist(scores, bins=bins, alpha=0.6, color=_GENDER_COLORS[gender], label=f"true {gender} (n={len(scores)})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    ax.set_xlabel(f"score (sigmoid = probability of {POSITIVE_CLASS})")
    ax.set_ylabel("examples")
    ax.set_title(f"Score distribution per true class, {predictions.split}")
    ax.legend(loc="upper center")
    save(plt, fig, path)


def plot_reliability(predictions: SplitPredictions, metrics: dict, path: str) -> None:
    """Reliability diagram (Guo et al. 2017): accuracy against mean confidence per confidence bin, for
    the split and for each true gender, with the diagonal of perfect calibration and the bin counts."""
    from model.evaluation.calibration import reliability_bins

    calibration = metrics["calibration"]
    plt, fig = figure(11.0, 4.8)
    for i, (title, mask, color) in enumerate([("all", np.ones(predictions.n, bool), "#d55e00")] + [
            (f"true {g}", predictions.labels == k, _GENDER_COLORS[g]) for k, g in enumerate(LABEL_NAMES)]):
        ax = fig.add_subplot(1, 3, i + 1)
        entry = calibration if title == "all" else calibration["by_gender"][title.split()[-1]]
        filled = [b for b in reliability_bins(predictions.labels[mask], predictions.scores[mask]) if b["n"]]
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        ax.bar([(b["low"] + b["high"]) / 2 for b in filled], [b["accuracy"] for b in filled],
               width=1.0 / calibration["bins"], color=color, alpha=0.7, edgecolor="black", label="accuracy")
        ax.plot([b["confidence"] for b in filled], [b["confidence"] for b in filled], "k.", label="mean confidence")
        for b in filled:
            ax.text((b["low"] + b["high"]) / 2, 1.02, str(b["n"]), ha="center", va="bottom", fontsize=6, rotation=90)
        ece = "n/a" if entry["ece"] is None else f"{entry['ece']:.3f}"
        brier = "n/a" if entry["brier"] is None else f"{entry['brier']:.3f}"
        ax.set_title(f"{title} (n = {entry['n']})\nECE {ece}, Brier {brier}", fontsize=10)
        ax.set_xlim(0.4, 1.0)          # a binary confidence is at least 0.5
        ax.set_ylim(0, 1.15)
        ax.set_xlabel(f"confidence max(p, 1 - p), {calibration['bins']} bins")
        if i == 0:
            ax.set_ylabel("accuracy of the argmax decision")
            ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Reliability diagram, {predictions.split} (counts above the bars)")
    save(plt, fig, path)


def write_cv_plots(body: dict, report_dir: str) -> dict[str, str]:
    """Per-fold accuracy with the mean ± std band, and per age group the mean ± std across folds
    beside the pooled accuracy; returns kind -> file name (relative to report_dir)."""
    os.makedirs(report_dir, exist_ok=True)
    folds = body["folds"]
    stats = body["accuracy"]
    plt, fig = figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(folds))
    ax.bar(x, [f["accuracy"] for f in folds], 0.6, color="#2f6db5")
    for i, f in enumerate(folds):
        ax.text(i, f["accuracy"] + 0.01, f"{f['accuracy']:.3f}\nn={f['n']}", ha="center", va="bottom", fontsize=8)
    ax.axhline(stats["mean"], color="black", linestyle="--", linewidth=1, label=f"mean {stats['mean']:.3f}")
    if stats["std"] is not None:
        ax.axhspan(stats["mean"] - stats["std"], stats["mean"] + stats["std"], color="grey", alpha=0.2,
                   label=f"± sample std {stats['std']:.3f}")
    ax.set_xticks(x, [f"fold {f['fold']}" for f in folds])
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("accuracy on the held-out fold")
    ax.set_title(body["summary"].split(" (")[0])
    ax.legend(loc="lower right")
    save(plt, fig, os.path.join(report_dir, CV_PLOTS["accuracy"]))

    by_age = body["by_age"]
    groups = list(by_age)
    plt, fig = figure(10.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    labelled = False
    for i, g in enumerate(groups):
        e = by_age[g]
        if e["n"] == 0:
            ax.text(i, 0.01, "n=0", ha="center", va="bottom", fontsize=8, color="grey")
            continue
        ax.bar(i - 0.2, e["mean_accuracy"], 0.4, yerr=e["std_accuracy"] or 0.0, capsize=3, color="#2f6db5",
               label=None if labelled else "mean ± sample std over folds")
        ax.bar(i + 0.2, e["pooled_accuracy"], 0.4, color="#d55e00",
               label=None if labelled else "pooled (every fold's examples)")
        labelled = True
    ax.set_xticks(x, [f"{g}\n(n={by_age[g]['n']},\n{by_age[g]['n_folds']} folds)" for g in groups])
    ax.set_ylim(0, 1.25)
    ax.set_xlabel("Adience age group")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per age group across the folds")
    ax.legend(loc="upper center", ncol=2)
    save(plt, fig, os.path.join(report_dir, CV_PLOTS["age_accuracy"]))
    return dict(CV_PLOTS)
