"""The Adience benchmark protocol: 5-fold cross-validation over the official subject-exclusive folds.

For each K in 0..4 a model is trained on the four other folds and validated on fold K
(`train_folds`), then fold K's model is evaluated on fold K (`evaluate_folds`): one full report
per fold (model/evaluation/report.py, age-sliced view included) and an aggregate `cv_report.json` with the
mean ± standard deviation across the folds, which is how the literature reports Adience results.

Files, for `-o model.keras`: model_fold0.keras … model_fold4.keras, each with its own checkpoint
directory (model_fold0.ckpt, …), logs and history beside it, and model_folds.json (the training
summary). A killed `train --folds` run, started again, skips the folds whose model exists and
whose checkpoint is complete for the same settings, and resumes the interrupted one.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from model.contract import DECISION_RULE
from model.errors import ModelError
from model.progress import FoldEvaluating, Progress
from pipeline.errors import DataError
from pipeline.folds import FOLD_SPLITS, N_FOLDS, fold_split
from pipeline.schema import AGE_GROUP_NAMES, AGE_UNKNOWN_GROUP, LABEL_NAMES, LAYOUT_FOLDS

CV_REPORT_NAME = "cv_report.json"
CV_PLOTS = {"accuracy": "cv_accuracy.png", "age_accuracy": "cv_age_accuracy.png"}
# The spread reported across folds. Sample standard deviation (ddof=1, n - 1 in the denominator):
# the folds are a sample of the possible splits of the population, and it is the figure the
# Adience papers give as "mean ± std" over the five folds.
STD_DDOF = 1
STD_DEFINITION = ("sample standard deviation across the folds (ddof=1: sum of squared deviations divided by "
                  "the number of folds minus 1), as the Adience literature reports mean ± std over its five folds")
PROTOCOL = (f"Adience {N_FOLDS}-fold cross-validation over the official subject-exclusive folds: fold K's model, "
            f"trained on the other {N_FOLDS - 1} folds, evaluated on fold K")


# ------------------------------------------------------------------ paths
def _stem(output: str) -> str:
    if not output.endswith(".keras"):
        raise ModelError(f"output {output} must end in .keras (the fold models are named after it: "
                         f"<stem>_fold0.keras … <stem>_fold{N_FOLDS - 1}.keras)")
    return output[: -len(".keras")]


def fold_model_path(output: str, k: int) -> str:
    """Fold k's model for the -o given to `train --folds`: model.keras -> model_fold{k}.keras."""
    return f"{_stem(output)}_fold{k}.keras"


def folds_summary_path(output: str) -> str:
    """Where `train --folds` writes its summary: model.keras -> model_folds.json."""
    return f"{_stem(output)}_folds.json"


def fold_config(config, k: int):
    """The TrainConfig of fold k: validate on fold k, outputs named after fold k; a given
    --checkpoint-dir / --log-dir gets one sub-folder per fold."""
    return dataclasses.replace(
        config, output=fold_model_path(config.output, k), val_fold=k,
        checkpoint_dir=os.path.join(config.checkpoint_dir, fold_split(k)) if config.checkpoint_dir else None,
        log_dir=os.path.join(config.log_dir, fold_split(k)) if config.log_dir else None)


# ------------------------------------------------------------------ statistics
def mean_std(values: Sequence[float | None]) -> dict:
    """{"mean", "std" (sample, ddof=1; None with fewer than two values), "min", "max", "n_folds"} of
    the values that are not None (a fold whose AUC is undefined does not count)."""
    present = np.asarray([v for v in values if v is not None], np.float64)
    if present.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n_folds": 0}
    return {"mean": float(present.mean()),
            "std": float(present.std(ddof=STD_DDOF)) if present.size > STD_DDOF else None,
            "min": float(present.min()), "max": float(present.max()), "n_folds": int(present.size)}


