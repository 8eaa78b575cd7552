"""Batch evaluation over preprocessed records: one score per example, then metrics that show where
the model fails (per class, per gender, per Adience age group), not only one accuracy.

Inference goes through `pipeline.reader.make_dataset(with_meta=True)`, so evaluation reads exactly
the records training read. Under a multi-replica strategy the dataset is distributed with
`distribute_datasets_from_function` and every replica's outputs are gathered back with their labels,
ages and paths; a count check proves every example was scored exactly once.
"""
# Over 350 lines: one split's scoring (one device or several replicas) and its metrics, which the
# report, the model card and evaluate --folds all read; metrics and scoring change together. The
# calibration maths and steps live in calibration.py and decision.py; evaluate() only orders them.
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from model.contract import DECISION_THRESHOLD, POSITIVE_CLASS, image_size_of, male_probability, predicted_labels
from model.errors import ModelError
from model.evaluation.calibration import calibration_metrics
from model.progress import Advanced, Ended, Progress, Started
from model.tta import DEFAULT_TTA, averaged, check_tta
from pipeline.errors import DataError
from pipeline.schema import (AGE_GROUP_NAMES, AGE_UNKNOWN, AGE_UNKNOWN_GROUP, LABEL_NAMES, SPLIT_DIRS, age_group_of,
                             label_problem)

# The age-group rule, stated in the report in the words of the one function that applies it
# (its constant's name replaced by what it means to a reader of the report).
AGE_GROUP_RULE = " ".join(inspect.getdoc(age_group_of).split()).replace(
    "AGE_UNKNOWN", f"age {AGE_UNKNOWN} (no age known)")



# ------------------------------------------------------------------ predictions
@dataclass
class SplitPredictions:
    """Per-example outputs of one split, in the order the reader yielded them."""

    split: str
    paths: list[str]
    labels: np.ndarray          # int64, 0 = female, 1 = male
    ages: np.ndarray            # int64, the folder age
    scores: np.ndarray          # float32 sigmoid = probability of male

    def __post_init__(self) -> None:
        n = len(self.paths)
        if not (len(self.labels) == len(self.ages) == len(self.scores) == n):
            raise ValueError("paths, labels, ages and scores must have one entry per example")

    @property
    def n(self) -> int:
        return len(self.paths)

    @property
    def predicted(self) -> np.ndarray:
        return predicted_labels(self.scores)

    @property
    def age_groups(self) -> list[str]:
        return [age_group_of(int(a)) for a in self.ages]


@dataclass
class Evaluation:
    """What `evaluate` produced: predictions and metrics per split, and where they came from."""

    model_path: str
    records_dir: str
    predictions: dict[str, SplitPredictions]
    metrics: dict[str, dict] = field(default_factory=dict)
    # The threshold decided at and its source, the model's temperature, the calibration fit and
    # what was stored (model/evaluation/decision.py).
    decision: dict = field(default_factory=lambda: {"threshold": DECISION_THRESHOLD, "source": "default"})
    tta: str = DEFAULT_TTA      # the test-time augmentation the scores were made with (model/tta.py)


