"""The exceptions for bad input; the CLI turns them into a one-line message and a non-zero exit."""
from __future__ import annotations


class InputError(Exception):
    """Input the user can fix; the message says what is wrong and what to do.

    field: the setting it is about, by its library name (a TrainConfig field or a parameter, e.g.
    "learning_rate"). Messages name settings that way, in backticks (`learning_rate`), so the library
    never speaks in command-line flags; the CLI shows each as the flag that sets it.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DataError(InputError):
    """Input data is missing, malformed or inconsistent."""