def _slice_summary(entries: list[dict]) -> dict:
    """One slice (an age group or a gender) over the folds: mean ± std of the per-fold accuracies
    (folds where the slice is empty left out) and the pooled accuracy over all its examples."""
    filled = [e for e in entries if e["n"] > 0]
    stats = mean_std([e["accuracy"] for e in filled])
    # accuracy x n is a whole number of correct answers (the per-fold accuracy is correct / n).
    correct = sum(int(round(e["accuracy"] * e["n"])) for e in filled)
    n = sum(e["n"] for e in filled)
    return {"mean_accuracy": stats["mean"], "std_accuracy": stats["std"], "n_folds": stats["n_folds"],
            "pooled_accuracy": correct / n if n else None, "n": n, "correct": correct}


def aggregate_folds(fold_metrics: Sequence[dict]) -> dict:
    """The cross-validation figures from each fold's split metrics (model.evaluation.evaluate.split_metrics,
    i.e. report.json[<fold split>]), in fold order."""
    if not fold_metrics:
        raise DataError("no fold to aggregate")
    out: dict = {key: mean_std([m[key] for m in fold_metrics]) for key in ("accuracy", "loss", "auc")}
    correct = sum(int(round(m["accuracy"] * m["n"])) for m in fold_metrics)
    n = sum(m["n"] for m in fold_metrics)
    out["pooled"] = {"n": n, "correct": correct, "accuracy": correct / n}
    out["by_gender"] = {g: _slice_summary([m["by_gender"][g] for m in fold_metrics]) for g in LABEL_NAMES}
    groups = list(AGE_GROUP_NAMES)
    if any(AGE_UNKNOWN_GROUP in m["by_age"] for m in fold_metrics):
        groups.append(AGE_UNKNOWN_GROUP)
    empty = {"n": 0, "accuracy": None}
    out["by_age"] = {g: _slice_summary([m["by_age"].get(g, empty) for m in fold_metrics]) for g in groups}
    return out


def headline(stats: dict, n_folds: int) -> str:
    """"5-fold accuracy 0.9123 ± 0.0145 (91.23 % ± 1.45 %)": comparable with the published figures."""
    mean, std = stats["mean"], stats["std"]
    if std is None:
        return f"{n_folds}-fold accuracy {mean:.4f} (one fold: no spread)"
    return (f"{n_folds}-fold accuracy {mean:.4f} ± {std:.4f} ({100 * mean:.2f} % ± {100 * std:.2f} %; "
            f"mean ± sample std over folds)")


# ------------------------------------------------------------------ training
def _fold_complete(config, state: dict | None, machine) -> bool:
    """Does fold config's checkpoint say its training is finished, for the fingerprint `train`
    would resume it with (settings, records and machine alike)? Anything else: the fold is trained
    again, and train itself then refuses the old checkpoint, saying so."""
    from model.training import fingerprint, fingerprint_changes
    from model.training.datasets import run_data

    if state is None or state["epoch"] != config.epochs:
        return False
    current = fingerprint(config, run_data(config), machine)
    return not fingerprint_changes(state["fingerprint"], current)


