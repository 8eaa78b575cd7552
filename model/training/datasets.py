"""The data of a run: which splits it trains and validates on, and their distributed datasets.

Training batches are per replica (-b1), dropped when incomplete, so every replica's batch is full.
With several workers the reader shards FILES, so workers can hold different numbers of batches (the
step's end-of-data agreement handles that). Validation keeps every example (no drop).
"""
from __future__ import annotations

import tensorflow as tf

from model.training.config import RunData, TrainConfig
from pipeline.errors import DataError
from pipeline.manifest import manifest_digest
from pipeline.folds import FOLD_SPLITS, N_FOLDS, fold_split
from pipeline.reader import make_dataset
from pipeline.schema import LAYOUT_FOLDS


def training_splits(records: str, val_fold: int | None) -> tuple[list[str], list[str]]:
    """(training splits, validation splits) of a records directory: train / valid for the
    aligned-valid layout; for the adience-folds layout the four other folds / fold K (val_fold).
    DataError when val_fold and the layout do not go together."""
    from pipeline.manifest import load_manifest

    layout = load_manifest(records).layout
    if layout == LAYOUT_FOLDS:
        if val_fold is None:
            raise DataError(f"{records} holds the {N_FOLDS} Adience folds ({', '.join(FOLD_SPLITS)}), not a "
                            f"train/valid split: pass `val_fold` K (train on the other folds, validate on "
                            f"fold K) or `folds` (all {N_FOLDS}, the cross-validation)")
        return [s for s in FOLD_SPLITS if s != fold_split(val_fold)], [fold_split(val_fold)]
    if val_fold is not None:
        raise DataError(f"`val_fold` and `folds` need records of the official Adience folds (`preprocess "
                        f"--layout adience-folds`), but {records} holds the {layout} layout (splits train, "
                        f"valid): drop the option to train on train and validate on valid")
    return ["train"], ["valid"]


def run_data(config: TrainConfig, train_splits: list[str] | None = None, image_size: int | None = None) -> RunData:
    """What the fingerprint takes from `config`'s records (splits and size: read when not given)."""
    from pipeline.reader import describe_dataset

    if train_splits is None:
        train_splits = training_splits(config.records, config.val_fold)[0]
    if image_size is None:
        image_size = describe_dataset(config.records, train_splits)["image_size"]
    return RunData(image_size=image_size, train_splits=tuple(train_splits),
                   train_records=manifest_digest(config.records, train_splits))


def train_dataset(strategy: tf.distribute.Strategy, config: TrainConfig, splits: list[str], epoch: int,
                  step: int, augment_on_device: bool):
    """Epoch `epoch` of the training splits from step `step` on (exact resume: `skip` drops the
    examples this input pipeline already consumed, steps x per-replica batch x local replicas)."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = max(1, context.num_replicas_in_sync // context.num_input_pipelines)
        return make_dataset(config.records, splits, config.batch_size, memory=config.memory,
                            augment=config.augment, shuffle=config.shuffle, seed=config.seed, epoch=epoch,
                            skip=step * config.batch_size * local, input_context=context, drop_remainder=True,
                            augment_params=config.augment_params, augment_on_device=augment_on_device)

    return strategy.distribute_datasets_from_function(dataset_fn)


def valid_dataset(strategy: tf.distribute.Strategy, config: TrainConfig, splits: list[str]):
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(config.records, splits, config.valid_batch_size, memory=config.memory,
                            input_context=context)

    return strategy.distribute_datasets_from_function(dataset_fn)
