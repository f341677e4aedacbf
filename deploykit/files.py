"""Opening a file deploykit reads: a regular file, with its size checked before a byte is read.

``/dev/zero`` never ends, a FIFO blocks until someone writes to it, and a
symlink can point at either: a reader that trusts ``open().read()`` reads until
memory runs out or waits forever. Every input file (data, model, config) goes
through :func:`regular_file` first, which refuses anything but a regular file
(after following symlinks, as a user's ``ln -s`` of a real file is fine) and
checks its size on disk against a :class:`~deploykit.limits.Limit`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from deploykit.errors import DeployKitError
from deploykit.limits import Limit

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def regular_file(path: str | os.PathLike, what: str, error: type[DeployKitError], limit: Limit | None = None) -> int:
    """The size of ``path`` when it is a regular file within ``limit``; else ``error`` naming what it is.

    ``os.stat`` never opens the file, so a FIFO cannot block here.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path}: cannot read it (no such file)") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        link = f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise error(f"{what} {path}{link}: {kind}, not a regular file; deploykit reads regular files only")
    if limit is not None:
        limit.check(path, info.st_size, "its size on disk", on_disk=info.st_size)
    return info.st_size


def read_bytes(path: str | os.PathLike, what: str, error: type[DeployKitError], limit: Limit) -> bytes:
    """The bytes of a regular file within ``limit``, reading no more than it said it holds (plus one byte)."""
    size = regular_file(path, what, error, limit)
    with open(path, "rb") as fh:
        data = fh.read(size + 1)
    if len(data) > size:  # it grew between stat and read: a file being written, or a trick
        raise error(f"{what} {path}: it grew while it was read; try again once it is written")
    return data
