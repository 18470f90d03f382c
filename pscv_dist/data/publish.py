"""Where ``pscv prepare`` writes, and how a new store replaces an old one without losing either.

The rules, the same for a local folder and an fsspec URL:

- OUT may not be SRC, lie inside SRC or contain SRC (symlinks resolved): publishing there would
  delete or bury the dataset being converted.
- An existing OUT is refused unless ``--overwrite`` is given AND it is a complete pscv store (a Zarr
  group whose root attributes hold ``pscv_store``, of any version, so old stores can be
  re-converted). A folder, a file or a half-written store is never deleted by us.
- One run per OUT at a time: the run holds ``fcntl.flock`` on a lock file beside OUT
  (``.OUT.lock``) for its whole life. The kernel drops the lock when the process dies, so a killed
  run never blocks the next one; a second run is refused while the first lives.
- The store is built in a staging folder whose name is unique to the run
  (``.OUT.partial-<pid>-<8 hex>``), so two runs never share or delete each other's work. Leftovers
  of dead runs (that pattern, for this OUT) are removed by the next run once it holds the lock: the
  lock proves their writer is gone. Nothing else is ever removed.
- Local publishing is two renames on one file system (old store aside as ``.OUT.old-<run>``, new
  store in, old one deleted); a run killed between them leaves the old store at its ``.old`` name,
  and the next run puts it back before doing anything else.
- URLs cannot rename. The new store is built locally, then uploaded to a sibling staging prefix
  (root metadata last), which is where a network failure is likely and the old store is still
  untouched. Only then is the old store removed, root metadata first (so a reader sees either a
  complete store or an incomplete one it refuses, never a mix), and the staged files are copied into
  place (server-side), root metadata last. Should that copy fail, the error names the staging
  prefix that holds the complete new store. The lock of a URL is a local file keyed by the URL: it
  keeps two runs on one machine apart, not runs on different machines.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import format as fmt
from .integrity import filesystem
from ..errors import OutputError, os_reason
from ..files import RunLock

log = logging.getLogger(__name__)
LOCAL_PROTOCOLS = ("file", "local")


def store_problem(fs, root: str) -> str | None:
    """None when ``root`` holds a complete pscv store (any version), else why it does not."""
    if not fs.isdir(root):
        return "it is a file, not a folder" if fs.exists(root) else "it does not exist"
    try:
        raw = json.loads(fs.cat_file(f"{root}/{fmt.ROOT_METADATA}"))
    except FileNotFoundError:
        return f"no {fmt.ROOT_METADATA}: not a Zarr store"
    except (ValueError, OSError) as exc:
        return f"its {fmt.ROOT_METADATA} is unreadable ({type(exc).__name__})"
    attrs = raw.get("attributes") if isinstance(raw, dict) else None
    meta = attrs.get(fmt.FORMAT_NAME) if isinstance(attrs, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != fmt.FORMAT_NAME:
        return f"a Zarr node without the {fmt.FORMAT_NAME!r} root attribute: foreign or half-written"
    return None


def output_target(out: str, storage_options: dict[str, Any] | None = None) -> "LocalTarget | UrlTarget":
    """Parse OUT (a folder, ``file://``/``local://`` path or fsspec URL); refuse an unknown protocol
    or a symlink loop here, before anything is converted."""
    text = str(out)
    if "://" not in text:
        return LocalTarget(text, text)
    protocol, rest = text.split("://", 1)
    if protocol in LOCAL_PROTOCOLS:
        if not rest:
            raise OutputError(f"{text}: no path after {protocol}://")
        return LocalTarget(text, rest)
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise OutputError(f"{text}: unknown protocol {protocol!r}; expected a local folder or an fsspec URL "
                          f"such as s3://, gs://, memory:// or file://") from None
    except ImportError as exc:
        raise OutputError(f"{text}: protocol {protocol!r} needs a package that is not installed ({exc})") from None
    return UrlTarget(text, storage_options)


class LocalTarget:
    """A store published by rename into a local folder (see the module docstring)."""

    def __init__(self, out: str, path: str):
        self.out, self.lock, self.staging = out, None, None
        raw = Path(os.path.abspath(path))
        try:
            os.stat(raw)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{out}: symlink loop (the output path's link points back to itself)") from None
        self.dest = Path(os.path.realpath(raw))
        self.run = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._leftover = re.compile(rf"\.{re.escape(self.dest.name)}\.(partial|old)-\d+-[0-9a-f]{{8}}")

    def claim(self, src: str, overwrite: bool) -> Path:
        """Check OUT against SRC and what is there, take the lock, clear dead runs' leftovers;
        returns the run's staging folder (not yet created)."""
        self.overwrite = overwrite
        _check_not_source(self.out, self.dest, src)
        parent = self.dest.parent
        _ensure_folder(parent, self.out)
        self.lock = RunLock(parent / f".{self.dest.name}.lock", self.out, "pscv prepare").acquire()
        try:
            self._clear_leftovers()
            self._check_existing()
        except BaseException:
            self.release()
            raise
        self.staging = parent / f".{self.dest.name}.partial-{self.run}"
        return self.staging

    def _clear_leftovers(self) -> None:
        legacy = f".{self.dest.name}.partial"  # the fixed staging name of earlier versions
        for p in sorted(self.dest.parent.iterdir()):
            if not (self._leftover.fullmatch(p.name) or p.name == legacy) or p.is_symlink() or not p.is_dir():
                continue
            if ".old-" in p.name and not os.path.lexists(self.dest) and _local_problem(p) is None:
                os.replace(p, self.dest)
                log.warning("%s: restored the previous store from %s (a run died while swapping)", self.out, p.name)
                continue
            log.warning("%s: removing %s, left by a run that died", self.out, p.name)
            shutil.rmtree(p)

    def _check_existing(self) -> None:
        if not os.path.lexists(self.dest):
            return
        if not self.overwrite:
            raise OutputError(f"{self.out}: output already exists; pass --overwrite to replace it")
        why = _local_problem(self.dest)
        if why:
            raise OutputError(f"{self.out}: exists and is not a complete pscv store ({why}); --overwrite only "
                              f"replaces a store written by `pscv prepare`: move or delete it yourself")

    def publish(self) -> None:
        self._check_existing()  # again: something may have appeared at OUT during the conversion
        if not os.path.lexists(self.dest):
            os.replace(self.staging, self.dest)
            return
        old = self.dest.with_name(f".{self.dest.name}.old-{self.run}")
        os.replace(self.dest, old)
        try:
            os.replace(self.staging, self.dest)
        except BaseException:
            os.replace(old, self.dest)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class UrlTarget:
    """A store uploaded to an fsspec URL (see the module docstring for the order of operations)."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None):
        self.out, self.lock, self.staging, self._tmp = out, None, None, None
        self.fs, self.root = filesystem(out, storage_options)
        self.protocol = out.split("://", 1)[0]
        parent, _, name = self.root.rpartition("/")
        self.remote_staging = f"{parent}/.{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        self._uploaded = self._swapping = False

    def claim(self, src: str, overwrite: bool) -> Path:
        self.overwrite = overwrite
        key = hashlib.sha256(self.out.encode()).hexdigest()[:24]
        # per user: a shared folder created by the first user would refuse everyone else's locks
        folder = Path(tempfile.gettempdir()) / f"pscv-locks-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        self.lock = RunLock(folder / f"{key}.lock", self.out, "pscv prepare").acquire()
        try:
            self._check_existing()
        except BaseException:
            self.release()
            raise
        parent, _, name = self.root.rpartition("/")
        stale = self.fs.glob(f"{parent}/.{name}.partial-*") if parent else []
        if stale:
            log.warning("%s: staging prefixes of earlier runs exist (%s); not removed (they may belong to a "
                        "run on another machine)", self.out, ", ".join(stale[:3]))
        self._tmp = Path(tempfile.mkdtemp(prefix="pscv-store-"))
        self.staging = self._tmp / "store.zarr"
        return self.staging

    def _check_existing(self) -> None:
        if not self.fs.exists(self.root):
            return
        if not self.overwrite:
            raise OutputError(f"{self.out}: output already exists; pass --overwrite to replace it")
        why = store_problem(self.fs, self.root)
        if why:
            raise OutputError(f"{self.out}: exists and is not a complete pscv store ({why}); --overwrite only "
                              f"replaces a store written by `pscv prepare`: remove it yourself")

    def publish(self) -> None:
        files = sorted(p.relative_to(self.staging).as_posix() for p in self.staging.rglob("*") if p.is_file())
        files = [f for f in files if f != fmt.ROOT_METADATA] + [fmt.ROOT_METADATA]  # root metadata = commit
        self._uploaded = True
        for rel in files:
            self.fs.put_file(str(self.staging / rel), f"{self.remote_staging}/{rel}")
        self._check_existing()
        self._swapping = True
        try:
            if self.fs.exists(self.root):
                self.fs.rm(f"{self.root}/{fmt.ROOT_METADATA}")  # the old store is now incomplete: refused
                self.fs.rm(self.root, recursive=True)
            for rel in files:
                self.fs.copy(f"{self.remote_staging}/{rel}", f"{self.root}/{rel}")
        except Exception as exc:
            raise OutputError(f"{self.out}: replacing the old store failed midway ({type(exc).__name__}: {exc}); "
                              f"the new store is complete at {self.protocol}://{self.remote_staging}") from None
        self._swapping = False
        self.fs.rm(self.remote_staging, recursive=True)

    def discard(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._uploaded and not self._swapping:
            try:
                self.fs.rm(self.remote_staging, recursive=True)
            except (FileNotFoundError, OSError):
                pass

    def release(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _local_problem(path: Path) -> str | None:
    from fsspec.implementations.local import LocalFileSystem

    return store_problem(LocalFileSystem(), str(path))


def _check_not_source(out: str, dest: Path, src: str) -> None:
    source = Path(os.path.realpath(os.path.abspath(src)))
    if dest == source:
        why = "is the source dataset"
    elif source in dest.parents:
        why = f"lies inside the source dataset {source}"
    elif dest in source.parents:
        why = f"contains the source dataset {source}"
    else:
        return
    raise OutputError(f"{out}: output {why}; writing or replacing it would destroy the data being "
                      f"converted: choose an OUT outside SRC")


def _ensure_folder(parent: Path, out: str) -> None:
    """The folder that will hold OUT must be (or become) a writable folder, checked before converting."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), parent)
        raise OutputError(f"{blocker}: is a file, not a folder; cannot write the output {out} under it") from None
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the output's folder ({os_reason(exc)})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: the output's folder is not writable (read-only or permission denied); "
                          f"cannot write {out}")

