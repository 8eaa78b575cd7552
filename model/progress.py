"""The progress events of scoring (evaluate, classify) and of `convert`, as typed objects; the CLI
draws them. Training has its own, richer events (model/training/events.py), and so has preprocess
(pipeline/preprocess)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


@dataclass(frozen=True)
class Started:
    """Scoring of `name` (a split, or "classify") begins; total None until it is known."""

    name: str
    total: int | None
    unit: str = "img"


@dataclass(frozen=True)
class TotalKnown:
    name: str
    total: int


@dataclass(frozen=True)
class Advanced:
    name: str
    count: int                    # items done since the last event
    faces: int | None = None      # classify: faces found so far


@dataclass(frozen=True)
class Ended:
    name: str


@dataclass(frozen=True)
class FoldEvaluating:
    """evaluate --folds: fold `fold`'s model is scored next (its split's events follow)."""

    fold: int
    model: str


@dataclass(frozen=True)
class Reading:
    """convert: the weights file is being read and checked."""

    path: str


@dataclass(frozen=True)
class Writing:
    """convert: the network is built; the .keras file is being written."""

    path: str
    params: int


ConvertEvent = Union[Reading, Writing]
ScoringEvent = Union[Started, TotalKnown, Advanced, Ended, FoldEvaluating]
Progress = Callable[[ScoringEvent], None]
