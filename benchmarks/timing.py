"""Shared timing for the benchmark scripts: median wall time after warm-up calls."""
from __future__ import annotations

import time


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return median_times({"fn": fn}, repeats, warmup)["fn"]


def median_times(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds of each of ``fns`` (name -> function), timed in turns (a, b, c, a, b, c, ...)
    so that a slow phase of the machine falls on all of them alike and their ratios stay put."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}
