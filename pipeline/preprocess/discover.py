"""Find the input files of an Adience tree, through Beam's FileSystems (local paths, gs://, s3://,
...), in the launching process: only paths, no pixels. Two layouts: the `agegender_cleaned`
variant (aligned/ and valid/ with <age>_<F|M> folders) and the official distribution (five fold
files naming the images under aligned/<user_id>/), chosen automatically or forced.

Listing is literal (pipeline/preprocess/beam_files.py: a ROOT holding `*?[]` is a name, not a pattern), and
every entry found is accounted for: a dangling symbolic link, a FIFO, a device or an entry that
cannot be read is a reject with its reason, never silently dropped."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from pipeline.preprocess.beam_files import list_tree, read_file
from pipeline.errors import DataError
from pipeline.folds import FOLD_FILE, N_FOLDS, FoldRow, check_subject_exclusive, fold_split, parse_fold_file
from pipeline.schema import GENDER_CODES, LAYOUT_ALIGNED_VALID, LAYOUT_FOLDS, LAYOUTS, SPLIT_DIRS

FOLDER_PATTERN = re.compile(r"^(\d+)_([" + "".join(GENDER_CODES) + r"])$")
LAYOUT_HINT = "expected the agegender_cleaned layout ROOT/aligned/<age>_<F|M>/*.jpg"
FOLDS_HINT = (f"the official distribution ROOT/{FOLD_FILE.format(k=0)} … {FOLD_FILE.format(k=N_FOLDS - 1)} with "
              f"ROOT/aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>")
BOTH_HINT = f"{LAYOUT_HINT} (`layout` {LAYOUT_ALIGNED_VALID}) or {FOLDS_HINT} (`layout` {LAYOUT_FOLDS})"
MISSING_IMAGE_REASON = "missing image"
BAD_FOLDER_REASON = "in a folder whose name is not <age>_<F|M>"
MISPLACED_REASON = "not directly inside an <age>_<F|M> folder"


@dataclass(frozen=True)
class Candidate:
    """One file to decode: split, path relative to ROOT ('/'-separated), label, folder age."""

    split: str
    relpath: str
    label: int
    age: int


@dataclass
class Discovery:
    root: str
    candidates: list[Candidate]                       # sorted by (split, relpath)
    skipped: list[tuple[str, str]]                    # (relpath, reason): files never decoded
    skipped_folders: list[str] = field(default_factory=list)   # relpaths of badly named folders
    splits: list[str] = field(default_factory=list)   # splits that have at least one file
    layout: str = LAYOUT_ALIGNED_VALID
    # Folds layout: files under aligned/ that no fold row names. Not part of the protocol, so not
    # inputs (not in `found`), but reported so that nothing is silently ignored.
    unlisted: list[str] = field(default_factory=list)
    users_per_split: dict[str, int] = field(default_factory=dict)   # folds layout: distinct user_ids
    source_sha256: dict[str, str] = field(default_factory=dict)     # folds layout: fold file -> sha256

    @property
    def found(self) -> int:
        """Inputs: files (aligned-valid) or fold-file rows (adience-folds), used or rejected."""
        return len(self.candidates) + len(self.skipped)


def _strip(root: str) -> str:
    return root.rstrip("/") if root not in ("/", "") else root


def _list_files(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Every entry below `folder`: (regular files, [(entry, why it cannot be read)]), full
    '/'-separated paths. DataError when a folder below cannot be listed or is a symbolic link
    (its files would be silently missed)."""
    try:
        listing = list_tree(folder)
    except Exception as err:  # noqa: BLE001 - BeamIOError wraps the file system's own error
        raise DataError(f"cannot list {folder}: {getattr(err, 'exception_details', err)}") from None
    if listing.unlistable:
        raise DataError(f"cannot list every file under {folder} ({listing.unlistable[0]}); the listing would "
                        f"silently miss files: fix the permissions or replace links with real folders")
    return listing.files, listing.problems


def fold_files_present(root: str) -> list[int]:
    """The k of every ROOT/fold_k_data.txt (0 <= k < N_FOLDS) that exists."""
    root = _strip(root)
    return [k for k in range(N_FOLDS) if FileSystems.exists(FileSystems.join(root, FOLD_FILE.format(k=k)))]


def detect_layout(root: str) -> str:
    """adience-folds when ROOT holds fold files (the official distribution also has aligned/, so
    they decide), aligned-valid when it holds aligned/ or valid/; DataError naming both otherwise."""
    root = _strip(root)
    if fold_files_present(root):
        return LAYOUT_FOLDS
    # Otherwise the agegender_cleaned listing decides, with errors naming both layouts (on object
    # stores a folder is only a prefix and "exists" says no, so only a listing can tell).
    return LAYOUT_ALIGNED_VALID


def discover(root: str, layout: str = "auto") -> Discovery:
    """The inputs of ROOT in the given layout ("auto": detect_layout decides)."""
    if layout not in ("auto", *LAYOUTS):
        raise DataError(f"unknown `layout` {layout!r}; choose auto, {', '.join(LAYOUTS)}", field="layout")
    if layout == "auto":
        layout = detect_layout(root)
    return discover_folds(root) if layout == LAYOUT_FOLDS else discover_aligned_valid(root)


