"""Batched classification of faces in image files, folders and lists of paths, streamed.

What a file is (`faces`):
- "aligned": a face crop like Adience's aligned faces. It goes through `pipeline.decode.load_image`,
  the function `preprocess` uses, at the model's input size: the pixels training saw.
- "detect": a photo. Every face is found (`model.inference.faces.detect`), aligned the way Adience's faces are
  (`model.inference.faces.align`: eyes level, Adience's margin, then the same resize as `load_image`) and
  classified; one row per face, left to right. Faces smaller than `min_face` pixels are skipped and
  counted; a photo without a face kept gets one error row (it counts as failed, like an unreadable
  file).
- "auto" (the default) treats a file as an aligned crop, without detection, when its name starts
  with "landmark_aligned_face." (how Adience names its aligned faces, and the files preprocess
  reads), or when detection finds exactly one face in a square picture and that face's aligned
  square is about the picture itself (`model.inference.faces.align.looks_aligned`): then the whole picture is
  classified as `aligned` would, and the row carries the detector's box. Otherwise as "detect".

Throughput: files are read, decoded and searched for faces in a thread pool a window ahead of the
model (Pillow and TensorFlow release the GIL), and the faces of many files are batched into one
model call. Rows come out in input order as soon as they are scored, nothing is kept once
yielded (a `Tally` keeps the counts), so memory stays bounded whatever the number of files.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from model.contract import DECISION_THRESHOLD, checked_threshold, image_size_of, label_name
from model.inference.faces.detect import DEFAULT_MIN_CONFIDENCE, DEFAULT_MIN_FACE, FaceDetector
from model.inference.inputs import Entry, Inputs

# ClassifyRow is part of this module's API: the rows it yields.
from model.inference.prepare import FACE_MODES, ClassifyRow, Prepared, PrepareSettings, prepare
from model.progress import Advanced, Ended, Progress, Started, TotalKnown
from model.tta import DEFAULT_TTA, averaged, check_tta
from pipeline.errors import DataError

# Fewer files are kept in flight with --annotate: their pictures (ANNOTATE_MAX_SIDE) then hold
# at most about 100 MB.
ANNOTATE_WINDOW = 32

# The name classify's progress events carry (evaluate's carry the split's).
PROGRESS_NAME = "classify"


@dataclass
class Tally:
    """Counts of a run, kept instead of its rows."""

    files: int = 0          # inputs done (their rows written)
    failed: int = 0         # of them, with no face classified: unreadable, or no face found
    faces: int = 0          # rows with a score
    small_faces: int = 0    # faces found but smaller than min_face: skipped
    labels: dict[str, int] = field(default_factory=dict)

    def add_row(self, row: ClassifyRow) -> None:
        """A row handed out (and so written)."""
        if row.label is not None:
            self.faces += 1
            self.labels[row.label] = self.labels.get(row.label, 0) + 1

    def add_file(self, rows: list[ClassifyRow], small_faces: int) -> None:
        """A file whose rows were all handed out."""
        self.files += 1
        self.small_faces += small_faces
        self.failed += all(r.label is None for r in rows)


def _in_order(pool: ThreadPoolExecutor, entries: Iterable[Entry], work: Callable, window: int) -> Iterator:
    """work(entry) for each entry, run in the pool up to `window` entries ahead, results in order."""
    pending: deque = deque()
    upcoming = iter(entries)
    for entry in upcoming:
        pending.append(pool.submit(work, entry))
        if len(pending) >= window:
            break
    while pending:
        future = pending.popleft()
        nxt = next(upcoming, None)
        if nxt is not None:
            pending.append(pool.submit(work, nxt))
        yield future.result()


def make_forward(model, tta: str = DEFAULT_TTA) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass over uint8 [B, S, S, 3] batches of any B (one trace for all sizes),
    scoring with test-time augmentation `tta` (model/tta.py: "flip" is one call on 2B images)."""
    import tensorflow as tf

    check_tta(tta)
    size = image_size_of(model)
    spec = tf.TensorSpec([None, size, size, 3], tf.uint8)
    compiled = tf.function(lambda x: averaged(lambda y: model(y, training=False), x, tta), input_signature=[spec])

    def forward(batch: np.ndarray) -> np.ndarray:
        return compiled(tf.constant(batch)).numpy().reshape(-1)

    forward.tta = tta           # what ClassifyStream checks a forward pass handed to it against
    return forward


