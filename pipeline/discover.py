"""Find the input files of an `agegender_cleaned` Adience tree, through Beam's FileSystems (local
paths, gs://, s3://, ...), in the launching process: only paths, no pixels."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import DataError
from pipeline.schema import GENDER_CODES, SPLIT_DIRS

FOLDER_PATTERN = re.compile(r"^(\d+)_([" + "".join(GENDER_CODES) + r"])$")
LAYOUT_HINT = "expected the agegender_cleaned layout ROOT/aligned/<age>_<F|M>/*.jpg"
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

    @property
    def found(self) -> int:
        return len(self.candidates) + len(self.skipped)


def _check_local_listing(split_dir: str) -> None:
    """Beam's local listing (os.walk) silently skips unreadable folders and does not follow
    symbolic links to folders: find both here so that no file is silently left out."""
    import os

    problems = []
    for dirpath, dirnames, _ in os.walk(split_dir, onerror=problems.append):
        problems.extend(f"{os.path.join(dirpath, d)} is a symbolic link to a folder" for d in dirnames
                        if os.path.islink(os.path.join(dirpath, d)))
    if problems:
        first = problems[0]
        detail = f"{first.filename}: {first.strerror}" if isinstance(first, OSError) else first
        raise DataError(f"cannot list every file under {split_dir} ({detail}); the listing would "
                        f"silently miss files: fix the permissions or replace links with real folders")


def _strip(root: str) -> str:
    return root.rstrip("/") if root not in ("/", "") else root


def discover(root: str) -> Discovery:
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
        # `**` crosses folders: every file below the split folder, so nothing is silently left out.
        try:
            matched = FileSystems.match([FileSystems.join(split_dir, "**")])[0].metadata_list
        except Exception as err:  # noqa: BLE001 - BeamIOError wraps the file system's own error
            raise DataError(f"cannot list {split_dir}: {getattr(err, 'exception_details', err)}") from None
        if matched or FileSystems.exists(split_dir):
            any_split_dir = True
            if "://" not in split_dir:
                _check_local_listing(split_dir)
        prefix = split_dir + "/"
        for meta in matched:
            path = meta.path.replace("\\", "/")
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
        if matched:
            splits.append(split)
    if not any_split_dir:
        if "://" not in root and not FileSystems.exists(root):
            raise DataError(f"input folder {root} does not exist; {LAYOUT_HINT}")
        raise DataError(f"{root} has neither aligned/ nor valid/: {LAYOUT_HINT}")
    if not candidates and not skipped:
        raise DataError(f"{root} holds no files under aligned/ or valid/: {LAYOUT_HINT}")
    candidates.sort(key=lambda c: (c.split, c.relpath))
    skipped.sort()
    return Discovery(root=root, candidates=candidates, skipped=skipped,
                     skipped_folders=sorted(bad_folders), splits=splits)
