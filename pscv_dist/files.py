"""Small file helpers every command shares: atomic writes, and one run per output (a lock)."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from .errors import OutputError, os_reason


def absolute_local(path: str) -> str:
    """A local path made absolute against this process's working folder (``~`` expanded), for
    commands that run elsewhere (Ray trials and tasks run in their own folders, maybe on other
    nodes); a URL (``s3://``, ``file://``, ``memory://``) or an empty value is returned as it is."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    A new temporary file beside ``path`` (``mkstemp``: exclusive, never through a link), fsynced,
    renamed over ``path`` (a link there is replaced, its target untouched), then the folder is
    fsynced so the rename survives a crash. The file gets the permissions a plain ``open`` would
    give it (``mkstemp``'s are 0600), or keeps those of the file it replaces."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (:func:`write_atomic`), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(obj, indent=2).encode())


class RunLock:
    """An exclusive ``flock`` on ``path`` for the life of a run (released by the kernel if it dies).

    ``what`` names the output in the error a second run gets; ``command`` names the command holding it."""

    def __init__(self, path: str | os.PathLike, what: str, command: str):
        self.path, self.what, self.command, self.fd = Path(path), what, command, None

    def acquire(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.path.parent}: cannot create the lock file for {self.what} "
                                  f"({os_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 128).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputError(f"{self.what}: another `{self.command}` (pid {holder}) is writing this output; "
                                  f"wait for it to finish or stop it (lock {self.path})") from None
            except OSError as exc:  # e.g. a network file system without flock (ENOLCK, EOPNOTSUPP)
                os.close(fd)
                raise OutputError(f"{self.path}: cannot lock it for {self.what} ({os_reason(exc)}); "
                                  "use a folder on a file system with flock") from None
            try:  # a finishing run unlinks the file it locked: make sure we hold the current one
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())  # the folder may be shared by nodes
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: see acquire()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
