"""The data contract shared by preprocessing, training, evaluation and classification: defined once."""
from __future__ import annotations

# Bump when the record layout or the manifest changes: readers refuse other versions.
# Version 2: the manifest holds each shard's sha256 (`shard_sha256`) and, for the folds layout,
# each fold file's (`fold_files_sha256`); version 1 manifests are refused (rerun preprocess).
SCHEMA_VERSION = 2
# The size VGG-Face's fully connected layers were trained for (pool5 is then 7×7): every command's default.
DEFAULT_IMAGE_SIZE = 224
CHANNELS = 3
CHANNEL_ORDER = "BGR"

# Label meanings: the original's convention, 0 = female, 1 = male (male is the positive class).
LABEL_NAMES = ("female", "male")
GENDER_CODES = {"F": 0, "M": 1}
# The one rule for a record's label, checked wherever labels are read (pipeline/reader.py's
# parse_record for training, validation and evaluation alike; evaluate's metrics on numpy labels).
LABEL_RULE = "a record's label must be 0 (female) or 1 (male)"


def label_problem(labels) -> str | None:
    """What is wrong with some labels (numpy or Python ints), or None when each is 0 or 1."""
    import numpy as np

    bad = sorted({int(v) for v in np.unique(np.asarray(labels).astype(np.int64))} - set(range(len(LABEL_NAMES))))
    return f"{LABEL_RULE}, got {bad}" if bad else None

# Split name -> folder of the agegender_cleaned variant.
SPLIT_DIRS = {"train": "aligned", "valid": "valid"}

# Input layouts (the manifest's "layout"): the agegender_cleaned variant's train/valid split, and
# the official distribution's five subject-exclusive folds (splits fold0 … fold4, pipeline/folds.py).
LAYOUT_ALIGNED_VALID = "aligned-valid"
LAYOUT_FOLDS = "adience-folds"
LAYOUTS = (LAYOUT_ALIGNED_VALID, LAYOUT_FOLDS)

# The reader's memory modes (the original's -m): "high" caches decoded images in RAM, "low" streams.
MEMORY_MODES = ("low", "high")

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"
RECORD_SUFFIX = ".tfrecord"

# The eight Adience age groups, as (low, high) inclusive; the last one is open-ended.
AGE_GROUPS = ((0, 2), (4, 6), (8, 13), (15, 20), (25, 32), (38, 43), (48, 53), (60, 200))


def age_group_name(group: tuple[int, int]) -> str:
    low, high = group
    return f"{low}+" if high >= 200 else f"{low}-{high}"


AGE_GROUP_NAMES = tuple(age_group_name(g) for g in AGE_GROUPS)


# Age of a record whose source gives none (the official fold files say "None" for some faces).
AGE_UNKNOWN = -1
AGE_UNKNOWN_GROUP = "unknown"


def age_group_of(age: int) -> str:
    """The Adience group of an age: inside a group, that group; between two groups, the nearer
    one by distance to its closest bound, ties going to the older group; AGE_UNKNOWN -> "unknown"."""
    if age < 0:
        return AGE_UNKNOWN_GROUP
    best = None
    for group in AGE_GROUPS:
        low, high = group
        distance = 0 if low <= age <= high else min(abs(age - low), abs(age - high))
        if best is None or distance <= best[0]:
            best = (distance, group)
        if distance == 0:
            break
    return age_group_name(best[1])


def shard_name(split: str, index: int, count: int) -> str:
    """File name of one shard, e.g. train-00003-of-00016.tfrecord."""
    return f"{split}-{index:05d}-of-{count:05d}{RECORD_SUFFIX}"
