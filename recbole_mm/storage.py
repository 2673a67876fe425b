"""Folders and files that a full disk, a read-only or misplaced folder, or a kill cannot leave half-written.

One home for three things every writer of recbole_mm uses (checkpoints, feature files, downloads,
benchmark caches and reports, RecBole's log folders):

- :func:`check_folder` / :func:`make_folder`: a folder that is a file, lies under a file or cannot be
  written is one :class:`StorageError` line naming it and the option that moves it, before anything
  is written;
- :func:`atomic_write`: the bytes go to a hidden temporary file next to the destination,
  ``.<name>.<random>.tmp``, which becomes the destination (``os.replace``) only once complete and
  synced, and is removed on any failure; a write failure (``OSError``, or torch's ``[enforce fail at
  inline_container.cc]`` that hides the ``OSError`` of a full disk) is one line naming the file;
- stale temporaries: a writer holds an advisory lock (``flock``) on its temporary file or folder for as
  long as it lives, and the kernel drops the lock when the process dies, however it dies. A later
  writer removes the temporaries nobody holds (left by a killed run) and leaves those of a writer still
  at work (another process writing into the same folder) alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import io
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from recbole_mm.errors import RecBoleMMError

TMP_SUFFIX = ".tmp"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
# errno values that mean "this machine cannot write there", whoever raised them (a full disk, a read-only
# folder): a download that fails with them is not a network problem.
LOCAL_WRITE_ERRORS = (*_DISK_FULL, errno.EROFS)


class StorageError(RecBoleMMError):
    """A folder that cannot be used or a file that could not be written; nothing half-written is left."""


# ---- folders --------------------------------------------------------------------------------------
def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be created (or is) and written to, without creating it; None when it can."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_folder(folder: str | os.PathLike, what: str, fix: str) -> None:
    """One :class:`StorageError` line when ``folder`` cannot be created or written (``fix``: how to move it)."""
    problem = folder_problem(folder)
    if problem is not None:
        raise StorageError(f"{what} {folder} cannot be used: {problem}; {fix}")


def make_folder(folder: str | os.PathLike, what: str, fix: str) -> Path:
    """:func:`check_folder`, then create ``folder`` (with its parents); a failure is one line."""
    check_folder(folder, what, fix)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{what} {folder} cannot be created ({_reason(exc)}); {fix}") from exc
    return Path(folder)


# ---- stale temporaries ----------------------------------------------------------------------------
def _remove_if_abandoned(path: str) -> bool:
    """Remove ``path`` (a file or folder) if no live process holds its lock (its writer was killed, or is of
    a version that did not lock); the lock is held while removing, so a writer that has just created it
    and waits for its lock sees it gone and makes another."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # gone already, or not ours to read
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except OSError:
        return False  # held by a live writer, or not ours to remove
    finally:
        os.close(fd)
    return True


def remove_stale(folder: str | os.PathLike, patterns: Iterable[str]) -> list[str]:
    """Remove the files and folders in ``folder`` matching ``patterns`` (globs) that no live writer holds."""
    return [path for pattern in patterns
            for path in sorted(glob.glob(os.path.join(glob.escape(str(folder)), pattern)))
            if _remove_if_abandoned(path)]


def temp_pattern(name: str) -> str:
    """The glob of the temporaries :func:`atomic_write` makes for a destination called ``name``."""
    return f".{glob.escape(name)}.*{TMP_SUFFIX}"


def _locked(fd: int, path: str) -> bool:
    """Lock ``fd``; False when a cleaner removed ``path`` before the lock was taken (then retry)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return True  # a file system without flock: no lock, and no cleaner can take one either
        raise
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _new_temp_file(folder: str, name: str) -> tuple[str, int]:
    for _ in range(100):
        path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if _locked(fd, path):
            return path, fd
        os.close(fd)
    raise FileExistsError(errno.EEXIST, "no free temporary file name", folder)


@contextlib.contextmanager
def locked_temp_folder(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new hidden folder ``<parent>/<prefix><random>`` locked for this process; removed on exit."""
    for _ in range(100):
        path = os.path.join(parent, f"{prefix}{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        fd = os.open(path, os.O_RDONLY)
        if _locked(fd, path):
            break
        os.close(fd)
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(parent))
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


