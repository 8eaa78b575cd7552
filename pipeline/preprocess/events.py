"""The progress events of `preprocess`, as typed objects; the CLI draws them (a bar, the end)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


@dataclass(frozen=True)
class Started:
    """The workers start on `total` files (those handed to them: badly named folders are not)."""

    total: int
    runner: str               # e.g. "DaskRunner (tcp://10.0.0.1:8786, 8 workers)"


@dataclass(frozen=True)
class Advanced:
    """Files handled so far (written or rejected); never decreases."""

    done: int
    total: int
    rate: float               # files per second since the start, start-up included


@dataclass(frozen=True)
class Committed:
    """The new output is in OUT (manifest.json last)."""

    out: str
    written: int
    rejected: int
    seconds: float


PreprocessEvent = Union[Started, Advanced, Committed]
Progress = Callable[[PreprocessEvent], None]