# ------------------------------------------------------------------ metrics
def binary_cross_entropy(labels: np.ndarray, scores: np.ndarray, eps: float | None = None) -> float:
    """Mean binary cross-entropy, in float64, with Keras' clipping of p to [eps, 1 - eps]
    (eps defaults to keras.config.epsilon(), 1e-7), so the figure matches Keras' loss."""
    if eps is None:
        import keras

        eps = keras.config.epsilon()
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(scores, np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def _accuracy(labels: np.ndarray, predicted: np.ndarray) -> float | None:
    return float(np.mean(labels == predicted)) if len(labels) else None


def _count_and_accuracy(labels: np.ndarray, predicted: np.ndarray) -> dict:
    return {"n": int(len(labels)), "accuracy": _accuracy(labels, predicted)}


def _per_gender(labels: np.ndarray, predicted: np.ndarray) -> dict:
    return {name: _count_and_accuracy(labels[labels == k], predicted[labels == k])
            for k, name in enumerate(LABEL_NAMES)}


def split_metrics(labels: np.ndarray, scores: np.ndarray, ages: np.ndarray,
                  threshold: float = DECISION_THRESHOLD) -> dict:
    """All report numbers of one split from its per-example labels (0/1), scores and ages, deciding
    male for score > threshold; calibration (ECE, Brier) does not depend on the threshold.

    Degenerate inputs stay valid JSON: a split with one class only has `auc` null and an
    `auc_note`; an age group or gender without examples has n = 0 and accuracy null.
    """
    from sklearn.metrics import (
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, np.float32)
    ages = np.asarray(ages).astype(np.int64)
    n = len(labels)
    if n == 0:
        raise DataError("no examples to evaluate")
    problem = label_problem(labels)
    if problem:
        raise DataError(problem)
    predicted = predicted_labels(scores, threshold)

    out: dict = {"n": n, "accuracy": _accuracy(labels, predicted),
                 "loss": binary_cross_entropy(labels, scores), "auc": None,
                 "majority_baseline": majority_baseline(labels),
                 # The class every prediction is, when they all are one (a collapsed model), else null.
                 "one_class_predictions": LABEL_NAMES[int(predicted[0])] if len(np.unique(predicted)) == 1 else None}
    if len(np.unique(labels)) == 2:
        out["auc"] = float(roc_auc_score(labels, scores))
    else:
        only = LABEL_NAMES[int(labels[0])]
        out["auc_note"] = f"undefined: every example is {only} (ROC AUC needs both classes)"
    out["threshold"] = float(threshold)
    out["positive_class"] = POSITIVE_CLASS
    # labels=[0, 1] keeps the 2x2 shape and class order even when a class is missing.
    out["confusion_matrix"] = confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=[0, 1], zero_division=0.0)
    for key, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[key] = {name: float(values[k]) for k, name in enumerate(LABEL_NAMES)}
    out["support"] = {name: int(support[k]) for k, name in enumerate(LABEL_NAMES)}
    out["by_gender"] = _per_gender(labels, predicted)

    groups = np.array([age_group_of(int(a)) for a in ages], dtype=object)
    by_age = {}
    # Records without a known age (official fold files) get an "unknown" entry, only when present.
    unknown = (AGE_UNKNOWN_GROUP,) if np.any(groups == AGE_UNKNOWN_GROUP) else ()
    for name in AGE_GROUP_NAMES + unknown:
        mask = groups == name
        entry = _count_and_accuracy(labels[mask], predicted[mask])
        entry["by_gender"] = _per_gender(labels[mask], predicted[mask])
        by_age[name] = entry
    out["by_age"] = by_age
    out["worst_age_group"] = worst_age_group(by_age)
    out["calibration"] = calibration_metrics(labels, scores, ages)
    return out


