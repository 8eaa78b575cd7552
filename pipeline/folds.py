"""The official Adience distribution: `aligned/<user_id>/landmark_aligned_face.<face_id>.<image>` plus
`fold_0_data.txt … fold_4_data.txt`, the five subject-exclusive folds of the benchmark protocol.

Parsing the fold files is pure (no file system access), so it is tested on its own; `discover`
lists the images once and joins the two.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import DataError
from pipeline.schema import AGE_UNKNOWN

N_FOLDS = 5
FOLD_FILE = "fold_{k}_data.txt"
FOLD_COLUMNS = ("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
                "tilt_ang", "fiducial_yaw_angle", "fiducial_score")
# The fold files' gender codes; "u" (unknown) and empty rows are rejects.
FOLD_GENDERS = {"f": 0, "m": 1}
_RANGE = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def fold_split(k: int) -> str:
    """Split name of fold k in the records: fold0 … fold4."""
    return f"fold{k}"


FOLD_SPLITS = tuple(fold_split(k) for k in range(N_FOLDS))


def parse_age(text: str) -> int | None:
    """An age as the records store it: a number stays; a range "(25, 32)" becomes its midpoint
    (rounded down), which `age_group_of` maps back to the range's group; "None" -> AGE_UNKNOWN;
    anything else -> None (not an age)."""
    text = text.strip()
    if text in ("None", ""):
        return AGE_UNKNOWN
    if text.isdigit():
        return int(text)
    m = _RANGE.match(text)
    if m:
        low, high = int(m.group(1)), int(m.group(2))
        return (low + high) // 2 if low <= high else None
    return None


def image_relpath(user_id: str, face_id: str, original_image: str) -> str:
    return f"aligned/{user_id}/landmark_aligned_face.{face_id}.{original_image}"


@dataclass(frozen=True)
class FoldRow:
    """One usable row: the image it names and its labels."""

    fold: int
    relpath: str
    user_id: str
    label: int
    age: int
    line: int = 0       # line number in the fold file, for messages


def parse_fold_file(k: int, text: str) -> tuple[list[FoldRow], list[tuple[str, str]]]:
    """Rows of fold k's file -> (usable rows, rejects as (what, reason)). A reject names the image
    when the row names one, else the file and line."""
    rows: list[FoldRow] = []
    rejects: list[tuple[str, str]] = []
    name = FOLD_FILE.format(k=k)
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith("user_id"):
            header = tuple(c.strip() for c in line.split("\t"))
            if header[:5] != FOLD_COLUMNS[:5]:
                # Columns in another order would silently swap ages, genders and file names.
                raise DataError(f"{name} starts with the header {'|'.join(header[:5])!r}, expected "
                                f"{'|'.join(FOLD_COLUMNS[:5])!r} (tab-separated): not an Adience fold file")
            continue
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 5 or not all(cells[i].strip() for i in (0, 1, 2)):
            rejects.append((f"{name}:{number}", "malformed row (need user_id, original_image, face_id, age, "
                                                "gender separated by tabs)"))
            continue
        user_id, original_image, face_id, age_text, gender = (c.strip() for c in cells[:5])
        relpath = image_relpath(user_id, face_id, original_image)
        # Reasons read "<kind>: <details>": the summary counts rejects by kind.
        if gender not in FOLD_GENDERS:
            reason = (f"empty gender: {name} line {number}" if not gender
                      else f"gender not m or f: {gender!r} in {name} line {number}")
            rejects.append((relpath, reason))
            continue
        age = parse_age(age_text)
        if age is None:
            rejects.append((relpath, f"unparseable age: {age_text!r} in {name} line {number} is neither a "
                                     f"number nor a range like (25, 32)"))
            continue
        rows.append(FoldRow(k, relpath, user_id, FOLD_GENDERS[gender], age, number))
    return rows, rejects


def check_subject_exclusive(rows: list[FoldRow]) -> dict[str, int]:
    """user_id -> its fold; DataError when a user_id has rows in two folds (the protocol's folds
    are subject-exclusive: a person seen in training must never be in the validation fold)."""
    fold_of: dict[str, int] = {}
    shared: dict[str, set[int]] = {}
    for row in rows:
        first = fold_of.setdefault(row.user_id, row.fold)
        if first != row.fold:
            shared.setdefault(row.user_id, {first}).add(row.fold)
    if shared:
        user = min(shared)
        files = " and ".join(FOLD_FILE.format(k=k) for k in sorted(shared[user]))
        more = f" (and {len(shared) - 1} more user_ids)" if len(shared) > 1 else ""
        raise DataError(f"user_id {user} has rows in {files}{more}: the folds are not subject-exclusive, so "
                        f"the cross-validation would test on people it trained on; fix the fold files "
                        f"(the official ones put each user_id in one fold)")
    return fold_of
