"""Generated Adience-shaped folders for the demo, the tests and the benchmarks (both layouts:
`make_adience_tree` for agegender_cleaned, `make_adience_folds` for the official 5-fold files).

Real image files on disk in the `agegender_cleaned` layout (ROOT/aligned/<age>_<F|M>/*.jpg for
training, ROOT/valid/... for validation), with a visual difference between the classes that even a
frozen random-weight backbone picks up: by colour (the default) or by shape only — see
pipeline/synthetic/faces.py. Mostly JPEG, plus every other format the decoder must handle, and
(optionally) bad files of every kind the job must reject.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.folds import FOLD_COLUMNS, FOLD_FILE, N_FOLDS, fold_split
from pipeline.schema import GENDER_CODES, LABEL_NAMES, SPLIT_DIRS
from pipeline.synthetic.faces import CUES, render_face

# Folder ages: one inside each Adience group, plus 35 between groups (25-32 and 38-43).
AGES = (2, 5, 10, 17, 28, 35, 40, 50, 65)

# Kinds of good image besides plain JPEG, one of each in the training split when it is large enough.
SPECIAL_KINDS = ("png", "gray_jpeg", "cmyk_jpeg", "palette_png", "rgba_png", "exif_rotated_jpeg",
                 "small_jpeg", "large_png")
# The validation split gets only the kinds that keep the colour cue: a greyscale face has only the
# weaker brightness cue, and one such image would cost 2.5 % of a 40-image validation accuracy.
VALID_SPECIAL_KINDS = ("png", "cmyk_jpeg", "exif_rotated_jpeg", "small_jpeg", "large_png")
# Kinds of bad file (what the job must reject) -> how the file is made.
BAD_KINDS = ("random_bytes", "broken_jpeg", "truncated_jpeg", "empty", "text", "bad_folder")
BAD_FOLDER = "unknown"
EXIF_ORIENTATION = 0x0112


class _ExpectedCounts:
    """Counts both generators' summaries answer (they hold by_label and images)."""

    by_label: dict[str, dict[str, int]]
    images: dict[str, str]

    def count(self, split: str) -> int:
        return sum(self.by_label.get(split, {}).values())

    @property
    def good(self) -> int:
        return len(self.images)


@dataclass
class SyntheticSummary(_ExpectedCounts):
    """What make_adience_tree wrote: the expected content of the preprocessed output."""

    root: str
    image_size: int
    by_label: dict[str, dict[str, int]]       # split -> "female"/"male" -> good images
    by_age: dict[str, dict[str, int]]         # split -> folder age as a string -> good images
    images: dict[str, str]                    # relpath -> kind of every good image
    rejects: dict[str, str]                   # relpath -> bad kind (see BAD_KINDS)
    skipped_folders: list[str] = field(default_factory=list)   # relpaths of badly named folders
    red_image: str | None = None              # relpath of a pure red (255, 0, 0) PNG, label female

    @property
    def found(self) -> int:
        """Every file under aligned/ and valid/: good images plus files to reject."""
        return len(self.images) + len(self.rejects)


