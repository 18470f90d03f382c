"""The training sample stream: infinite, seeded, shared by all ranks, sliced by rank.

Epoch e is a permutation of the training slices drawn from (seed, e); the global stream is the
concatenation of the epochs. Two orders: ``global`` (a uniform permutation of the whole split) and
``window`` (the split's shards in a random order, cut into windows of ``window`` shards, each window
shuffled: streaming reads each shard about once per epoch, for stores larger than memory). Either
way step s takes the next ``global_batch`` items of it and rank r the
r-th contiguous block of ``global_batch / world`` of those. Everything is a function of the step,
so resuming at step s needs no state but s (detectron2/composer style), and a run on W ranks sees
exactly the global batches of a one-process run.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from . import format as fmt
from ..errors import ConfigError


def local_batch_size(global_batch: int, world: int) -> int:
    if global_batch % world:
        raise ConfigError(f"data.batch_size={global_batch} cannot be split exactly over {world} ranks; "
                         f"use a multiple of {world}")
    return global_batch // world


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for steps ``start_step, start_step+1, ...``, this rank's indices into ``items``."""

    def __init__(self, items: np.ndarray, global_batch: int, rank: int, world: int, seed: int,
                 start_step: int = 0, steps: int | None = None, order: str = "global", window: int = 16):
        if len(items) == 0:
            raise ConfigError("the training split has no slices")
        if order not in ("global", "window"):
            raise ConfigError(f"data.shuffle must be 'global' or 'window', got {order!r}")
        self.order, self.window = order, max(1, int(window))
        self.items, self.global_batch = np.asarray(items), global_batch
        self.local = local_batch_size(global_batch, world)
        self.rank, self.seed, self.start_step, self.steps = rank, seed, start_step, steps
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            rng = np.random.default_rng([self.seed, epoch])
            if self.order == "global":
                perm = rng.permutation(len(self.items))
            else:
                shard = self.items // fmt.SHARD_SLICES
                ids = rng.permutation(np.unique(shard))
                pos = {int(k): np.flatnonzero(shard == k) for k in ids}
                perm = np.concatenate([rng.permutation(np.concatenate([pos[int(k)] for k in ids[w:w + self.window]]))
                                       for w in range(0, len(ids), self.window)])
            self._perm_cache = {epoch: perm}
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
