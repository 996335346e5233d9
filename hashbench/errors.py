"""The one exception type the CLI turns into a one-line error message."""


class HashbenchError(Exception):
    """A user-facing error: bad option, bad file, missing data. Its message names the culprit."""
