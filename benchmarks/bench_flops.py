"""The training step against the machine: counted FLOPs of the UNet step (forward + backward, torch's
FlopCounterMode) over its measured time, as a share of this machine's measured convolution and GEMM
throughput on the same cores, for our trainer's step and for a bare loop.

    python benchmarks/bench_flops.py [--size 128] [--batch 12] [--steps 5] [--device cpu|cuda]

Peaks are measured, not taken from a data sheet: a 3x3 convolution of the UNet's widest common
shape and a square fp32 GEMM, forward only, best of a few runs.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from gpu_check import bare_step, fixed_batch, make_store, our_step, sync  # benchmarks/ (the script's folder)


def step_flops(size: int, batch: int, device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from pscv_dist.config import load_config
    from pscv_dist.losses import build_objective
    from pscv_dist.model import UNet

    model = UNet(1, 4).to(device)
    obj = build_objective(load_config(None, ["loss.name=pscv"]).loss, 4, 4, seed=0)
    b = fixed_batch(device, size, batch)
    with FlopCounterMode(display=False) as counter:
        obj(model(b["image"]), b, 0)["loss"].backward()
    return counter.get_total_flops()


def best_rate(fn, flops: float, device, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return flops / best


def machine_peaks(device) -> dict[str, float]:
    x = torch.randn(12, 64, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device).to(memory_format=torch.channels_last)
    conv_flops = 2 * 12 * 64 * 64 * 64 * 64 * 9
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    with torch.no_grad():
        return {"conv3x3": best_rate(lambda: conv(x), conv_flops, device),
                "gemm": best_rate(lambda: a @ b, 2 * n ** 3, device)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    flops = step_flops(a.size, a.batch, device)
    peaks = machine_peaks(device)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(tmp, a.size)
        t_bare, _ = bare_step(device, store, a.size, a.batch, a.steps, "fp32", False)
        t_ours, _ = our_step(device, store, a.size, a.batch, a.steps, "fp32", False)
    print(f"{device}, {torch.get_num_threads()} threads, UNet 16-256, PSCV step, batch {a.batch}, {a.size}x{a.size}, fp32")
    print(f"counted FLOPs per step (forward + backward): {flops / 1e9:.2f} GFLOP")
    print(f"machine: 3x3 conv {peaks['conv3x3'] / 1e9:.1f} GFLOP/s, GEMM {peaks['gemm'] / 1e9:.1f} GFLOP/s (measured)\n")
    print(f"{'step':<10}{'ms':>9}{'GFLOP/s':>10}{'of conv':>9}{'of GEMM':>9}")
    for name, t in (("bare loop", t_bare), ("trainer", t_ours)):
        rate = flops / t
        print(f"{name:<10}{t * 1e3:>9.1f}{rate / 1e9:>10.1f}{rate / peaks['conv3x3']:>9.0%}{rate / peaks['gemm']:>9.0%}")


if __name__ == "__main__":
    main()
