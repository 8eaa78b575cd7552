"""The Adience benchmark protocol's evaluation side: fold K's model (trained by `train --folds`,
model/training/folds.py) is evaluated on fold K (`evaluate_folds`): one full report per fold
(model/evaluation/report.py, age-sliced view included) and an aggregate `cv_report.json` with the
mean ± standard deviation across the folds, which is how the literature reports Adience results.
"""
from __future__ import annotations

import os
from typing import Sequence

from model.errors import ModelError
from model.evaluation.plots import write_cv_plots
from model.progress import FoldEvaluating, Progress
from model.tta import DEFAULT_TTA
from model.training.folds import PROTOCOL, STD_DEFINITION, fold_model_path, headline, mean_std
from pipeline.errors import DataError
from pipeline.files import write_json_atomically
from pipeline.folds import N_FOLDS, fold_split
from pipeline.schema import AGE_GROUP_NAMES, AGE_UNKNOWN_GROUP, LABEL_NAMES, LAYOUT_FOLDS

from model.evaluation.report import CV_REPORT_NAME  # noqa: E402  (one name, shared with the report folder check)


# ------------------------------------------------------------------ statistics
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


# ------------------------------------------------------------------ evaluation
def evaluate_folds(model_path: str, records_dir: str, report_dir: str, batch_size: int = 64,
                   memory: str = "low", strategy: str = "auto", progress: Progress | None = None,
                   tta: str = DEFAULT_TTA) -> dict:
    """`evaluate --folds`: fold K's model (fold_model_path(model_path, K)) on fold K (with test-time
    augmentation `tta`, model/tta.py), for each K;
    a full report per fold in REPORT_DIR/fold<K>/ and the aggregate REPORT_DIR/cv_report.json
    with its plots. Returns the cv_report body."""
    from model.evaluation.report import check_report_dir, new_report_dir
    from pipeline.manifest import load_manifest

    check_report_dir(report_dir)
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
    with new_report_dir(report_dir) as folder:      # every file of the report, swapped in whole at the end
        return _evaluate_and_write(models, model_path, records_dir, folder, batch_size, memory, strategy, progress,
                                   tta)


def _evaluate_and_write(models: list[str], model_path: str, records_dir: str, report_dir: str, batch_size: int,
                        memory: str, strategy: str, progress: Progress | None, tta: str) -> dict:
    from model.evaluation.evaluate import evaluate
    from model.evaluation.report import REPORT_NAME, write_report
    from pipeline.reader import clear_memory_cache

    folds = []
    fold_metrics = []
    for k, path in enumerate(models):
        split = fold_split(k)
        if progress:
            progress(FoldEvaluating(k, path))
        try:
            evaluation = evaluate(path, records_dir, split=split, batch_size=batch_size, memory=memory,
                                  strategy=strategy, progress=progress, tta=tta)
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
            "std_definition": STD_DEFINITION, "tta": tta, "folds": folds, **aggregate_folds(fold_metrics)}
    body["summary"] = headline(body["accuracy"], N_FOLDS)
    plots = write_cv_plots(body, report_dir)
    body["files"] = {"fold_reports": [f["report"] for f in folds], "plots": plots}
    write_json_atomically(os.path.join(report_dir, CV_REPORT_NAME), body)
    return body
