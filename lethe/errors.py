"""The error every user-facing failure derives from: one clear line, no traceback."""


class LetheError(Exception):
    """A failure the command line reports as one line and a non-zero exit code."""
