"""What one input file becomes before the model sees it: its rows and the face crops to score.

`prepare` runs in classify's thread pool, one file at a time: read and decode the file, and then,
depending on `faces` (see model.inference.classify), either take the whole file as an aligned crop or find
its faces (model.inference.faces.detect), align each like Adience's faces (model.inference.faces.align) and skip the small
ones. Errors become rows, never exceptions: one unreadable file does not stop the others."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from model.inference.inputs import Entry
from model.inference.faces.detect import Face, FaceDetector
from pipeline.errors import DataError

FACE_MODES = ("auto", "aligned", "detect")
ADIENCE_PREFIX = "landmark_aligned_face."
# What the model was shown: the input file itself, or a face aligned from a detection.
CROP_INPUT, CROP_DETECTED = "input", "detected"
# Photos kept for --annotate are shrunk to this longer side (a picture to check at a glance).
ANNOTATE_MAX_SIDE = 1024


@dataclass
class ClassifyRow:
    """One output row: a face (index, box x/y/w/h and detector confidence when detected) with its
    label and score, or an error with its reason."""

    path: str
    face: int | None = None
    box: list[int] | None = None
    confidence: float | None = None
    crop: str | None = None
    label: str | None = None
    score: float | None = None
    error: str | None = None
    tta: str | None = None          # the test-time augmentation the score was made with (model/tta.py)


@dataclass
class PrepareSettings:
    faces: str
    size: int
    min_face: int
    detector: FaceDetector
    annotate: bool


@dataclass
class Prepared:
    """One file ready for the model: its rows (in output order), the crops of the rows to score
    (the first len(crops) rows), and what --annotate draws."""

    path: str
    rows: list[ClassifyRow]
    crops: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray | None] = field(default_factory=list)
    small: list[Face] = field(default_factory=list)
    picture: object = None          # PIL image, shrunk to ANNOTATE_MAX_SIDE
    scale: float = 1.0              # picture pixels per photo pixel

    @property
    def done(self) -> bool:
        return all(r.error is not None or r.score is not None for r in self.rows)


def is_adience_name(path: str) -> bool:
    return os.path.basename(path).startswith(ADIENCE_PREFIX)


def _box(face: Face) -> list[int]:
    return [int(round(v)) for v in face.box]


def _picture(photo, settings: PrepareSettings) -> tuple[object, float]:
    if not settings.annotate:
        return None, 1.0
    scale = min(1.0, ANNOTATE_MAX_SIDE / max(photo.size))
    if scale == 1.0:
        return photo.copy(), 1.0
    from PIL import Image

    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    return photo.resize(size, Image.Resampling.LANCZOS), scale


def _as_crop(path: str, crop: np.ndarray, photo, settings: PrepareSettings, face: Face | None = None) -> Prepared:
    row = ClassifyRow(path=path, face=0, crop=CROP_INPUT)
    if face is not None:
        row.box, row.confidence = _box(face), face.confidence
    picture, scale = _picture(photo, settings) if photo is not None else (None, 1.0)
    return Prepared(path, [row], [crop], [face.landmarks if face else None], picture=picture, scale=scale)


def _detected(path: str, data: bytes, photo, settings: PrepareSettings) -> Prepared:
    from model.inference.faces.align import align_face, looks_aligned
    from pipeline.decode import decode_image

    faces = settings.detector.detect(photo)
    if settings.faces == "auto" and len(faces) == 1 and looks_aligned(photo.width, photo.height, faces[0].landmarks):
        return _as_crop(path, decode_image(data, settings.size), photo, settings, faces[0])
    kept = [f for f in faces if f.size >= settings.min_face]
    small = [f for f in faces if f.size < settings.min_face]
    picture, scale = _picture(photo, settings)
    if not kept:
        reason = (f"no face of at least {settings.min_face} px found ({len(small)} smaller skipped)" if small
                  else "no face found")
        return Prepared(path, [ClassifyRow(path=path, error=reason)], small=small, picture=picture, scale=scale)
    rows = [ClassifyRow(path=path, face=i, box=_box(f), confidence=f.confidence, crop=CROP_DETECTED)
            for i, f in enumerate(kept)]
    crops = [align_face(photo, f.landmarks, settings.size) for f in kept]
    return Prepared(path, rows, crops, [f.landmarks for f in kept], small, picture, scale)


def prepare(entry: Entry, settings: PrepareSettings) -> Prepared:
    """Read, decode and (photos) search one file: runs in the thread pool."""
    from pipeline.decode import DecodeError, decode_photo, load_decoded, load_image, load_photo

    if entry.error is not None:
        return Prepared(entry.path, [ClassifyRow(path=entry.path, error=entry.error)])
    try:
        if settings.faces == "aligned" or (settings.faces == "auto" and is_adience_name(entry.path)):
            crop = load_image(entry.path, settings.size)
            return _as_crop(entry.path, crop, load_photo(entry.path) if settings.annotate else None, settings)
        data, photo = load_decoded(entry.path, lambda raw: (raw, decode_photo(raw)))
        return _detected(entry.path, data, photo, settings)
    except DecodeError as err:
        return Prepared(entry.path, [ClassifyRow(path=entry.path, error=err.reason)])
    except DataError as err:
        return Prepared(entry.path, [ClassifyRow(path=entry.path, error=str(err))])