class ClassifyStream:
    """Iterating yields the rows of `entries` in order as they are scored; `tally` counts them.

    annotate_dir: each decoded file is also written there with its faces drawn (model.inference.faces.annotate).
    total: a function counting the entries, run in a background thread for the progress bar.
    threshold: a face is male when its score is above it (see `resolve_threshold` for the command's choice).
    tta: the test-time augmentation (model/tta.py) of the forward pass made here, recorded in every
    scored row; a `forward` given must have been made with the same (make_forward(model, tta)).
    """

    def __init__(self, model, entries: Iterable[Entry], faces: str = "auto", min_face: int = DEFAULT_MIN_FACE,
                 batch_size: int = 64, workers: int | None = None, progress: Progress | None = None,
                 forward=None, annotate_dir: str | None = None, total: Callable[[], int] | None = None,
                 threshold: float = DECISION_THRESHOLD, tta: str = DEFAULT_TTA,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE):
        if faces not in FACE_MODES:
            raise DataError(f"`faces` must be one of {', '.join(FACE_MODES)}, got {faces!r}", field="faces")
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}")
        if min_face < 1:
            raise DataError(f"`min_face` must be a positive number of pixels, got {min_face}", field="min_face")
        if not 0.0 <= min_confidence <= 1.0:
            raise DataError(f"`min_confidence` must be in [0, 1], got {min_confidence}", field="min_confidence")
        self.entries, self.batch_size, self.total, self.tta = entries, batch_size, total, check_tta(tta)
        self.threshold = checked_threshold(threshold)
        if forward is not None and getattr(forward, "tta", tta) != tta:
            # Rows must not claim a mode their scores were not made with.
            raise ValueError(f"the forward pass given scores with tta {forward.tta!r}, not {tta!r}")
        self.workers = workers or max(2, os.cpu_count() or 1)
        self.forward = forward or make_forward(model, tta)
        self.progress = progress or (lambda event: None)
        self.annotate_dir = annotate_dir
        self.detector = FaceDetector(min_face, min_confidence)
        self.settings = PrepareSettings(faces, image_size_of(model), min_face, self.detector,
                                        annotate=annotate_dir is not None)
        self.tally = Tally()

    def _count_in_background(self) -> dict:
        found: dict = {}
        if self.total is not None:
            # A daemon thread: Ctrl-C on a huge folder must not wait for its listing to finish.
            threading.Thread(target=lambda: found.setdefault("total", self.total()), daemon=True).start()
        return found

    def _score(self, batch: list[tuple[ClassifyRow, np.ndarray]]) -> None:
        if batch:
            scores = self.forward(np.stack([crop for _, crop in batch]))
            for (row, _), score in zip(batch, scores):
                row.score = float(score)
                row.label = label_name(row.score, self.threshold)
                row.tta = self.tta

    def _finish(self, prepared: Prepared) -> Iterator[ClassifyRow]:
        """A file's rows, counted as each is taken (the consumer writes a row before asking for the
        next, so the tally matches what was written even when the run is interrupted)."""
        if self.annotate_dir is not None and prepared.picture is not None:
            from model.inference.faces.annotate import save_annotated

            save_annotated(self.annotate_dir, prepared)
        for row in prepared.rows:
            yield row
            self.tally.add_row(row)
        self.tally.add_file(prepared.rows, len(prepared.small))
        self.progress(Advanced(PROGRESS_NAME, 1, faces=self.tally.faces))

    def __iter__(self) -> Iterator[ClassifyRow]:
        counted = self._count_in_background()
        total_sent = False
        self.progress(Started(PROGRESS_NAME, None, unit="file"))
        window = 2 * self.batch_size if self.annotate_dir is None else min(2 * self.batch_size, ANNOTATE_WINDOW)
        window = max(window, 2 * self.workers)
        pending: deque[Prepared] = deque()
        batch: list[tuple[ClassifyRow, np.ndarray]] = []
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="classify")
        try:
            for prepared in _in_order(pool, self.entries, lambda e: prepare(e, self.settings), window):
                pending.append(prepared)
                batch += zip(prepared.rows, prepared.crops)
                prepared.crops = []
                while len(batch) >= self.batch_size:
                    self._score(batch[:self.batch_size])
                    del batch[:self.batch_size]
                if len(pending) > window:        # a long run of files without faces: bound memory
                    self._score(batch)
                    batch.clear()
                while pending and pending[0].done:
                    yield from self._finish(pending.popleft())
                if not total_sent and "total" in counted:
                    total_sent = True
                    self.progress(TotalKnown(PROGRESS_NAME, counted["total"]))
            self._score(batch)
            while pending:
                yield from self._finish(pending.popleft())
        finally:
            # Stopped early (Ctrl-C, an error): drop the files queued, wait only for those running.
            pool.shutdown(wait=True, cancel_futures=True)
            self.progress(Ended(PROGRESS_NAME))