# ---- writing --------------------------------------------------------------------------------------
class _Recorder(io.RawIOBase):
    """A write-only file that keeps the ``OSError`` of a failed write: torch's writer turns it into
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, which no longer says why."""

    def __init__(self, raw: io.BufferedRandom, path: str):
        super().__init__()
        self.raw, self.error, self.name = raw, None, path  # name: the temporary file's path, as open() gives

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        if self.raw.closed:  # io's finaliser flushes once more after the real file is closed
            return
        try:
            self.raw.flush()
        except OSError as exc:
            self.error = exc
            raise


class TempFile:
    """The temporary file of an :func:`atomic_write`: write through :attr:`file` (a binary file object,
    e.g. for ``torch.save``) or open :attr:`path` yourself (e.g. for ``numpy.lib.format.open_memmap``)."""

    def __init__(self, path: str, raw: io.BufferedRandom):
        self.path, self.raw = path, raw
        self.file = _Recorder(raw, path)

    def reserve(self, nbytes: int) -> None:
        """Allocate ``nbytes`` on disk now, so that a full disk is an error here and not a SIGBUS inside
        a memory-mapped write (numpy's ``open_memmap`` makes a sparse file)."""
        if nbytes > 0:
            try:
                os.posix_fallocate(self.raw.fileno(), 0, nbytes)
            except OSError as exc:
                self.file.error = exc
                raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return f"{exc.strerror}: the disk is full"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, RuntimeError):  # torch's writer, without the OSError behind it
        return "torch could not write it; the disk may be full"
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def _is_write_failure(exc: BaseException, recorded: OSError | None, in_body: bool) -> bool:
    """Whether ``exc`` is a failure to write the file (rather than an error of the caller's own work)."""
    if recorded is not None:
        return True
    if isinstance(exc, OSError):
        # Outside the caller's block every OSError is ours (temporary file, fsync, rename); inside it, only
        # those that say the disk is full or read-only (a memory-mapped flush, a write to tmp.path).
        return not in_body or exc.errno in (*_DISK_FULL, errno.EROFS)
    # torch's zip writer reports a failed write of a path as a RuntimeError.
    return isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "PytorchStreamWriter" in str(exc))


def write_error(exc: BaseException, what: str, path: str | os.PathLike, elsewhere: str) -> StorageError:
    """The one line for a failed write of ``path`` (``elsewhere``: the option that writes to another folder)."""
    errno_ = getattr(exc, "errno", None)
    if errno_ in _DISK_FULL:
        fix = f"free space on that disk or {elsewhere}"
    elif errno_ in _READ_ONLY:
        fix = f"make {os.path.dirname(os.path.abspath(path))} writable or {elsewhere}"
    else:
        fix = f"check the disk, or {elsewhere}"
    return StorageError(f"cannot write {what} {path} ({_reason(exc)}); {fix}; nothing was left half-written")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, what: str, elsewhere: str,
                 stale: Iterable[str] = ()) -> Iterator[TempFile]:
    """Write ``path`` through a locked hidden temporary file that replaces it only when complete.

    ``what``: the kind of file, for the message (``checkpoint``); ``elsewhere``: how to write to another
    folder (``set --checkpoint_dir to another folder``). Before writing, abandoned temporaries of
    ``path`` (and of the extra globs ``stale``, in the same folder) are removed. On any exception the
    temporary file is removed and ``path`` is unchanged; a write failure becomes a :class:`StorageError`.
    """
    path = os.fspath(path)
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tmp, in_body = None, False
    try:
        remove_stale(folder, [temp_pattern(name), *stale])
        tmp_path, fd = _new_temp_file(folder, name)
        tmp = TempFile(tmp_path, os.fdopen(fd, "r+b"))
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # the mode a plain open() would give the destination
        in_body = True
        yield tmp
        in_body = False
        tmp.file.flush()
        os.fsync(fd)  # the data is on disk before the rename makes it the destination
        os.replace(tmp_path, path)
    except BaseException as exc:
        recorded = tmp.file.error if tmp is not None else None
        if tmp is not None:
            _discard(tmp)
        if _is_write_failure(exc, recorded, in_body):
            raise write_error(recorded or exc, what, path, elsewhere) from exc
        raise
    else:
        tmp.raw.close()  # after the rename: the lock lasts until the temporary name is gone


def _discard(tmp: TempFile) -> None:
    with contextlib.suppress(OSError):
        os.remove(tmp.path)
    with contextlib.suppress(OSError, ValueError):
        tmp.raw.close()


def write_text(path: str | os.PathLike, text: str, what: str, elsewhere: str) -> None:
    """:func:`atomic_write` of a UTF-8 text file."""
    with atomic_write(path, what, elsewhere) as tmp:
        tmp.file.write(text.encode("utf-8"))
