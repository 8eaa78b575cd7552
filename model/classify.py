"""Batched classification of image files, folders and lists of paths.

Every file goes through `pipeline.decode.load_image`, the function `preprocess` uses, at the
model's input size: serving sees exactly the pixels training saw. Decoding runs in a thread pool a
window ahead of the model (Pillow releases the GIL while it decodes and resizes, TensorFlow while
it computes), so decoding the next batch overlaps inference on the current one. A file that cannot
be read or decoded becomes an error row; the others are still classified.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from model.evaluate import label_name
from pipeline.errors import DataError

# Extensions (lower case) of the files a directory search picks up.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OUTPUT_FORMATS = ("table", "csv", "json")
ROW_FIELDS = ("path", "label", "score", "error")

Progress = Callable[[dict], None]


@dataclass
class ClassifyRow:
    """One output row: a label and score, or an error with its reason."""

    path: str
    label: str | None = None
    score: float | None = None
    error: str | None = None


@dataclass
class ClassifyResult:
    rows: list[ClassifyRow]
    skipped: int = 0                 # files in searched folders without an image extension
    single_image: bool = False       # the original's form: one PATH that names one image file
    image_size: int = 0

    @property
    def failed(self) -> int:
        return sum(row.error is not None for row in self.rows)

    def counts(self) -> dict[str, int]:
        out = {"images": len(self.rows), "failed": self.failed}
        for row in self.rows:
            if row.label is not None:
                out[row.label] = out.get(row.label, 0) + 1
        return out


@dataclass
class ExpandedInputs:
    """Inputs turned into a flat list: a path to classify, or an error row, per entry, in order."""

    entries: list[ClassifyRow] = field(default_factory=list)   # error set => not to be classified
    skipped: int = 0
    single_image: bool = False


# ------------------------------------------------------------------ inputs
def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _is_remote(path: str) -> bool:
    return "://" in path


def _read_path_list(path: str) -> list[str] | None:
    """The paths listed in a text file, or None when the file is not text (then it is an image
    candidate and decoding says what is wrong). Relative entries are relative to the list's folder."""
    from pipeline.decode import read_bytes

    data = read_bytes(path)
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    base = os.path.dirname(path)
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entries.append(line if os.path.isabs(line) or _is_remote(line) else os.path.join(base, line))
    return entries


def _walk_images(directory: str) -> tuple[list[str], int, list[OSError]]:
    """Image files under directory (recursive, sorted, symlinked folders not followed), the count
    of other files skipped, and the folders that could not be listed (never silently lost)."""
    found, skipped, errors = [], 0, []
    for root, dirs, files in os.walk(directory, onerror=errors.append):
        dirs.sort()
        for name in sorted(files):
            if is_image_name(name):
                found.append(os.path.join(root, name))
            else:
                skipped += 1
    return found, skipped, errors


