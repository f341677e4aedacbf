"""Atomic writes: build aside, then rename, so an interrupted run leaves nothing half-written.

An output folder is built in a hidden staging folder ``.NAME.<hex>.tmp`` beside
it, which records the process that owns it; the next run beside it removes
the staging folders of processes that have died (and says so). The final step
is one rename:

- without ``force``, ``rename(2)``, which fails when a non-empty folder (or a
  file) appeared at the target meanwhile (e.g. a concurrent run): the target
  is left as it is, this run's result is kept beside it under a visible name,
  and :class:`OutputExistsError` says where;
- with ``force``, ``renameat2(RENAME_EXCHANGE)`` swaps the new and old folders
  in one step, so there is no moment where neither is in place. Where that call
  is missing (not Linux, an old kernel or C library, a file system without it)
  the fallback moves the old folder aside, moves the new one in, then deletes
  the old one: a kill between the two renames leaves the old output at
  ``.NAME.old-<hex>`` (never deleted automatically) and no folder at NAME.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from deploykit.errors import OutputExistsError, UsageError

log = logging.getLogger(__name__)

#: Inside a staging folder: who owns it ({"pid", "start", "host"}); removed just before the final rename.
OWNER_FILE = ".deploykit-owner.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_IN_THE_WAY = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffix (Keras and friends choose the
    format from it). On error the temporary file or folder is removed and
    ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sfx = final.suffix if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{sfx}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create it themselves (some refuse an existing file)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if final.is_dir() and not tmp.is_dir():
            raise UsageError(f"{final} is a folder; cannot replace it with a file")
        _replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh folder beside ``path``; move it into place on success.

    An existing ``path`` is refused unless ``force``, at the start and again at
    the final rename (a folder that appeared meanwhile is never replaced without
    ``force``); a file at ``path`` is always refused. On error the staging folder
    is removed and an existing ``path`` is untouched.
    """
    final = check_dir_target(path, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final)
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()  # unlike mkdtemp's 0700, honours the umask: serving engines may run as another user
    try:
        (staging / OWNER_FILE).write_text(json.dumps(_me()), encoding="utf-8")
        yield staging
        (staging / OWNER_FILE).unlink(missing_ok=True)
        if force:
            _replace(staging, final)
        else:
            _rename_unless_taken(staging, final)
    except BaseException:
        _remove(staging)
        raise


#: Bytes a staging name adds to the output folder's name (``.NAME.<12 hex>.tmp``, a kept ``NAME.<date>-<pid>``).
_STAGING_BYTES = 32
_NAME_MAX = 255
#: The run's input files (resolved), which no --out with --force may replace: see :func:`protect`.
_PROTECTED: set[str] = set()


def protect(*paths, fresh: bool = False) -> None:
    """Record input files or folders of this run (``fresh``: a new run, forget the last one's): an output folder
    holding one is refused, even with ``force``."""
    if fresh:
        _PROTECTED.clear()
    for path in paths:
        if isinstance(path, (str, os.PathLike)) and str(path) and os.path.exists(path):
            _PROTECTED.add(os.path.realpath(path))


def check_dir_target(path: str | os.PathLike, force: bool = False) -> Path:
    """Raise what :func:`atomic_dir` would refuse; writes nothing. Refused: a file, a non-empty folder without
    ``force``, a symlink (dangling or not), ``.`` / ``..`` / a folder holding the working directory, a name
    too long to stage beside, and (even with ``force``) a folder holding one of the run's inputs."""
    final = Path(path)
    _check_dir_name(final)
    if final.is_symlink():
        raise UsageError(f"output path {final} is a symlink (to {os.readlink(final)}); give the folder itself")
    if final.exists() and not final.is_dir():
        raise UsageError(f"output path {final} is a file, not a folder")
    if final.exists() and any(final.iterdir()) and not force:
        raise OutputExistsError(f"output folder {final} already exists and is not empty; pass --force to replace it")
    if final.exists():
        _check_holds_no_input(final)
    return final


