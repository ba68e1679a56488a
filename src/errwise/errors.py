"""The one exception type a user sees: a clear, one-line message naming the file and the fix."""

from __future__ import annotations

import errno
from pathlib import Path


class ErrwiseError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2, no traceback."""


def os_error(e: OSError) -> ErrwiseError:
    """An OSError (full disk, read-only folder, permissions) as one line: the path, the errno text, the fix."""
    name = errno.errorcode.get(e.errno or 0, "")
    fix = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space",
        errno.EROFS: "pass a writable folder",
        errno.EACCES: "check the permissions or pass another path",
        errno.EPERM: "check the permissions or pass another path",
    }.get(e.errno or 0, "check the path")
    where = f"{e.filename}: " if e.filename else ""
    return ErrwiseError(f"{where}{e.strerror or e}{f' ({name})' if name else ''}; {fix}")


def read_text(path: str | Path) -> str:
    """A user's text file, which must be UTF-8 (a leading byte-order mark is dropped): other bytes are one line
    naming the line and the byte offset."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ErrwiseError(f"{path}: cannot read ({e.strerror}); check the path") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark, as some editors write
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ErrwiseError(
            f"{path}: line {line}, byte {e.start}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "pass a text file saved as UTF-8"
        ) from None
