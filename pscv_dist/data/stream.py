"""The training sample stream: infinite, seeded, shared by all ranks, sliced by rank.

Epoch e is a permutation of the training slices drawn from (seed, e); the global stream is the
concatenation of the epochs; step s takes the next ``global_batch`` items of it and rank r the
r-th contiguous block of ``global_batch / world`` of those. Everything is a function of the step,
so resuming at step s needs no state but s (detectron2/composer style), and a run on W ranks sees
exactly the global batches of a one-process run.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .store import SliceStore


def local_batch_size(global_batch: int, world: int) -> int:
    if global_batch % world:
        raise ValueError(f"data.batch_size={global_batch} cannot be split exactly over {world} ranks; "
                         f"use a multiple of {world}")
    return global_batch // world


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for steps ``start_step, start_step+1, ...``, this rank's indices into ``items``."""

    def __init__(self, items: np.ndarray, global_batch: int, rank: int, world: int, seed: int,
                 start_step: int = 0, steps: int | None = None):
        if len(items) == 0:
            raise ValueError("the training split has no slices")
        self.items, self.global_batch = np.asarray(items), global_batch
        self.local = local_batch_size(global_batch, world)
        self.rank, self.seed, self.start_step, self.steps = rank, seed, start_step, steps
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.items))}
        return self._perm_cache[epoch]

    def global_batch_at(self, step: int) -> np.ndarray:
        n = len(self.items)
        pos = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        out = np.empty(len(pos), dtype=np.int64)
        for epoch in np.unique(pos // n):
            sel = pos // n == epoch
            out[sel] = self._perm(int(epoch))[pos[sel] % n]
        return self.items[out]

    def batch_at(self, step: int) -> list[int]:
        g = self.global_batch_at(step)
        return g[self.rank * self.local:(self.rank + 1) * self.local].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.steps is None or step < self.start_step + self.steps:
            yield self.batch_at(step)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an infinite stream has no length")
        return self.steps


class SliceDataset(Dataset):
    """Map-style view of a store for the DataLoader (opens the store lazily in each worker)."""

    def __init__(self, path: str):
        self.path = path
        self._store: SliceStore | None = None

    def store(self) -> SliceStore:
        if self._store is None:
            self._store = SliceStore(self.path)
        return self._store

    def __len__(self) -> int:
        return len(self.store())

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.store()[i]
        return {"image": item["image"], "label": item["label"], "points": item["points"], "present": item["present"]}

    def __getstate__(self):
        return {"path": self.path, "_store": None}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
