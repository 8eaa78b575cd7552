"""The one exception type for bad data input; the CLI turns it into a one-line message."""


class DataError(Exception):
    """Input data is missing, malformed or inconsistent; the message says what to do."""
