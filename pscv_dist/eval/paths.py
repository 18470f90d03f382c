"""Output paths checked before any model runs: a one-line :class:`OutputError` instead of a
traceback (or lost work) after minutes of inference.

A file output is writable when it is not a folder and its folder is writable; a folder is writable
when it exists as a writable folder, or when its nearest existing ancestor is one (it will be
created). A path component that is a file is reported as "is not a folder".
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Raise :class:`OutputError` unless ``path`` is, or can be created as, a writable folder.
    ``target`` (default ``path``) is what the message says cannot be written."""
    path = Path(path)
    target = path if target is None else target
    base = _nearest_existing(path)
    if not base.is_dir():
        if base == path and target == path:
            raise OutputError(f"{path}: is not a folder (it is a file); expected an output folder")
        raise OutputError(f"{base}: is not a folder (a path component of {target})")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{base}: folder is not writable (permission denied or read-only); cannot write {target}")
    return path


def check_writable_file(path: str | os.PathLike) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written (created, or replaced atomically)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected an output file path")
    check_writable_dir(path.parent, target=path)
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both exist and are the same file (another spelling, a symlink or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
