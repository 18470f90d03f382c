"""Where the training input reads slices from: memory, a window of decoded shards, or the store.

Every source returns exactly what :meth:`SliceStore.read_slices` returns for the same slices; they
differ only in how often the store is read:

- :class:`MemorySource` reads the training split once, in whole shards (one read per array per 64
  slices), into memory. DataLoader workers are forked from the process that filled it and read the
  same pages, so the split is held once per rank, never once per worker. ACDC at 256² is 0.5 GB.
- :class:`ShardSource` keeps the last ``window`` decoded shards (an LRU). With the ``window``
  shuffle order (:mod:`.stream`) consecutive steps draw from the same few shards, so each shard is
  decoded about once per epoch and a store of any size streams through a bounded memory.
- :class:`StoreSource` reads each slice on its own: the reference the others are tested against.

``data.cache=auto`` picks memory when the split's slices fit ``data.cache_gb``, else shards.
"""
from __future__ import annotations

import collections
import logging

import numpy as np

from . import format as fmt
from .store import SliceStore

log = logging.getLogger(__name__)


def split_bytes(store: SliceStore, items: np.ndarray) -> int:
    """Bytes of image (float32) and label (uint8) of the given slices."""
    return len(np.unique(items)) * store.size * store.size * 5


class StoreSource:
    """Each slice read from the store by itself (no cache)."""

    mode = "none"

    def __init__(self, store: SliceStore):
        self.store = store

    def fetch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.store.read_slices(int(i), int(i) + 1) for i in indices]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class MemorySource:
    """The given slices held in memory, read from the store in shard-sized blocks."""

    mode = "memory"

    def __init__(self, store: SliceStore, items: np.ndarray, progress: bool = False):
        from ..progress import progress_bar

        self.items = np.unique(np.asarray(items, dtype=np.int64))
        n, s = len(self.items), store.size
        self.image = np.empty((n, s, s), dtype=np.float32)
        self.label = np.empty((n, s, s), dtype=np.uint8)
        runs = _runs(self.items)
        bar = progress_bar(total=n, desc="cache", unit="slice", disable=not progress)
        row = 0
        for start, stop in runs:
            image, label = store.read_slices(start, stop)
            self.image[row:row + len(image)], self.label[row:row + len(image)] = image, label
            row += len(image)
            bar.update(len(image))
        bar.close()

    def rows(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        rows = np.searchsorted(self.items, idx)
        missing = (rows >= len(self.items)) | (self.items[np.minimum(rows, len(self.items) - 1)] != idx)
        if missing.any():
            raise IndexError(f"slice(s) {idx[missing][:5].tolist()} are not in the cached split")
        return rows

    def fetch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows(indices)
        return self.image[rows], self.label[rows]


class ShardSource:
    """Slices read through an LRU of ``window`` whole decoded shards."""

    mode = "shards"

    def __init__(self, store: SliceStore, window: int):
        self.store, self.window = store, max(1, int(window))
        self._shards: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self.reads = 0  # shards decoded so far (for tests and the benchmark)

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k in self._shards:
            self._shards.move_to_end(k)
            return self._shards[k]
        start = k * fmt.SHARD_SLICES
        self._shards[k] = self.store.read_slices(start, min(start + fmt.SHARD_SLICES, len(self.store)))
        self.reads += 1
        while len(self._shards) > self.window:
            self._shards.popitem(last=False)
        return self._shards[k]

    def fetch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        s = self.store.size
        image, label = np.empty((len(idx), s, s), np.float32), np.empty((len(idx), s, s), np.uint8)
        for k in np.unique(idx // fmt.SHARD_SLICES):
            sel = idx // fmt.SHARD_SLICES == k
            im, lab = self._shard(int(k))
            image[sel], label[sel] = im[idx[sel] % fmt.SHARD_SLICES], lab[idx[sel] % fmt.SHARD_SLICES]
        return image, label


def _runs(items: np.ndarray) -> list[tuple[int, int]]:
    """Sorted slice indices -> [start, stop) runs of consecutive slices, cut at shard boundaries."""
    if len(items) == 0:
        return []
    cut = (np.diff(items) != 1) | (items[1:] // fmt.SHARD_SLICES != items[:-1] // fmt.SHARD_SLICES)
    starts = np.concatenate([[0], np.flatnonzero(cut) + 1])
    stops = np.concatenate([starts[1:], [len(items)]])
    return [(int(items[a]), int(items[b - 1]) + 1) for a, b in zip(starts, stops)]


def build_source(store: SliceStore, items: np.ndarray, mode: str, cache_gb: float, window: int,
                 progress: bool = False):
    """The slice source ``data.cache`` asks for (``auto``: memory when the split fits ``cache_gb``)."""
    if mode == "auto":
        need = split_bytes(store, items)
        mode = "memory" if need <= cache_gb * 2**30 else "shards"
        log.info("data.cache=auto: %s (split %.2f GB, limit %.2f GB)", mode, need / 2**30, cache_gb)
    if mode == "memory":
        return MemorySource(store, items, progress)
    if mode == "shards":
        return ShardSource(store, window)
    return StoreSource(store)
