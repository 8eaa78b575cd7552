"""`classify`'s rows as text, written as they come: table, CSV, JSON (one array) and JSON Lines.

Every format streams: each row is written and flushed as soon as it is scored (a table's columns
have fixed widths, the path last, instead of widths measured over all rows; a JSON array is
opened first and closed at the end). Scores are P(male).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from typing import Iterable, TextIO

from model.inference.classify import ClassifyRow, Tally

OUTPUT_FORMATS = ("table", "csv", "json", "jsonl")
# CSV columns: the box is spread over x, y, w, h (JSON keeps it as one [x, y, w, h] list).
CSV_FIELDS = ("path", "face", "x", "y", "w", "h", "confidence", "crop", "label", "score", "error", "tta")
_TABLE = "{label:<6}  {score:>8}  {face:>4}  {box:<19}  {conf:>5}  {path}"
# Characters never written raw to a terminal: C0 and C1 controls and DEL (ANSI escapes, carriage
# returns that overwrite the line), and the bidirectional overrides that reorder what is shown.
_UNSHOWN = frozenset([*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def displayable(text: str) -> str:
    """`text` for a terminal: each control or bidi-override character as a visible escape
    (\\x1b, \\r, \\u202e), so a file name cannot move the cursor, recolour or hide what follows."""
    if not any(ord(c) in _UNSHOWN for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if ord(c) in _UNSHOWN else c for c in text)


def _table_line(row: ClassifyRow | None) -> str:
    if row is None:
        return _TABLE.format(label="label", score="score", face="face", box="box x,y,w,h", conf="conf", path="path")
    line = _TABLE.format(label=row.label or "-", score="-" if row.score is None else f"{row.score:.6f}",
                         face="-" if row.face is None else row.face,
                         box="-" if row.box is None else ",".join(map(str, row.box)),
                         conf="-" if row.confidence is None else f"{row.confidence:.3f}", path=displayable(row.path))
    return f"{line}  error: {displayable(row.error)}" if row.error else line


def _csv_cells(row: ClassifyRow) -> list:
    box = row.box or ["", "", "", ""]
    return [row.path, "" if row.face is None else row.face, *box,
            "" if row.confidence is None else f"{row.confidence:.6f}", row.crop or "", row.label or "",
            "" if row.score is None else f"{row.score:.9g}", row.error or "", row.tta or ""]


class RowWriter:
    """Writes rows to a text stream in one of OUTPUT_FORMATS, flushing after each `write`;
    `close` ends the output (a JSON array's closing bracket) and must follow, also after an error."""

    def __init__(self, out: TextIO, fmt: str = "table"):
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        self.out, self.fmt, self.count = out, fmt, 0
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        # QUOTE_MINIMAL quotes a cell holding the line terminator ("\n") but not "\r", which readers
        # also end a row at: a row with a carriage return anywhere has every cell quoted.
        self._csv_quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL) if fmt == "csv" else None
        if fmt == "csv":
            self._csv.writerow(CSV_FIELDS)
        elif fmt == "table":
            out.write(_table_line(None) + "\n")
        elif fmt == "json":
            out.write("[")
        out.flush()

    def write(self, rows: Iterable[ClassifyRow]) -> None:
        for row in rows:
            if self.fmt == "csv":
                cells = _csv_cells(row)
                quoted = any("\r" in cell for cell in cells if isinstance(cell, str))
                (self._csv_quoted if quoted else self._csv).writerow(cells)
            elif self.fmt == "table":
                self.out.write(_table_line(row) + "\n")
            elif self.fmt == "jsonl":
                self.out.write(json.dumps(asdict(row)) + "\n")
            else:
                self.out.write(("\n  " if self.count == 0 else ",\n  ") + json.dumps(asdict(row)))
            self.count += 1
        self.out.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")
        self.out.flush()


def format_rows(rows: Iterable[ClassifyRow], fmt: str = "table") -> str:
    """All rows as one string in one of OUTPUT_FORMATS."""
    import io

    buffer = io.StringIO()
    writer = RowWriter(buffer, fmt)
    writer.write(rows)
    writer.close()
    return buffer.getvalue()


def familiar_block(row: ClassifyRow) -> str:
    """The original's one-image output; with test-time augmentation a line says which (the score
    is then a mean), so the default output stays the original's exactly."""
    tta = f"test-time augmentation: {row.tta}\n" if row.tta not in (None, "none") else ""
    return f"****\noutput class is {row.label}. (sigmoid value={row.score!r})\n{tta}****\n"


def summary_line(tally: Tally, skipped_files: int, min_face: int, output: str | None = None,
                 tta: str = "none") -> str:
    """The run in one line: faces classified, files failed, what was skipped, the test-time
    augmentation (a table has no column for it) and where rows went."""
    labels = ", ".join(f"{tally.labels.get(name, 0)} {name}" for name in ("female", "male"))
    text = (f"classified {tally.faces} faces in {tally.files - tally.failed} of {tally.files} files: {labels}, "
            f"{tally.failed} failed (unreadable, or no face found); test-time augmentation: {tta}")
    if tally.small_faces:
        text += f"; {tally.small_faces} faces smaller than {min_face} px skipped"
    if skipped_files:
        text += f"; {skipped_files} files in the folders skipped (not an image extension)"
    if output:
        text += f"; rows written to {output}"
    return displayable(text)
