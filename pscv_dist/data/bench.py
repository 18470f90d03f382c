"""``pscv bench input``: the slices/s of exactly the trainer's input path on this machine.

It builds the same :class:`~.pipeline.InputPipeline` the trainer iterates (same sampler, slice
source, augmentation and placement) and times ``steps`` batches after ``warmup`` ones (the warm-up
absorbs worker start-up and the first shard reads). The time to fill the memory cache is reported
on its own: a run pays it once.
"""
from __future__ import annotations

import dataclasses
import time

from ..config import AugmentConfig, DataConfig
from ..errors import ConfigError
from .pipeline import InputPipeline
from .store import SliceStore


@dataclasses.dataclass
class InputBench:
    store: str
    size: int
    workers: int
    batch: int
    cache: str
    shuffle: str
    steps: int
    setup_s: float  # opening the store and filling the cache
    seconds: float  # the timed steps
    slices_per_s: float

    def table(self) -> str:
        rows = [("store", self.store), ("slice size", f"{self.size}x{self.size}"), ("workers", self.workers),
                ("batch (this rank)", self.batch), ("cache / shuffle", f"{self.cache} / {self.shuffle}"),
                ("set-up (open + cache fill)", f"{self.setup_s:.2f} s"),
                ("timed steps", f"{self.steps} in {self.seconds:.2f} s"),
                ("ms per step", f"{1e3 * self.seconds / self.steps:.1f}"),
                ("slices/s", f"{self.slices_per_s:.0f}")]
        w = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def bench_input(store: str, *, workers: int = 2, batch: int = 12, steps: int = 100, warmup: int = 5,
                split: str = "all", cache: str = "auto", shuffle: str = "global", seed: int = 0,
                augment: AugmentConfig | None = None, device: str = "cpu") -> InputBench:
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    t0 = time.perf_counter()
    s = SliceStore(store)
    data = DataConfig(store=store, train_split=split, batch_size=batch, num_workers=workers, cache=cache,
                      shuffle=shuffle)
    pipe = InputPipeline(s, s.slice_indices(s.split(split)), data, augment or AugmentConfig(), seed=seed,
                         device=device, steps=warmup + steps)
    setup = time.perf_counter() - t0
    it = iter(pipe)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t0
    return InputBench(store, s.size, workers, batch, pipe.source.mode, shuffle, steps, setup, dt, steps * batch / dt)
