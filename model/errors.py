"""The exception for bad model input; the CLI turns it into a one-line message."""
from __future__ import annotations

from pipeline.errors import InputError


class ModelError(InputError):
    """A weights or model file, or a model setting, is missing, malformed or of the wrong kind."""
