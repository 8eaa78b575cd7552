"""`train --folds`, the training side of the Adience benchmark protocol: for each K in 0..4 a model
is trained on the four other folds and validated on fold K (model/evaluation/crossval.py scores
them).

Files, for `-o model.keras`: model_fold0.keras … model_fold4.keras, each with its own checkpoint
directory (model_fold0.ckpt, …), logs and history beside it, and model_folds.json (the training
summary). A killed `train --folds` run, started again, skips the folds whose model exists and
whose checkpoint is complete for the fingerprint `train` would resume it with, and resumes the
interrupted one.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from model.contract import DECISION_RULE
from model.errors import ModelError
from pipeline.files import write_json_atomically
from pipeline.folds import N_FOLDS, fold_split

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


# Over 60 lines on purpose: one loop over the folds whose skip / resume / train decision and summary
# row read best in one place (the decision is _fold_complete's; the rest is bookkeeping).
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
        path = folds_summary_path(config.output)
        write_json_atomically(path, summary)
        summary["path"] = path
    return summary