def _check_dir_name(final: Path) -> None:
    if final.name in ("", ".", ".."):
        raise UsageError(f"output path {str(final)!r} must name a folder to create, e.g. {final / 'out'}")
    here, target = os.path.realpath(os.getcwd()), os.path.realpath(final)
    if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
        raise UsageError(f"output path {final} holds the working directory; replacing it would remove that")
    if len(os.fsencode(final.name)) > _NAME_MAX - _STAGING_BYTES:
        raise UsageError(
            f"output folder name of {len(os.fsencode(final.name))} bytes is too long: at most "
            f"{_NAME_MAX - _STAGING_BYTES} (the file system allows {_NAME_MAX} for the staging name)"
        )


def _check_holds_no_input(final: Path) -> None:
    target = os.path.realpath(final).rstrip(os.sep) + os.sep
    held = sorted(p for p in _PROTECTED if (p + os.sep).startswith(target))
    if held:
        raise UsageError(
            f"output folder {final} holds {held[0]}, an input of this run; replacing it would delete "
            "that: choose another --out"
        )


def clean_leftovers(final: str | os.PathLike) -> list[Path]:
    """Remove the staging folders beside ``final`` that runs which died left behind; log each one.

    A staging folder is removed only when its owner record names a process of
    this host that no longer runs (a reused pid is told apart by its start
    time). Folders without a record are left alone: they may belong to a run
    in its last instant, or to another program.
    """
    final = Path(final)
    removed = []
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        owner = _owner(leftover)
        if owner is None or _alive(owner):
            continue
        _remove(leftover)
        removed.append(leftover)
        log.warning(
            "removed %s, left by an interrupted deploykit run (pid %s, no longer running)", leftover, owner["pid"]
        )
    return removed


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _rename_unless_taken(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``, which must be absent or an empty folder; else keep it beside and raise."""
    try:
        os.rename(staging, final)  # atomic; replaces an empty folder, fails on a non-empty one or a file
    except OSError as exc:
        if exc.errno not in _IN_THE_WAY:
            raise
        kept = final.with_name(f"{final.name}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.rename(staging, kept)
        raise OutputExistsError(
            f"output folder {final} appeared while this run was working (another run?) and --force was not "
            f"given: it was left as it is, and this run's result is in {kept}"
        ) from None


def _replace(new: Path, final: Path) -> None:
    """Put ``new`` at ``final``, replacing whatever is there with no moment where neither is in place."""
    for _ in range(10):  # a concurrent run may put a folder there, or take it away, between two steps
        if not (new.is_dir() and final.exists()):
            try:
                os.replace(new, final)  # atomic; a missing final or a file needs no care
                return
            except OSError as exc:
                if exc.errno not in _IN_THE_WAY:
                    raise
                continue  # a non-empty folder appeared meanwhile: exchange with it
        if _exchange(new, final):
            _remove(new)  # now the old folder
            return
        _replace_in_two_steps(new, final)
        return
    raise OSError(errno.EBUSY, f"{final} kept changing while deploykit was moving its output there")


def _replace_in_two_steps(new: Path, final: Path) -> None:
    """The fallback without RENAME_EXCHANGE: move the old folder aside, the new one in, then delete the old."""
    aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside, final)
        raise
    _remove(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where it is not available."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # the kernel or the file system lacks it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@functools.lru_cache(maxsize=1)
def _renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library before glibc 2.28
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _me() -> dict:
    return {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}


def _owner(folder: Path) -> dict | None:
    """The owner record of a staging folder, or None (none, unreadable, or another host's)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner.get("host") != socket.gethostname() or pid <= 0:
        return None
    return {**owner, "pid": pid}


def _alive(owner: dict) -> bool:
    """True while the recorded process runs (the same process: its start time matches, where known)."""
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    start = _start_time(owner["pid"])
    return not (start and owner.get("start") and start != owner["start"])


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux /proc), or '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the command name before ")" may hold spaces


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
