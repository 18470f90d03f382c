"""The store's file checksums: written at conversion, listed at open, re-hashed by ``--verify``.

Why files and not decoded values: Zarr reads a missing chunk file as its fill value (zeros), so a
deleted shard would silently train on zeros; and a flipped byte may still decompress. The root
metadata therefore records every file of the store (relative path -> [size, sha256]); opening a
store compares that list with a directory listing (cheap: no data is read), and ``verify`` hashes
every file. The chunks' own CRC-32C (see :mod:`.format`) catches a garbled chunk at decode time,
between verifications.
"""
from __future__ import annotations

import hashlib
from typing import Any

from . import format as fmt
from ..errors import StoreError

HASH_BLOCK = 1 << 20


def filesystem(path: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, root path without protocol) of a local folder or URL."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    return fs, root.rstrip("/")


def listing(fs, root: str) -> dict[str, int]:
    """Every file under ``root`` as store-relative path -> size in bytes."""
    found = fs.find(root, detail=True, withdirs=False)
    prefix = root + "/"
    out = {}
    for path, info in found.items():
        path = path.rstrip("/")
        if path.startswith(prefix):
            out[path[len(prefix):]] = int(info.get("size") or 0)
    return out


def file_sha256(fs, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(fs, root: str) -> dict[str, list]:
    """Checksums of every file of a (staging) store except the root metadata, which will hold them."""
    return {rel: [size, file_sha256(fs, f"{root}/{rel}")]
            for rel, size in sorted(listing(fs, root).items()) if rel != fmt.ROOT_METADATA}


def check_complete(meta: fmt.StoreMeta, files: dict[str, int], where: str) -> None:
    """Refuse a store missing a file (or holding one of another size) that its metadata needs.

    Needed: every file in the checksums, and every chunk file the array table implies (both must
    agree; the second catches a checksum list that was edited or lost entries).
    """
    needed = dict(meta.checksums)
    for spec in meta.array_specs().values():
        for key in [f"{spec.path}/zarr.json", *spec.file_keys()]:
            needed.setdefault(key, None)
    missing: dict[str, list[str]] = {}
    for key, entry in needed.items():
        if key not in files:
            missing.setdefault(fmt.array_of(key), []).append(key)
        elif entry is not None and files[key] != entry[0]:
            raise StoreError(f"{where}: {fmt.array_of(key)}: file {key} has {files[key]} bytes, expected "
                             f"{entry[0]} (truncated or replaced); re-run `pscv prepare`")
    if missing:
        array, keys = next(iter(sorted(missing.items())))
        more = sum(len(v) for v in missing.values()) - 1
        raise StoreError(f"{where}: {array}: file {keys[0]} is missing" + (f" (and {more} more)" if more else "")
                         + "; the store is damaged, re-run `pscv prepare`")
    unlisted = [k for k in needed if k not in meta.checksums]
    if unlisted:
        raise StoreError(f"{where}: {fmt.array_of(unlisted[0])}: file {unlisted[0]} has no checksum in the "
                         f"metadata; the store is damaged, re-run `pscv prepare`")


def verify_files(meta: fmt.StoreMeta, fs, root: str) -> dict[str, list[str]]:
    """Re-hash every file; returns array -> problems (one line each) for those that changed."""
    files = listing(fs, root)
    problems: dict[str, list[str]] = {}
    for key, (size, sha) in sorted(meta.checksums.items()):
        array = fmt.array_of(key)
        if key not in files:
            problems.setdefault(array, []).append(f"{key}: missing")
        elif files[key] != size:
            problems.setdefault(array, []).append(f"{key}: {files[key]} bytes, expected {size}")
        elif file_sha256(fs, f"{root}/{key}") != sha:
            problems.setdefault(array, []).append(f"{key}: sha256 differs from the one recorded at conversion")
    return problems
