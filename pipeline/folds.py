"""The official Adience distribution: `aligned/<user_id>/landmark_aligned_face.<face_id>.<image>` plus
`fold_0_data.txt … fold_4_data.txt`, the five subject-exclusive folds of the benchmark protocol.

Parsing the fold files is pure (no file system access), so it is tested on its own; `discover`
lists the images once and joins the two.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


def parse_fold_file(k: int, text: str) -> tuple[list[FoldRow], list[tuple[str, str]]]:
    """Rows of fold k's file -> (usable rows, rejects as (what, reason)). A reject names the image
    when the row names one, else the file and line."""
    rows: list[FoldRow] = []
    rejects: list[tuple[str, str]] = []
    name = FOLD_FILE.format(k=k)
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip() or (number == 1 and line.startswith("user_id")):
            continue
        cells = line.split("\t")
        if len(cells) < 5 or not all(cells[i].strip() for i in (0, 1, 2)):
            rejects.append((f"{name}:{number}", "malformed row (need user_id, original_image, face_id, age, "
                                                "gender separated by tabs)"))
            continue
        user_id, original_image, face_id, age_text, gender = (c.strip() for c in cells[:5])
        relpath = image_relpath(user_id, face_id, original_image)
        if gender not in FOLD_GENDERS:
            what = "empty gender" if not gender else f"gender {gender!r} is not m or f"
            rejects.append((relpath, f"{what} in {name} line {number}"))
            continue
        age = parse_age(age_text)
        if age is None:
            rejects.append((relpath, f"age {age_text!r} is neither a number nor a range in {name} line {number}"))
            continue
        rows.append(FoldRow(k, relpath, user_id, FOLD_GENDERS[gender], age))
    return rows, rejects
