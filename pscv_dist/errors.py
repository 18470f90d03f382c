"""The one error vocabulary of pscv-dist, and the CLI boundary that prints it.

Every user-fixable problem raises a :class:`PscvError` subclass whose message is ONE line naming
the file or key, what was expected and what was found::

    raise DataError(f"{path}: expected a 3D volume, found shape {shape}")

At the command line (:func:`cli_boundary`) such an error prints ``pscv CMD: error: MESSAGE`` and
exits 2, with no traceback unless ``-v`` was given. Operating-system errors (a read-only or
missing folder, a symlink loop) are turned into the same one-line form there, so library code
does not need to wrap every ``open``.
"""
from __future__ import annotations

import errno
import logging
import sys
import traceback
from typing import Callable

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_STOPPED = 3  # a run stopped by a guard (non-finite loss): the inputs were fine, the run was not


class PscvError(Exception):
    """A problem the user can fix; its message is one line: where, what was expected, what was found."""


class ConfigError(PscvError, ValueError):
    """A configuration the program refuses to start with (unknown key, bad value, bad YAML)."""


class DataError(PscvError, ValueError):
    """A source file or dataset that cannot be converted or read (names the file)."""


class StoreError(DataError):
    """A pscv store that is missing, incomplete, corrupt or inconsistent (names the array or case)."""


class NotInStore(StoreError, KeyError):
    """A split or case asked of a store that does not hold it (a ``KeyError`` too, for lookups)."""

    def __str__(self) -> str:  # a KeyError would quote its message
        return str(self.args[0]) if self.args else ""


class CheckpointError(PscvError, ValueError):
    """A checkpoint or model bundle that is missing, truncated, or does not match the config."""


class OutputError(PscvError, ValueError):
    """An output path the program refuses to write (would overwrite an input or foreign data)."""


class NonFiniteLoss(PscvError, RuntimeError):
    """The loss (or the weights) became NaN/inf on some rank; the run stopped without saving them."""


def unwrap_worker_error(exc: PscvError) -> PscvError:
    """The same error without the traceback a DataLoader worker wraps around it.

    torch re-raises a worker's exception as ``type(exc)("Caught X in DataLoader worker process N.
    Original Traceback ...: module.X: message")``; the user needs the last line's message only."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].startswith("Caught "):
        return exc
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    message = last[len(prefix):] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return type(exc)(message)


_OS_REASONS = {
    errno.ELOOP: "symlink loop",
    errno.EACCES: "permission denied (read-only?)",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOENT: "not found",
    errno.ENOSPC: "no space left on the device",
    errno.EEXIST: "already exists",
}


def os_reason(exc: OSError) -> str:
    """An operating-system error in the user's words ("symlink loop", "read-only file system")."""
    return _OS_REASONS.get(exc.errno, exc.strerror or str(exc))


def describe(exc: BaseException) -> str:
    """The one-line message of a user-facing error."""
    if isinstance(exc, OSError) and not isinstance(exc, PscvError) and exc.errno in _OS_REASONS:
        where = exc.filename if exc.filename is not None else ""
        reason = os_reason(exc)
        if exc.filename2:
            where = f"{where} -> {exc.filename2}"
        return f"{where}: {reason}" if where else f"{reason} ({exc})"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.splitlines())  # one line, always


# What the boundary reports as a user error: the library's own vocabulary, plus what the operating
# system raises for bad paths. Anything else, a stray ValueError or KeyError included, is a bug and
# keeps its traceback: code that meets a user's mistake raises a PscvError naming it.
USER_ERRORS = (PscvError, OSError)


def cli_boundary(command: str, fn: Callable[[], int], verbose: bool = False) -> int:
    """Run ``fn`` and turn user errors into ``pscv COMMAND: error: ...`` and exit code 2."""
    try:
        return fn()
    except NonFiniteLoss as exc:
        if verbose:
            traceback.print_exc()
        print(f"pscv {command}: stopped: {describe(exc)}", file=sys.stderr)
        return EXIT_STOPPED
    except USER_ERRORS as exc:
        if verbose:
            traceback.print_exc()
        print(f"pscv {command}: error: {describe(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
