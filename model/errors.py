"""The one exception type for bad model input; the CLI turns it into a one-line message."""


class ModelError(Exception):
    """A weights or model file is missing, malformed or of the wrong kind; the message says what to do."""
