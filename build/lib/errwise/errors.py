"""The one exception type a user sees: a clear, one-line message naming the file and the fix."""


class ErrwiseError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2, no traceback."""