def discover_aligned_valid(root: str) -> Discovery:
    """All files under ROOT/aligned and ROOT/valid; DataError when ROOT is not such a tree.

    Files in a folder whose name is not <age>_<F|M>, or not directly inside such a folder, are
    returned in `skipped` with the reason (the job lists them as rejects so that counts reconcile).
    """
    root = _strip(root)
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    bad_folders: set[str] = set()
    splits = []
    any_split_dir = False
    for split, top in SPLIT_DIRS.items():
        split_dir = FileSystems.join(root, top)
        files, problems = _list_files(split_dir)
        if files or problems or FileSystems.exists(split_dir):
            any_split_dir = True
        prefix = split_dir + "/"
        for path, problem in problems:
            skipped.append((f"{top}/{path[len(prefix):]}", problem))
        for path in files:
            if not path.startswith(prefix):
                continue  # cannot happen with a well-behaved file system; never mislabel a file
            inside = path[len(prefix):]
            relpath = f"{top}/{inside}"
            parts = inside.split("/")
            if len(parts) != 2:
                skipped.append((relpath, MISPLACED_REASON))
                continue
            m = FOLDER_PATTERN.match(parts[0])
            if not m:
                bad_folders.add(f"{top}/{parts[0]}")
                skipped.append((relpath, f"{BAD_FOLDER_REASON}: {parts[0]!r} (folder skipped)"))
                continue
            candidates.append(Candidate(split, relpath, GENDER_CODES[m.group(2)], int(m.group(1))))
        if files or problems:
            splits.append(split)
    if not any_split_dir:
        if "://" not in root and not FileSystems.exists(root):
            raise DataError(f"input folder {root} does not exist; {BOTH_HINT}")
        raise DataError(f"{root} has neither aligned/ nor valid/ nor fold_K_data.txt files: {BOTH_HINT}")
    if not candidates and not skipped:
        raise DataError(f"{root} holds no files under aligned/ or valid/: {BOTH_HINT}")
    candidates.sort(key=lambda c: (c.split, c.relpath))
    skipped.sort()
    return Discovery(root=root, candidates=candidates, skipped=skipped,
                     skipped_folders=sorted(bad_folders), splits=splits)


def _read_text(path: str) -> str:
    try:
        data = read_file(path)
    except Exception as err:  # noqa: BLE001 - BeamIOError / OSError: one clear line
        detail = getattr(err, "strerror", None) or getattr(err, "exception_details", None) or err
        raise DataError(f"cannot read {path}: {detail}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): not an Adience fold file")


def discover_folds(root: str) -> Discovery:
    """The official distribution: every row of ROOT/fold_0_data.txt … fold_4_data.txt is an input
    (`found` counts rows); a usable row whose image exists under aligned/ is a candidate of split
    fold<k>, every other row a reject with its reason. DataError when a fold file is missing, when
    aligned/ is, or when a user_id has rows in two folds (the protocol needs subject-exclusive folds).
    """
    root = _strip(root)
    present = fold_files_present(root)
    missing = [FOLD_FILE.format(k=k) for k in range(N_FOLDS) if k not in present]
    if missing:
        if "://" not in root and not FileSystems.exists(root):
            raise DataError(f"input folder {root} does not exist; expected {FOLDS_HINT}")
        raise DataError(f"{root} lacks {', '.join(missing)}: the 5-fold protocol needs all five fold files; "
                        f"expected {FOLDS_HINT}")
    rows, rejects, hashes = [], [], {}
    for k in range(N_FOLDS):
        text = _read_text(FileSystems.join(root, FOLD_FILE.format(k=k)))
        hashes[FOLD_FILE.format(k=k)] = hashlib.sha256(text.encode("utf-8")).hexdigest()   # strict UTF-8: the bytes
        fold_rows, fold_rejects = parse_fold_file(k, text)
        rows.extend(fold_rows)
        rejects.extend(fold_rejects)
    if not rows and not rejects:
        raise DataError(f"the fold files in {root} hold no rows; expected {FOLDS_HINT}")
    fold_of = check_subject_exclusive(rows)

    aligned = FileSystems.join(root, SPLIT_DIRS["train"])
    files, problems = _list_files(aligned)
    if not files and not problems and not FileSystems.exists(aligned):
        raise DataError(f"{root} has the fold files but no aligned/ folder with the images; expected {FOLDS_HINT}")
    prefix = root + "/"
    existing = {path[len(prefix):] for path in files if path.startswith(prefix)}
    unusable = {path[len(prefix):]: reason for path, reason in problems if path.startswith(prefix)}

    candidates: list[Candidate] = []
    first_row: dict[str, FoldRow] = {}
    for row in rows:
        name = FOLD_FILE.format(k=row.fold)
        earlier = first_row.setdefault(row.relpath, row)
        if earlier is not row:
            # Written once: a second record of the same image would count it twice.
            rejects.append((row.relpath, f"duplicate row: {name} line {row.line} names the image of "
                                         f"{FOLD_FILE.format(k=earlier.fold)} line {earlier.line} again"))
        elif row.relpath in unusable:
            rejects.append((row.relpath, f"{unusable[row.relpath]}: {name} line {row.line} names it"))
        elif row.relpath not in existing:
            rejects.append((row.relpath, f"{MISSING_IMAGE_REASON}: {name} line {row.line} names it but "
                                         f"there is no such file"))
        else:
            candidates.append(Candidate(fold_split(row.fold), row.relpath, row.label, row.age))
    named = set(first_row) | {what for what, _ in rejects}
    unlisted = sorted((existing | set(unusable)) - named)
    candidates.sort(key=lambda c: (c.split, c.relpath))
    rejects.sort()
    users: dict[str, set[str]] = {}
    for user, k in fold_of.items():
        users.setdefault(fold_split(k), set()).add(user)
    return Discovery(root=root, candidates=candidates, skipped=rejects, skipped_folders=[],
                     splits=sorted({c.split for c in candidates}), layout=LAYOUT_FOLDS, unlisted=unlisted,
                     users_per_split={fold_split(k): len(users.get(fold_split(k), ())) for k in range(N_FOLDS)},
                     source_sha256=hashes)