def train_folds(config, progress: Callable | None = None, folds: Sequence[int] | None = None) -> dict:
    """`train --folds`: for each fold K, train on the other folds and validate on K (model.training.train
    with val_fold=K, outputs per fold_config). Returns and writes (chief only) the summary: per
    fold the final epoch's figures, and mean ± sample std of the validation accuracy.

    Emits FoldStart / FoldSkipped events around train's own events (which carry no fold number:
    they belong to the last FoldStart)."""
    from model.network.backbone import read_vggface_widths
    from model.runtime import select_precision, select_strategy, task_info
    from model.training import checkpoint_state, machine_of, train, training_splits
    from model.training.events import FoldSkipped, FoldStart
    from pipeline.reader import clear_memory_cache

    emit = progress or (lambda event: None)
    if config.val_fold is not None:
        raise ModelError("`folds` trains every fold in turn; drop `val_fold` (or drop `folds` to train one split)",
                         field="val_fold")
    fold_model_path(config.output, 0)           # the output name is checked before anything runs
    training_splits(config.records, 0)           # DataError unless the records are the fold layout
    folds = list(range(N_FOLDS) if folds is None else folds)
    # One strategy for every fold: MultiWorkerMirroredStrategy can be created once per process.
    strategy = select_strategy(config.strategy)
    info = task_info(strategy)
    machine = machine_of(config, read_vggface_widths(config.weights), int(strategy.num_replicas_in_sync),
                         info.workers, select_precision(config.precision))
    rows = []
    for k in folds:
        fold = fold_config(config, k)
        state = checkpoint_state(fold.resolved_checkpoint_dir())
        complete = _fold_complete(fold, state, machine)
        have_model = os.path.exists(fold.output)
        if complete and info.workers > 1 and info.is_chief and not have_model:
            # The other workers see the same checkpoint and skip: rewriting alone would hang.
            raise ModelError(f"fold {k}'s checkpoint is complete but {fold.output} is missing; rewrite it "
                             f"with `train --val-fold {k}` and the same settings, then rerun `folds`")
        if complete and (have_model or info.workers > 1):
            final = dict(state["history"][-1]) if state["history"] else {}
            row = {"fold": k, "model": fold.output, "skipped": True, "resumed": False, **final}
            emit(FoldSkipped(fold=k, folds=len(folds), output=fold.output,
                             checkpoint_dir=fold.resolved_checkpoint_dir(), epochs=state["epoch"],
                             val_accuracy=final.get("val_accuracy")))
        else:
            emit(FoldStart(fold=k, folds=len(folds), output=fold.output, valid_split=fold_split(k)))
            try:
                result = train(fold, progress=emit, strategy=strategy)
            finally:
                # -m high keeps each split list's decoded images in RAM; the next fold's lists differ,
                # so without this five folds would hold about four copies of the dataset.
                clear_memory_cache()
            row = {"fold": k, "model": fold.output, "skipped": False,
                   "resumed": result.resumed_from is not None, **result.final}
        row["valid_split"] = fold_split(k)
        rows.append(row)
    summary = {
        "protocol": PROTOCOL, "records": config.records, "epochs": config.epochs,
        "folds": rows,
        "val_accuracy": mean_std([r.get("val_accuracy") for r in rows]),
        "val_loss": mean_std([r.get("val_loss") for r in rows]),
        "std_definition": STD_DEFINITION,
        "note": "validation figures of training (" + DECISION_RULE + "); `evaluate --folds` gives the full "
                "reports with the age-sliced view",
    }
    summary["summary"] = headline(summary["val_accuracy"], len(rows)).replace("accuracy", "validation accuracy", 1)
    if info.is_chief:
        from model.evaluation.report import write_json_atomically

        path = folds_summary_path(config.output)
        write_json_atomically(path, summary)
        summary["path"] = path
    return summary