def majority_baseline(labels: np.ndarray) -> dict:
    """The accuracy of always answering the split's most frequent class (ties: female), the floor
    any accuracy must be read against."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=2)
    k = int(np.argmax(counts))
    return {"class": LABEL_NAMES[k], "accuracy": float(counts[k] / counts.sum())}


def worst_age_group(by_age: dict) -> dict | None:
    """The non-empty age group with the lowest accuracy (ties: the larger group), or None;
    "unknown" ages are not a group and never the worst."""
    filled = [(name, e) for name, e in by_age.items() if e["n"] > 0 and name != AGE_UNKNOWN_GROUP]
    if not filled:
        return None
    name, entry = min(filled, key=lambda item: (item[1]["accuracy"], -item[1]["n"]))
    return {"group": name, "accuracy": entry["accuracy"], "n": entry["n"]}


# ------------------------------------------------------------------ inference
def resolve_splits(records_dir: str, split: str) -> list[str]:
    """The split names to evaluate: one name, or "all" = every split in the records (train first)."""
    from pipeline.manifest import load_manifest

    manifest = load_manifest(records_dir)
    available = [s for s in SPLIT_DIRS if s in manifest.splits] + sorted(set(manifest.splits) - set(SPLIT_DIRS))
    if split == "all":
        return [s for s in available if manifest.splits[s].count > 0]
    if split not in manifest.splits:
        raise DataError(f"{records_dir} has no split {split!r}; available: {', '.join(available)} (or all)")
    return [split]


_ONE_MACHINE = ("evaluate runs on one machine (one or several GPUs: `strategy` auto or mirrored); "
                "unset TF_CONFIG for it, or run it as one task (srun -n 1)")


def _check_single_machine(strategy) -> None:
    import tensorflow as tf

    from model.runtime import cluster_task_count

    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        # Gathering string paths across workers has no collective op, and a forward pass over a
        # split does not need several machines.
        if cluster_task_count(resolver.cluster_spec().as_dict()) > 1:
            raise ModelError(_ONE_MACHINE)


def scored_in_calls(model, dataset, tta: str = DEFAULT_TTA):
    """(scores, labels, ages, paths) of a with_meta dataset, several batches per tf.function call
    (as many as take about AUTO_CALL_SECONDS, model/runtime.py): the host syncs once per call.
    Scores under test-time augmentation `tta` (model/tta.py)."""
    import time

    import tensorflow as tf

    from model.runtime import CallSizer

    def array(dtype):
        return tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False,
                              element_shape=tf.TensorShape([None]))

    @tf.function
    def run(iterator, n):
        parts = [array(tf.float32), array(tf.float32), array(tf.int64), array(tf.string)]
        batches = tf.constant(0, tf.int64)
        for i in tf.range(n):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            images, labels, ages, paths = optional.get_value()
            scores = tf.reshape(averaged(lambda x: model(x, training=False), images, tta), [-1])
            parts = [part.write(tf.cast(i, tf.int32), value)
                     for part, value in zip(parts, (scores, labels, ages, paths))]
            batches += 1
        return tuple(part.concat() for part in parts), batches

    sizer, iterator, first = CallSizer(), iter(dataset), True
    while True:
        n = sizer.size()
        started = time.perf_counter()
        chunk, batches = run(iterator, tf.constant(n, tf.int64))
        batches = int(batches)
        if not first:                      # the first call traces and fills the pipeline
            sizer.observe(time.perf_counter() - started, batches)
        first = False
        if batches:
            yield chunk
        if batches < n:                    # the data ran out inside this call
            return


def scored_across_replicas(model, strategy, records_dir: str, split: str, batch_size: int, memory: str,
                           image_size: int, tta: str = DEFAULT_TTA) -> Iterator[tuple]:
    """(scores, labels, ages, paths) per replica batch, in the reader's order, under a strategy of
    several replicas on this machine."""
    import tensorflow as tf

    from pipeline.reader import make_dataset

    _check_single_machine(strategy)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(records_dir, split, batch_size, memory=memory, with_meta=True,
                            input_context=context, image_size=image_size)

    # The batch size is per replica: each step scores `replicas` consecutive batches at once.
    # Inputs stay on the host (strategy.run copies the images to each device): the string
    # paths must not be sent to an accelerator.
    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    dataset = strategy.distribute_datasets_from_function(dataset_fn, options)

    def replica_forward(images):
        # The last replica's batch can be empty: male_probability guards it (twice as long with flip).
        return averaged(lambda x: male_probability(model, x), images, tta)

    @tf.function(reduce_retracing=True)
    def step(images):
        return strategy.run(replica_forward, args=(images,))

    local = strategy.experimental_local_results
    for images, batch_labels, batch_ages, batch_paths in dataset:
        out = step(images)
        # Replica k received the k-th consecutive batch: concatenating in replica order
        # keeps the reader's order. A replica with nothing left gets an empty batch.
        for parts in zip(local(out), local(batch_labels), local(batch_ages), local(batch_paths)):
            if int(np.asarray(parts[0]).shape[0]) > 0:
                yield parts


def predict_split(model, records_dir: str, split: str, batch_size: int = 64, memory: str = "low",
                  strategy=None, progress: Progress | None = None, tta: str = DEFAULT_TTA) -> SplitPredictions:
    """Score every example of one split exactly once (under `strategy` when it has several replicas),
    with test-time augmentation `tta` (model/tta.py)."""
    from pipeline.reader import describe_dataset, make_dataset

    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    check_tta(tta)
    image_size = image_size_of(model)
    expected = describe_dataset(records_dir, split, image_size=image_size)["count"]
    if progress:
        progress(Started(split, expected))

    paths: list[bytes] = []
    labels: list[np.ndarray] = []
    ages: list[np.ndarray] = []
    scores: list[np.ndarray] = []

    def collect(batch_scores, batch_labels, batch_ages, batch_paths) -> None:
        scores.append(np.asarray(batch_scores, np.float32).reshape(-1))
        labels.append(np.asarray(batch_labels).reshape(-1))
        ages.append(np.asarray(batch_ages).reshape(-1))
        paths.extend(np.asarray(batch_paths).reshape(-1).tolist())
        if progress:
            progress(Advanced(split, int(len(scores[-1]))))

    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if replicas <= 1:
        # One device: iterate the dataset directly (a distributed iterator only adds overhead), many
        # batches per call (one host sync per call, not per batch).
        dataset = make_dataset(records_dir, split, batch_size, memory=memory, with_meta=True,
                               image_size=image_size)
        for chunk in scored_in_calls(model, dataset, tta):
            collect(*chunk)
    else:
        for parts in scored_across_replicas(model, strategy, records_dir, split, batch_size, memory, image_size,
                                            tta):
            collect(*parts)

    result = SplitPredictions(
        split=split,
        paths=[p.decode("utf-8") for p in paths],
        labels=(np.concatenate(labels) if labels else np.zeros(0)).astype(np.int64),
        ages=(np.concatenate(ages) if ages else np.zeros(0)).astype(np.int64),
        scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
    )
    # Every example exactly once: the count matches the manifest and no path appears twice.
    if result.n != expected or len(set(result.paths)) != result.n:
        raise DataError(f"split {split} of {records_dir}: scored {result.n} records ({len(set(result.paths))} "
                        f"distinct) but the manifest lists {expected}; the records directory is inconsistent, "
                        f"rerun preprocess with --overwrite")
    if progress:
        progress(Ended(split))
    return result


@contextmanager
def _records_to_blame(records_dir: str, split: str) -> Iterator[None]:
    """A failure while reading the split that a bad shard explains (corrupt, short or long: see
    pipeline.shard_check.records_error) becomes one DataError line naming the shard; others propagate."""
    import tensorflow as tf

    from pipeline.shard_check import records_error

    try:
        yield
    except tf.errors.OpError as err:
        problem = records_error(err, records_dir, split)
        if problem is None:
            raise
        raise problem from None


def check_finite_scores(predictions: SplitPredictions, model_path: str) -> None:
    """ModelError when the model gave NaN or infinite scores: no report is built on them."""
    bad = int(np.sum(~np.isfinite(predictions.scores)))
    if bad:
        raise ModelError(f"{model_path} gives non-finite scores (NaN or infinity) for {bad} of {predictions.n} "
                         f"images of split {predictions.split}: the model is broken; retrain it")


# Over 50 lines: the settings' checks, then load, score, calibrate, measure and store in order.
def evaluate(model_path: str, records_dir: str, split: str = "valid", batch_size: int = 64,
             memory: str = "low", strategy: str = "auto", progress: Progress | None = None,
             threshold: float | None = None, calibrate_on: str | None = None, store_calibration: bool = False,
             store_threshold: str | None = None, tta: str = DEFAULT_TTA) -> Evaluation:
    """Load a classifier, score the split(s) of a records directory (with test-time augmentation
    `tta`, model/tta.py), compute the metrics.

    threshold: decide at it (default: the model's stored threshold, else DECISION_THRESHOLD).
    calibrate_on: a split, never a reported one, to fit a temperature and choose thresholds on; the
    reported scores are then temperature-scaled. store_calibration / store_threshold (equal_error,
    max_accuracy or a number): rewrite the model file with them (model/evaluation/decision.py).
    """
    from model.evaluation import decision as steps
    from model.network.calibrated import logit_model, stored_threshold, temperature_of
    from model.network.head import load_classifier
    from model.runtime import cluster_tasks, select_strategy
    from pipeline.schema import MEMORY_MODES

    if memory not in MEMORY_MODES:
        raise DataError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    check_tta(tta)
    if strategy == "multiworker" or (strategy == "auto" and cluster_tasks() > 1):
        raise ModelError(_ONE_MACHINE)
    splits = resolve_splits(records_dir, split)
    steps.check_request(splits, threshold, calibrate_on, store_calibration, store_threshold)
    if calibrate_on is not None:
        splits_read = splits + [name for name in resolve_splits(records_dir, calibrate_on) if name not in splits]
    else:
        splits_read = splits
    from pipeline.shard_check import verify_shards

    verify_shards(records_dir, splits_read)      # records swapped behind the manifest's back: refused first
    chosen = select_strategy(strategy)
    with chosen.scope():
        model = load_classifier(model_path)
        # With a calibration split, every split is scored as logits, turned into scores by decision.calibrate.
        scorer = logit_model(model) if calibrate_on is not None else model

    def score(name: str) -> SplitPredictions:
        with _records_to_blame(records_dir, name):
            scored = predict_split(scorer, records_dir, name, batch_size=batch_size, memory=memory,
                                   strategy=chosen, progress=progress, tta=tta)
        check_finite_scores(scored, model_path)
        return scored

    predictions = {name: score(name) for name in splits}
    decision = steps.resolve_threshold(threshold, stored_threshold(model_path))
    decision["temperature"] = temperature_of(model)
    fit = steps.calibrate(score(calibrate_on), predictions, decision["temperature"]) if calibrate_on else None
    storing = steps.threshold_to_store(store_threshold, fit)
    if storing is not None and threshold is None:
        decision.update(threshold=storing, source="model")
    if store_calibration or storing is not None:
        decision["stored"] = steps.store(model_path, model, fit, store_calibration, storing, store_threshold,
                                         records_dir)
        if "threshold_removed" in decision["stored"] and decision["source"] == "model":
            decision.update(threshold=DECISION_THRESHOLD, source="default")
    decision["calibration_fit"] = fit
    metrics = {name: split_metrics(p.labels, p.scores, p.ages, decision["threshold"])
               for name, p in predictions.items()}
    steps.add_group_rates(metrics, predictions, steps.thresholds_for_groups(decision, fit))
    return Evaluation(model_path=model_path, records_dir=records_dir, predictions=predictions, metrics=metrics,
                      decision=decision, tta=tta)