# ------------------------------------------------------------------ library entry points
def resolve_threshold(model_path: str, threshold: float | None = None) -> tuple[float, str]:
    """(threshold, source): `threshold` if given ("flag"), else the one `evaluate` stored in the model
    file ("model"), else DECISION_THRESHOLD ("default")."""
    from model.network.calibrated import stored_threshold

    if threshold is not None:
        return checked_threshold(threshold), "flag"
    stored = stored_threshold(model_path)
    return (stored, "model") if stored is not None else (DECISION_THRESHOLD, "default")


@dataclass
class ClassifyResult:
    rows: list[ClassifyRow]
    tally: Tally
    skipped: int = 0                 # files in searched folders without an image extension
    single_image: bool = False       # the original's form: one PATH that names one image file
    image_size: int = 0


@dataclass
class ExpandedInputs:
    """Inputs turned into a flat list: a path to classify, or an error, per entry, in order."""

    entries: list[Entry]
    skipped: int = 0
    single_image: bool = False


def expand_inputs(inputs: Sequence[str]) -> ExpandedInputs:
    """All entries of `inputs` at once (model.inference.inputs.Inputs streams them)."""
    stream = Inputs(inputs)
    entries = list(stream)
    return ExpandedInputs(entries, stream.skipped, stream.single_image)


def classify_files(model, paths: Sequence[str], batch_size: int = 64, workers: int | None = None,
                   progress: Progress | None = None, forward=None, faces: str = "aligned",
                   threshold: float = DECISION_THRESHOLD, tta: str = DEFAULT_TTA) -> list[ClassifyRow]:
    """Classify image files (aligned face crops unless `faces` says otherwise) with a loaded classifier."""
    return list(ClassifyStream(model, [Entry(p) for p in paths], faces=faces, batch_size=batch_size,
                               workers=workers, progress=progress, forward=forward, threshold=threshold, tta=tta))


def classify(model_path: str, inputs: Sequence[str], batch_size: int = 64, workers: int | None = None,
             progress: Progress | None = None, faces: str = "auto", min_face: int = DEFAULT_MIN_FACE,
             annotate_dir: str | None = None, threshold: float | None = None, tta: str = DEFAULT_TTA,
             min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> ClassifyResult:
    """Load a classifier (ModelError if the file is not one), classify every face of the inputs and
    return all rows at once (for a few files; the command streams them with ClassifyStream).
    threshold: None decides at the model's stored threshold, else DECISION_THRESHOLD."""
    from model.network.head import load_classifier

    model = load_classifier(model_path)
    decide_at, _ = resolve_threshold(model_path, threshold)
    stream_inputs = Inputs(inputs)
    stream = ClassifyStream(model, stream_inputs, faces=faces, min_face=min_face, batch_size=batch_size,
                            workers=workers, progress=progress, annotate_dir=annotate_dir, threshold=decide_at,
                            tta=tta, min_confidence=min_confidence)
    rows = list(stream)
    return ClassifyResult(rows, stream.tally, stream_inputs.skipped, stream_inputs.single_image,
                          image_size_of(model))