def _encode(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """RGB pixels -> the bytes of a file of the given kind."""
    im = Image.fromarray(rgb, "RGB")
    out = io.BytesIO()
    if kind in ("jpeg", "small_jpeg"):
        im.save(out, "JPEG", quality=90)
    elif kind in ("png", "large_png", "red_png"):
        im.save(out, "PNG", compress_level=1)
    elif kind == "gray_jpeg":
        im.convert("L").save(out, "JPEG", quality=90)
    elif kind == "cmyk_jpeg":
        im.convert("CMYK").save(out, "JPEG", quality=90)
    elif kind == "palette_png":
        im.quantize(colors=64).save(out, "PNG")
    elif kind == "rgba_png":
        rgba = im.convert("RGBA")
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[: rgb.shape[0] // 8] = 0          # a transparent band at the top
        rgba.putalpha(Image.fromarray(alpha, "L"))
        rgba.save(out, "PNG", compress_level=1)
    elif kind == "exif_rotated_jpeg":
        # Stored turned a quarter left; orientation 6 tells viewers to turn it a quarter right.
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(out, "JPEG", quality=90, exif=exif)
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    return out.getvalue()


def write_image(path: str, rgb: np.ndarray, kind: str = "jpeg", seed: int = 0) -> None:
    """Write RGB pixels to `path` as a file of `kind` (one of "jpeg" and SPECIAL_KINDS)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(_encode(rgb, kind, np.random.default_rng(seed)))


def face_image(label: int, size: int = 256, seed: int = 0, cue: str = "colour") -> np.ndarray:
    """One synthetic face (RGB uint8 size×size×3) of the given label: 0 female, 1 male."""
    return render_face(np.random.default_rng(seed), label, size, cue)


def pure_red(size: int = 64) -> np.ndarray:
    """A pure red RGB picture (255, 0, 0): decoded, its BGR channel 2 is 255 and channels 0-1 are 0."""
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[..., 0] = 255
    return rgb


def bad_file_bytes(kind: str, rng: np.random.Generator, size: int = 64) -> bytes:
    """The content of a file that must be rejected (see BAD_KINDS; not "bad_folder")."""
    if kind == "empty":
        return b""
    if kind == "text":
        return b"This is not an image: a note left in the data folder.\n"
    if kind == "random_bytes":
        return rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    jpeg = _encode(render_face(rng, 0, size), "jpeg", rng)
    if kind == "truncated_jpeg":
        return jpeg[: len(jpeg) // 2]
    if kind == "broken_jpeg":
        # Intact headers, but the scan refers to a Huffman table that is not defined:
        # libjpeg stops with an error (random entropy bytes would only make it warn).
        data = bytearray(jpeg)
        sos = data.find(b"\xff\xda")
        data[sos + 6] = 0x33
        return bytes(data)
    raise ValueError(f"unknown bad kind {kind!r}")


def _folder(age: int, label: int) -> str:
    gender = {v: k for k, v in GENDER_CODES.items()}[label]
    return f"{age}_{gender}"


# Over 60 lines on purpose: one generated tree, folder after folder, with the summary it must match.
def make_adience_tree(root: str, n_train: int = 120, n_valid: int = 40, image_size: int = 256,
                      seed: int = 0, bad_files: bool = True, variety: bool = True,
                      cue: str = "colour") -> SyntheticSummary:
    """Write a generated Adience-shaped tree under `root` (a local directory) and say what is in it.

    n_train / n_valid good images alternate female/male and cycle over AGES. With `variety`, the
    training split also gets one image of every SPECIAL_KINDS format/size and one pure red PNG, the
    validation split one of every VALID_SPECIAL_KINDS (each when the split has at least twice as
    many images as special kinds); without it every image is a
    image_size×image_size JPEG (the benchmark's input). `cue`: what separates the classes, "colour"
    or "shape" (pipeline/synthetic/faces.py). With `bad_files`, the tree also holds one
    file of every BAD_KINDS kind (plus a truncated one in valid/), the bad-folder one being a good
    image inside aligned/unknown/.
    """
    if cue not in CUES:
        raise ValueError(f"unknown cue {cue!r}; choose one of {', '.join(CUES)}")
    rng = np.random.default_rng(seed)
    by_label = {s: {name: 0 for name in LABEL_NAMES} for s in SPLIT_DIRS}
    by_age: dict[str, dict[str, int]] = {s: {} for s in SPLIT_DIRS}
    images: dict[str, str] = {}
    rejects: dict[str, str] = {}
    red_image = None
    for split, n in (("train", n_train), ("valid", n_valid)):
        top = SPLIT_DIRS[split]
        kinds = SPECIAL_KINDS if split == "train" else VALID_SPECIAL_KINDS
        specials = list(kinds) if variety and n >= 2 * (len(kinds) + 1) else []
        if specials and split == "train":
            specials.append("red_png")
        for i in range(n):
            label = i % 2
            age = AGES[(i // 2) % len(AGES)]
            kind = specials[i] if i < len(specials) else "jpeg"
            if kind == "red_png":
                label = 0   # red is the warm (female) cue
            size = {"small_jpeg": max(16, image_size // 2), "large_png": image_size * 3 // 2}.get(kind, image_size)
            rgb = pure_red(size) if kind == "red_png" else render_face(rng, label, size, cue)
            ext = "png" if kind.endswith("png") else "jpg"
            relpath = f"{top}/{_folder(age, label)}/landmark_aligned_face.{i}.{rng.integers(1 << 40):010x}.{ext}"
            path = os.path.join(root, *relpath.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(_encode(rgb, kind, rng))
            images[relpath] = kind
            by_label[split][LABEL_NAMES[label]] += 1
            by_age[split][str(age)] = by_age[split].get(str(age), 0) + 1
            if kind == "red_png":
                red_image = relpath
    skipped = []
    if bad_files:
        planned = [("train", kind) for kind in BAD_KINDS] + [("valid", "truncated_jpeg")]
        for j, (split, kind) in enumerate(planned):
            top = SPLIT_DIRS[split]
            if kind == "bad_folder":
                folder = f"{top}/{BAD_FOLDER}"
                skipped.append(folder)
                relpath = f"{folder}/landmark_aligned_face.bad.{j}.jpg"
                data = _encode(render_face(rng, 0, image_size), "jpeg", rng)
            else:
                relpath = f"{top}/{_folder(AGES[j % len(AGES)], j % 2)}/bad_{kind}.{j}.jpg"
                data = bad_file_bytes(kind, rng)
            path = os.path.join(root, *relpath.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            rejects[relpath] = kind
    for split in SPLIT_DIRS:   # a split with no file at all has no folder: not in the output
        prefix = SPLIT_DIRS[split] + "/"
        if not any(p.startswith(prefix) for p in (*images, *rejects)):
            by_label.pop(split)
            by_age.pop(split)
    return SyntheticSummary(root=root, image_size=image_size, by_label=by_label, by_age=by_age,
                            images=images, rejects=rejects, skipped_folders=skipped, red_image=red_image)


# ------------------------------------------------------------------ the official 5-fold distribution
# Age cells of the fold files, with the age the records must store: ranges (kept as their midpoint,
# in the range's group), plain numbers, and "None" (unknown, -1). Written here, not computed with
# the parser, so that the tests check the parser against an independent truth.
FOLD_AGE_CELLS = (("(25, 32)", 28), ("(0, 2)", 1), ("35", 35), ("(38, 43)", 40), ("None", -1),
                  ("(8, 12)", 10), ("(60, 100)", 80), ("13", 13), ("(15, 20)", 17), ("(48, 53)", 50))
# Bad rows (what preprocess must reject) -> the kind of reason it must give.
BAD_ROW_KINDS = ("gender_u", "empty_gender", "missing_image", "malformed", "bad_age", "corrupt_image")


@dataclass
class FoldsSummary(_ExpectedCounts):
    """What make_adience_folds wrote: the expected content of the preprocessed output."""

    root: str
    image_size: int
    by_label: dict[str, dict[str, int]]       # fold split -> "female"/"male" -> good images
    by_age: dict[str, dict[str, int]]         # fold split -> stored age as a string -> good images
    images: dict[str, str]                    # relpath -> fold split of every good image
    labels: dict[str, int]                    # relpath -> label of every good image
    ages: dict[str, int]                      # relpath -> stored age of every good image
    users: dict[str, int]                     # user_id -> its fold
    rejects: dict[str, str]                   # relpath (or "fold_k_data.txt:line") -> BAD_ROW_KINDS kind
    unlisted: list[str] = field(default_factory=list)   # image files no fold row names

    @property
    def found(self) -> int:
        """Rows of the fold files: good images plus rows to reject."""
        return len(self.images) + len(self.rejects)


# Over 60 lines on purpose: the fold files, the images and the summary written together, row by row.
def make_adience_folds(root: str, n_users: int = 10, faces_per_user: int = 4, image_size: int = 64,
                       seed: int = 0, bad_rows: bool = True) -> FoldsSummary:
    """Write the official distribution's layout under `root` (a local directory): fold_0_data.txt …
    fold_4_data.txt and aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image> JPEGs.

    User i belongs to fold i % 5 only (subject-exclusive folds); its faces alternate female/male
    (starting with i's parity, so every fold with two users has both classes) and cycle over
    FOLD_AGE_CELLS. With `bad_rows`, the fold files also hold one row of every BAD_ROW_KINDS kind
    (spread over the folds), and aligned/ one image that no row names (unlisted).
    """
    rng = np.random.default_rng(seed)
    lines: dict[int, list[list[str]]] = {k: [] for k in range(N_FOLDS)}
    by_label = {fold_split(k): {name: 0 for name in LABEL_NAMES} for k in range(N_FOLDS)}
    by_age: dict[str, dict[str, int]] = {fold_split(k): {} for k in range(N_FOLDS)}
    images: dict[str, str] = {}
    labels: dict[str, int] = {}
    ages: dict[str, int] = {}
    users: dict[str, int] = {}
    rejects: dict[str, str] = {}
    face_id = 0

    def geometry() -> list[str]:
        x, y = rng.integers(0, 800, 2)
        return [str(x), str(y), str(rng.integers(100, 900)), str(rng.integers(100, 900)),
                str(rng.integers(-90, 90)), str(rng.integers(-30, 30)), str(rng.integers(0, 200))]

    def write_face(user: str, image: str, face: int, data: bytes) -> str:
        relpath = f"aligned/{user}/landmark_aligned_face.{face}.{image}"
        path = os.path.join(root, *relpath.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return relpath

    def original_name() -> str:
        return f"{rng.integers(1 << 40):011d}_{rng.integers(1 << 32):08x}_o.jpg"

    for i in range(n_users):
        k = i % N_FOLDS
        user = f"{rng.integers(10_000_000, 99_999_999)}@N{i % 10:02d}"
        users[user] = k
        for j in range(faces_per_user):
            label = (i + j) % 2
            cell, age = FOLD_AGE_CELLS[(i * faces_per_user + j) % len(FOLD_AGE_CELLS)]
            face_id += 1
            image = original_name()
            relpath = write_face(user, image, face_id, _encode(render_face(rng, label, image_size), "jpeg", rng))
            lines[k].append([user, image, str(face_id), cell, "fm"[label], *geometry()])
            split = fold_split(k)
            images[relpath], labels[relpath], ages[relpath] = split, label, age
            by_label[split][LABEL_NAMES[label]] += 1
            by_age[split][str(age)] = by_age[split].get(str(age), 0) + 1
    unlisted = []
    if bad_rows:
        user_of_fold = {k: u for u, k in reversed(users.items())}
        for n, kind in enumerate(BAD_ROW_KINDS):
            k = n % N_FOLDS
            user = user_of_fold.get(k) or next(iter(users))
            k = users[user]
            face_id += 1
            image = original_name()
            cells = [user, image, str(face_id), "(25, 32)", "f", *geometry()]
            if kind == "malformed":
                lines[k].append(["this line has no tabs, it is not a row"])
                rejects[f"{FOLD_FILE.format(k=k)}:{len(lines[k]) + 1}"] = kind   # +1: the header
                continue
            data = _encode(render_face(rng, 0, image_size), "jpeg", rng)
            if kind == "gender_u":
                cells[4] = "u"
            elif kind == "empty_gender":
                cells[4] = ""
            elif kind == "bad_age":
                cells[3] = "(about, thirty)"
            elif kind == "corrupt_image":
                data = data[: len(data) // 2]
            relpath = f"aligned/{user}/landmark_aligned_face.{face_id}.{image}"
            if kind != "missing_image":
                write_face(user, image, face_id, data)
            lines[k].append(cells)
            rejects[relpath] = kind
        face_id += 1
        unlisted.append(write_face(next(iter(users)), original_name(), face_id,
                                   _encode(render_face(rng, 1, image_size), "jpeg", rng)))
    os.makedirs(root, exist_ok=True)
    for k in range(N_FOLDS):
        with open(os.path.join(root, FOLD_FILE.format(k=k)), "w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(FOLD_COLUMNS) + "\n")
            f.write("".join("\t".join(cells) + "\n" for cells in lines[k]))
    return FoldsSummary(root=root, image_size=image_size, by_label=by_label, by_age=by_age, images=images,
                        labels=labels, ages=ages, users=users, rejects=rejects, unlisted=unlisted)
