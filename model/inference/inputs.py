"""What `classify` is given, as a stream: image files, folders searched recursively, text files
listing paths. Entries come one at a time, in order, so that the first rows are written before a
large folder has been listed and memory does not grow with the number of files found.

A file reached twice (named twice, named and inside a folder given too, in two overlapping
folders) is classified once. What that takes in memory grows with the paths *named* (on the
command line and in path lists), never with the files found by searching folders.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from pipeline.files import is_remote

# Extensions (lower case) of the files a directory search picks up.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Entry:
    """One input: a path to classify, or (error set) a path that cannot be, with the reason."""

    path: str
    error: str | None = None


def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


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
        entries.append(line if os.path.isabs(line) or is_remote(line) else os.path.join(base, line))
    return entries


def _is_path_list(path: str) -> bool:
    """Whether _expand reads `path` as a list of paths (before reading it)."""
    return not is_remote(path) and os.path.isfile(path) and not is_image_name(path)


def named_paths(paths: Sequence[str], flag: str = "-i") -> Iterator[tuple[str, str]]:
    """Every path the inputs name, with how the user named it, for checking outputs against them
    before any work (pipeline.outputs.check_outputs): each PATH, and each entry of a path list as
    "-i (listed in LIST)". Folders are not searched (the check compares folders as folders). A list
    that cannot be read is left to the run, which makes it an error row."""
    for path in paths:
        yield path, flag
        if not _is_path_list(path):
            continue
        try:
            listed = _read_path_list(path)
        except OSError:
            continue
        for entry in listed or ():
            yield entry, f"{flag} (listed in {path})"


@dataclass
class _Seen:
    """What one pass has classified already: real paths of the files named, folders searched."""

    named: set[str] = field(default_factory=set)
    searched: set[str] = field(default_factory=set)

    def inside_searched(self, real: str) -> bool:
        return any(real.startswith(root + os.sep) for root in self.searched)


class Inputs:
    """The entries of a list of PATHs, in order, each time it is iterated (a fresh pass: `count`
    runs one in parallel with the pass that classifies). After a pass, `skipped` holds the number of
    files in searched folders that do not have an image extension."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.skipped = 0

    def __iter__(self) -> Iterator[Entry]:
        self.skipped = 0
        seen = _Seen()
        for path in self.paths:
            yield from self._expand(path, seen, allow_list=True)

    def count(self) -> int:
        """The number of entries a pass yields (a separate pass: folders listed again)."""
        return sum(1 for _ in Inputs(self.paths))

    @property
    def single_image(self) -> bool:
        """One PATH standing for one image (not a folder, not a list): the original's one-image form."""
        if len(self.paths) != 1 or os.path.isdir(self.paths[0]):
            return False
        first = list(itertools.islice(Inputs(self.paths), 2))
        return len(first) == 1 and first[0].path == self.paths[0]

    def _file(self, path: str, seen: _Seen) -> Iterator[Entry]:
        real = path if is_remote(path) else os.path.realpath(path)
        if real in seen.named or (is_image_name(real) and seen.inside_searched(real)):
            return
        seen.named.add(real)
        yield Entry(path)

    def _expand(self, path: str, seen: _Seen, allow_list: bool) -> Iterator[Entry]:
        if is_remote(path):
            # Remote (gs://) paths are read through tf.io.gfile when decoded.
            yield from self._file(path, seen)
        elif os.path.isdir(path):
            yield from self._search(path, seen)
        elif not os.path.exists(path):
            yield Entry(path, "no such file or directory")
        elif is_image_name(path) or not allow_list:
            yield from self._file(path, seen)
        else:
            try:
                listed = _read_path_list(path)
            except OSError as err:
                yield Entry(path, f"cannot read file ({err.strerror or err})")
                return
            if listed is None:
                yield from self._file(path, seen)    # not text: the decoder says why it is not an image
                return
            if not listed:
                yield Entry(path, "path list holds no paths")
            for entry in listed:
                yield from self._expand(entry, seen, allow_list=False)     # lists do not nest (no cycles)

    def _search(self, directory: str, seen: _Seen) -> Iterator[Entry]:
        """Image files under a folder (recursive, sorted, symlinked folders not followed); a folder
        that cannot be listed becomes an error row (never silently lost)."""
        real_root = os.path.realpath(directory)
        if real_root in seen.searched or seen.inside_searched(real_root):
            return                                   # its files were classified already
        seen.searched.add(real_root)
        errors: list[OSError] = []
        images = 0
        for root, dirs, files in os.walk(directory, onerror=errors.append):
            real_dir = os.path.realpath(root)
            # Folders searched before, on their own, are not searched again (their images count).
            kept = sorted(d for d in dirs if os.path.join(real_dir, d) not in seen.searched)
            images += len(dirs) - len(kept)
            dirs[:] = kept
            for name in sorted(files):
                if not is_image_name(name):
                    self.skipped += 1
                    continue
                images += 1
                if os.path.join(real_dir, name) not in seen.named:
                    yield Entry(os.path.join(root, name))
        for err in errors:
            yield Entry(err.filename or directory, f"cannot list folder ({err.strerror or err})")
        if not images and not errors:
            yield Entry(directory, f"folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