def expand_inputs(inputs: Sequence[str]) -> ExpandedInputs:
    """Images as given, folders searched recursively by extension, text files read as path lists
    (one per line; blank lines and # comments ignored; entries may be images or folders).
    A missing path or an empty folder becomes an error row; a file listed twice is classified once."""
    out = ExpandedInputs()
    seen: set[str] = set()

    def add_file(path: str) -> None:
        key = path if _is_remote(path) else os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.entries.append(ClassifyRow(path=path))

    def add_error(path: str, reason: str) -> None:
        out.entries.append(ClassifyRow(path=path, error=reason))

    def add(path: str, allow_list: bool) -> None:
        if _is_remote(path):
            # Remote (gs://, s3://) paths are read through Beam's FileSystems when decoded.
            add_file(path)
        elif os.path.isdir(path):
            files, skipped, errors = _walk_images(path)
            out.skipped += skipped
            for err in errors:
                add_error(err.filename or path, f"cannot list folder ({err.strerror or err})")
            if not files and not errors:
                add_error(path, f"folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
            for f in files:
                add_file(f)
        elif not os.path.exists(path):
            add_error(path, "no such file or directory")
        elif is_image_name(path) or not allow_list:
            add_file(path)
        else:
            try:
                listed = _read_path_list(path)
            except OSError as err:
                add_error(path, f"cannot read file ({err.strerror or err})")
                return
            if listed is None:
                add_file(path)      # not text: let the decoder say why it is not an image either
                return
            if not listed:
                add_error(path, "path list holds no paths")
            for entry in listed:
                add(entry, allow_list=False)     # lists do not nest (no cycles)

    for path in inputs:
        add(path, allow_list=True)
    # One PATH standing for one image (not a folder, not a list): the original's one-image form.
    out.single_image = (len(inputs) == 1 and len(out.entries) == 1 and out.entries[0].path == inputs[0]
                        and not os.path.isdir(inputs[0]))
    return out


# ------------------------------------------------------------------ classification
def _decode(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    from pipeline.decode import DecodeError, load_image

    try:
        return load_image(path, size), None
    except DecodeError as err:
        return None, err.reason
    except DataError as err:
        return None, str(err)


def _decoded_in_order(paths: list[str], size: int, workers: int, window: int) -> Iterator[tuple]:
    """(path, image or None, error or None) in input order; decoding runs up to `window` ahead."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        upcoming = iter(paths)
        for path in upcoming:
            pending.append((path, pool.submit(_decode, path, size)))
            if len(pending) >= window:
                break
        while pending:
            path, future = pending.popleft()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode, nxt, size)))
            yield (path, *future.result())


def model_image_size(model) -> int:
    """The square input size S of a [B, S, S, 3] image model."""
    shape = model.input_shape
    return int(shape[1])


def make_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass over uint8 [B, S, S, 3] batches of any B (one trace for all sizes)."""
    import tensorflow as tf

    size = model_image_size(model)
    spec = tf.TensorSpec([None, size, size, 3], tf.uint8)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda batch: forward(tf.constant(batch)).numpy().reshape(-1)


def classify_files(model, paths: Sequence[str], batch_size: int = 64, workers: int | None = None,
                   progress: Progress | None = None, forward=None) -> list[ClassifyRow]:
    """Classify image files with a loaded classifier; one row per path, in order."""
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    size = model_image_size(model)
    forward = forward or make_forward(model)
    workers = workers or max(2, os.cpu_count() or 1)
    rows = [ClassifyRow(path=p) for p in paths]
    if progress:
        progress({"event": "start", "total": len(rows)})

    batch: list[np.ndarray] = []
    batch_rows: list[ClassifyRow] = []

    def flush() -> None:
        scores = forward(np.stack(batch))
        for row, score in zip(batch_rows, scores):
            row.score = float(score)
            row.label = label_name(row.score)
        if progress:
            progress({"event": "batch", "count": len(batch)})
        batch.clear()
        batch_rows.clear()

    for row, (_, image, error) in zip(rows, _decoded_in_order(list(paths), size, workers, 2 * batch_size)):
        if error is not None:
            row.error = error
            if progress:
                progress({"event": "batch", "count": 1})
            continue
        batch.append(image)
        batch_rows.append(row)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if progress:
        progress({"event": "end"})
    return rows


def classify(model_path: str, inputs: Sequence[str], batch_size: int = 64, workers: int | None = None,
             progress: Progress | None = None) -> ClassifyResult:
    """Load a classifier (ModelError if the file is not one), expand the inputs, classify them."""
    from model.classifier import load_classifier

    model = load_classifier(model_path)
    expanded = expand_inputs(inputs)
    todo = [e.path for e in expanded.entries if e.error is None]
    done = iter(classify_files(model, todo, batch_size=batch_size, workers=workers, progress=progress))
    rows = [entry if entry.error is not None else next(done) for entry in expanded.entries]
    return ClassifyResult(rows=rows, skipped=expanded.skipped, single_image=expanded.single_image,
                          image_size=model_image_size(model))


# ------------------------------------------------------------------ output
def familiar_block(row: ClassifyRow) -> str:
    """The original's one-image output."""
    return f"****\noutput class is {row.label}. (sigmoid value={row.score!r})\n****\n"


def format_rows(rows: Iterable[ClassifyRow], fmt: str = "table") -> str:
    """Rows as an aligned table, CSV (header first) or a JSON list; scores are P(male)."""
    rows = list(rows)
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(ROW_FIELDS)
        for r in rows:
            writer.writerow((r.path, r.label or "", "" if r.score is None else f"{r.score:.9g}", r.error or ""))
        return buffer.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    cells = [("path", "label", "score", "error")]
    for r in rows:
        cells.append((r.path, r.label or "-", "-" if r.score is None else f"{r.score:.6f}", r.error or ""))
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = []
    for c in cells:
        line = f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:>{widths[2]}}"
        lines.append((line + "  " + c[3]).rstrip())
    return "\n".join(lines) + "\n"
