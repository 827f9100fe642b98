"""One writer per directory: an OS lock on ``<dir>/.mechgrok.lock``.

A run directory (or a sweep directory) is written by one process at a time. The writer holds an
exclusive ``fcntl.flock`` on the directory's lock file while it writes; the kernel drops the lock
when the process exits or dies, so a SIGKILL leaves nothing stale (the file itself stays, but an
unlocked lock file means nothing). The holder writes its pid, host and command into the file so
that a second writer can say whom it is waiting for::

    error: runs/x is in use: being written by pid 4242 on node3 (mechgrok train --out runs/x) since 12:03:55

Readers (``Run``, ``info``, ``analyze``, ``population``) never take the lock.

Within one process the lock is re-entrant: the trainer, the ``RunWriter`` it opens and a sweep
chunk may all ask for it, and it is released when the last of them lets go. (flock locks belong
to the open file, so a second ``open`` in the same process would otherwise lock itself out.)

POSIX only (Linux, macOS): Windows is not a target. Over NFS flock is emulated with fcntl byte
range locks on Linux clients, which is what a shared-filesystem Ray cluster relies on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from .files import remove_stale_temps

LOCK_FILE = ".mechgrok.lock"


class RunLocked(FileExistsError):
    """Another process is writing this directory."""


_held: dict[str, list] = {}  # realpath -> [fd, count]
_guard = threading.Lock()


def holder(path: str | os.PathLike) -> dict | None:
    """What the lock file of ``path`` says about its (last) holder: pid, host, command, since."""
    try:
        return json.loads((Path(path) / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None


def _describe(path: Path) -> str:
    h = holder(path) or {}
    who = f"pid {h.get('pid', '?')}"
    if h.get("host"):
        who += f" on {h['host']}"
    if h.get("command"):
        who += f" ({h['command']})"
    if h.get("since"):
        who += f" since {h['since']}"
    return f"{path} is in use: being written by {who}; wait for it to finish or stop it, then try again"


class DirLock:
    """A held lock on one directory; ``release()`` (or leaving the ``with`` block) lets go."""

    def __init__(self, path: Path, key: str):
        self.path, self._key, self._released = path, key, False

    def release(self):
        with _guard:
            if self._released:
                return
            self._released = True
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self._key]
                os.close(entry[0])  # closing the file drops the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_dir(path: str | os.PathLike, create: bool = False) -> DirLock:
    """Take the write lock of directory ``path`` (``create``: make the directory first), or
    raise ``RunLocked`` naming the process that holds it. Taking it (not re-entering it) also
    removes the temp files of writers that died there (``files.remove_stale_temps``)."""
    path = Path(path)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    key = os.path.realpath(path)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return DirLock(path, key)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(_describe(path)) from None
            raise
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "command": " ".join(["mechgrok" if sys.argv[0].endswith(("cli.py", "mechgrok")) else
                                         Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "",
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            remove_stale_temps(path)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = [fd, 1]
        return DirLock(path, key)


class DirLocks:
    """The locks of several directories, taken all or none (``lock_dirs``)."""

    def __init__(self, locks: list[DirLock]):
        self.locks = locks

    def release(self):
        for lk in reversed(self.locks):
            lk.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_dirs(paths, create: bool = False, lock=None) -> DirLocks:
    """``lock_dir`` of every path (or ``lock(path)``, e.g. ``runs.lock_new_run_dir``); when
    one fails, the ones taken are let go again."""
    taken: list[DirLock] = []
    try:
        for p in paths:
            taken.append(lock(p) if lock is not None else lock_dir(p, create=create))
    except BaseException:
        DirLocks(taken).release()
        raise
    return DirLocks(taken)