# ------------------------------------------------------------------ evaluation
def evaluate_folds(model_path: str, records_dir: str, report_dir: str, batch_size: int = 64,
                   memory: str = "low", strategy: str = "auto", progress: Progress | None = None) -> dict:
    """`evaluate --folds`: fold K's model (fold_model_path(model_path, K)) on fold K, for each K;
    a full report per fold in REPORT_DIR/fold<K>/ and the aggregate REPORT_DIR/cv_report.json
    with its plots. Returns the cv_report body."""
    from model.evaluation.evaluate import evaluate
    from model.evaluation.report import REPORT_NAME, write_json_atomically, write_report
    from pipeline.manifest import load_manifest
    from pipeline.reader import clear_memory_cache

    manifest = load_manifest(records_dir)
    if manifest.layout != LAYOUT_FOLDS:
        raise DataError(f"`folds` needs records of the official Adience folds (`preprocess --layout adience-folds`), "
                        f"but {records_dir} holds the {manifest.layout} layout; evaluate one split with `split`")
    models = [fold_model_path(model_path, k) for k in range(N_FOLDS)]
    missing = [m for m in models if not os.path.exists(m)]
    if missing:
        raise ModelError(f"{', '.join(os.path.basename(m) for m in missing)} not found beside {model_path}: "
                         f"`model_path` takes the path given to `train --folds -o` (it finds <stem>_fold0.keras … "
                         f"<stem>_fold{N_FOLDS - 1}.keras); run that first")
    folds = []
    fold_metrics = []
    for k, path in enumerate(models):
        split = fold_split(k)
        if progress:
            progress(FoldEvaluating(k, path))
        try:
            evaluation = evaluate(path, records_dir, split=split, batch_size=batch_size, memory=memory,
                                  strategy=strategy, progress=progress)
        finally:
            clear_memory_cache()    # -m high: one fold's decoded images at a time
        fold_dir = os.path.join(report_dir, split)
        report = write_report(evaluation, fold_dir)
        metrics = report[split]
        fold_metrics.append(metrics)
        folds.append({"fold": k, "split": split, "model": path,
                      "report": os.path.join(split, REPORT_NAME), "n": metrics["n"],
                      "accuracy": metrics["accuracy"], "loss": metrics["loss"], "auc": metrics["auc"]})
    body = {"protocol": PROTOCOL, "model": model_path, "records": records_dir, "n_folds": N_FOLDS,
            "std_definition": STD_DEFINITION, "folds": folds, **aggregate_folds(fold_metrics)}
    body["summary"] = headline(body["accuracy"], N_FOLDS)
    plots = write_cv_plots(body, report_dir)
    body["files"] = {"fold_reports": [f["report"] for f in folds], "plots": plots}
    write_json_atomically(os.path.join(report_dir, CV_REPORT_NAME), body)
    return body


# ------------------------------------------------------------------ plots and summary
def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def write_cv_plots(body: dict, report_dir: str) -> dict[str, str]:
    """Per-fold accuracy with the mean ± std band, and per age group the mean ± std across folds
    beside the pooled accuracy; returns kind -> file name (relative to report_dir)."""
    os.makedirs(report_dir, exist_ok=True)
    folds = body["folds"]
    stats = body["accuracy"]
    plt, fig = _figure(7.0, 4.5)
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
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, CV_PLOTS["accuracy"]))
    plt.close(fig)

    by_age = body["by_age"]
    groups = list(by_age)
    plt, fig = _figure(10.0, 5.0)
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
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, CV_PLOTS["age_accuracy"]))
    plt.close(fig)
    return dict(CV_PLOTS)


def cv_summary_lines(body: dict, report_dir: str) -> list[str]:
    """The terminal summary of evaluate --folds: one line per fold, the headline, the worst age group."""
    lines = [f"{f['split']}: n={f['n']}  accuracy={f['accuracy']:.4f}  loss={f['loss']:.4f}  "
             f"auc={'n/a' if f['auc'] is None else format(f['auc'], '.4f')}" for f in body["folds"]]
    lines.append(body["summary"])
    for key in ("loss", "auc"):
        s = body[key]
        if s["mean"] is not None:
            spread = "" if s["std"] is None else f" ± {s['std']:.4f}"
            lines.append(f"  {key}: {s['mean']:.4f}{spread} over {s['n_folds']} folds")
    pooled = body["pooled"]
    lines.append(f"  pooled over all {pooled['n']} faces: accuracy {pooled['accuracy']:.4f}")
    filled = [(g, e) for g, e in body["by_age"].items() if e["n"] and g != AGE_UNKNOWN_GROUP]
    if filled:
        g, e = min(filled, key=lambda item: (item[1]["pooled_accuracy"], -item[1]["n"]))
        spread = "" if e["std_accuracy"] is None else f" ± {e['std_accuracy']:.4f}"
        lines.append(f"  worst age group (pooled): {g} accuracy={e['pooled_accuracy']:.4f} (n={e['n']}; "
                     f"mean over folds {e['mean_accuracy']:.4f}{spread})")
    lines.append(f"report: {os.path.join(report_dir, CV_REPORT_NAME)} (per-fold reports in "
                 f"{os.path.join(report_dir, FOLD_SPLITS[0])} … {FOLD_SPLITS[-1]})")
    return lines
