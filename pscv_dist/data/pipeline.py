"""The training input: store -> this rank's batch of each step -> augmentation -> device.

:class:`InputPipeline` is exactly what the trainer iterates and what ``pscv bench input`` times.
Per step s it yields this rank's share of the global batch of s (:class:`.stream.StepBatchSampler`),
read from a slice source (:mod:`.cache`: memory, a window of shards, or the store), with the
point-label maps built from the store's click table in one gather, and augmented
(:mod:`pscv_dist.augment`) with the draw of (seed, s, rank):

- on a GPU the batch is read by the DataLoader workers into pinned memory, copied without
  blocking, and augmented on the GPU (Kornia / DALI run there);
- on a CPU the augmentation runs where the batch is read: inside each DataLoader worker (one
  thread each: torch's worker loop sets it), so the workers' cores do all the input work and the
  training process only trains;
  with ``data.num_workers=0`` it runs in the training process.

Both placements give the same batches (the draw depends on (seed, step, rank) only), so a run, its
resume and a run on another machine agree.

Batches cross from the workers through :class:`BatchSlots`, a ring of batch buffers in shared
memory allocated once per iteration: a worker writes step s into slot s mod n and sends only the
slot number. torch's default transfer (a new shared-memory segment per tensor per batch, created,
mapped and unmapped each time) costs ~3 ms per 12-slice batch at 128² and ~9 ms at 256² even for
empty work, which capped the workers below the in-process rate. Labels and point maps travel as
uint8 and become int64, what the losses take, at the end.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..augment import Augmenter
from ..config import AugmentConfig, DataConfig
from .cache import build_source
from .store import SliceStore
from .stream import StepBatchSampler


class Steps(Sampler[int]):
    """Stream steps ``start, start + 1, ...`` (``steps`` of them, or forever)."""

    def __init__(self, start: int, steps: int | None):
        self.start, self.steps = start, steps

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.steps)) if self.steps is not None else itertools.count(self.start)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an infinite stream has no length")
        return self.steps


class StepBatches(Dataset):
    """Item ``s``: this rank's batch of stream step ``s`` as CPU tensors, augmented when an
    augmenter is given. Made in the DataLoader workers (or in-process without workers)."""

    def __init__(self, store: SliceStore, source, sampler: StepBatchSampler, augmenter: Augmenter | None, rank: int):
        self.store, self.source, self.sampler, self.augmenter, self.rank = store, source, sampler, augmenter, rank

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        idx = np.asarray(self.sampler.batch_at(step), dtype=np.int64)
        image, label = self.source.fetch(idx)
        batch = {"image": torch.from_numpy(image)[:, None], "label": torch.from_numpy(label),
                 "points": torch.from_numpy(self.store.points(idx)),
                 "present": torch.from_numpy(self.store.present[idx])}
        if self.augmenter is not None:  # CPU training: the batch is finished here, in the worker
            batch = self.augmenter(batch, step, self.rank)
        return batch


class BatchSlots:
    """``n`` batch buffers in shared memory that DataLoader workers fill and the training process
    reads.

    Safe without locks because of how the DataLoader schedules: while the training process holds
    step s, the steps in flight are at most s + 1 .. s + workers * prefetch, and step s + n is
    handed to a worker only after the training process asked for step s + 1. With
    n > workers * prefetch no worker writes the slot being read, and :meth:`take` copies the batch
    out before the next one is asked for."""

    def __init__(self, n: int, batch: int, size: int, classes: int):
        self.n = n
        self.bufs = {"image": torch.empty(n, batch, 1, size, size), "label": torch.empty(n, batch, size, size, dtype=torch.uint8),
                     "points": torch.empty(n, batch, size, size, dtype=torch.uint8),
                     "present": torch.empty(n, batch, classes, dtype=torch.bool)}
        for v in self.bufs.values():
            v.share_memory_()

    def put(self, step: int, batch: dict[str, torch.Tensor]) -> int:
        slot = step % self.n
        for k, v in self.bufs.items():
            v[slot].copy_(batch[k])
        return slot

    def take(self, slot: int, pin: bool = False) -> dict[str, torch.Tensor]:
        """A copy of the slot's batch (the slot is written again ``n`` steps later); in pinned
        memory (torch's caching host allocator) for a non-blocking copy to a GPU when ``pin``."""
        return {k: v[slot].pin_memory() if pin else v[slot].clone() for k, v in self.bufs.items()}


class SlotBatches(Dataset):
    """Item ``s``: step s's batch written into ``slots``; what travels back is the slot number."""

    def __init__(self, batches: StepBatches, slots: BatchSlots):
        self.batches, self.slots = batches, slots

    def __getitem__(self, step: int) -> int:
        return self.slots.put(step, self.batches[step])


class InputPipeline:
    """Iterable of this rank's device batches (``image`` (B,1,S,S) float32, ``label`` and
    ``points`` (B,S,S) int64, ``present`` (B,K) bool), one per stream step from ``start_step``."""

    def __init__(self, store: SliceStore, items: np.ndarray, data: DataConfig, augment: AugmentConfig, *,
                 seed: int, rank: int = 0, world: int = 1, device: torch.device | str = "cpu",
                 start_step: int = 0, steps: int | None = None, progress: bool = False):
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.data, self.rank, self.seed, self.start_step, self.steps = data, rank, seed, start_step, steps
        self.sampler = StepBatchSampler(items, data.batch_size, rank, world, seed, order=data.shuffle,
                                        window=data.shuffle_window)
        self.source = build_source(store, items, data.cache, data.cache_gb, data.shuffle_window, progress)
        self.augmenter = Augmenter(augment, store.ignore_index, seed)
        self.dataset = StepBatches(store, self.source, self.sampler, None if self.on_gpu else self.augmenter, rank)
        self.batch, self.size, self.classes = self.sampler.local, store.size, store.present.shape[1]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        workers = self.data.num_workers
        # its own generator: creating the iterator must not draw from the global RNG (dropout's
        # stream), or a resumed run would diverge from the uninterrupted one
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.rank)
        steps = Steps(self.start_step, self.steps)
        if not workers:
            loader = DataLoader(self.dataset, sampler=steps, batch_size=None, pin_memory=self.on_gpu, generator=gen)
            for step, batch in zip(itertools.count(self.start_step), loader):
                yield self._finish(batch, step)
            return
        # new slots for every iteration: workers of an abandoned earlier iteration may still write
        slots = BatchSlots(workers * self.data.prefetch + 2, self.batch, self.size, self.classes)
        loader = DataLoader(SlotBatches(self.dataset, slots), sampler=steps, batch_size=None, num_workers=workers,
                            prefetch_factor=self.data.prefetch, persistent_workers=False, generator=gen)
        for step, slot in zip(itertools.count(self.start_step), loader):
            yield self._finish(slots.take(slot, pin=self.on_gpu), step)

    def _finish(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, Any]:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.on_gpu:
            out = self.augmenter(out, step, self.rank)
        out["label"], out["points"] = out["label"].long(), out["points"].long()
        return out
