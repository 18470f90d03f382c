"""The CV term at cluster scale: the global negative pool (``loss.cv_pool=global``) against a bounded
one (``loss.cv_pool=P``), in bytes per rank per step and in step time.

    python benchmarks/bench_cv_pool.py [--batch 12] [--classes 4] [--size 256] [--pool 12] [--repeats 5]

Bytes (fp32 maps, D = size², per rank per step, forward + backward), from the sizes the loss sends:
- global: the forward all-gather receives the (W-1)·b·K·D map values of the other ranks; the
  backward reduce-scatter (NCCL) moves the same amount again;
- pool P: one all-reduce of the (P, K, D) pool buffer forward and one of its gradient backward,
  2·(W-1)/W·P·K·D values each on a ring.
Negatives per anchor: up to (W·b - 1)(K - 1) against up to P·(K - 1).

Time: the CV term's forward + backward on W = 2 real gloo processes on this machine, both pools
side by side (medians of --repeats); W = 8 and 64 are computed, not measured (this machine has 2
cores).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def bytes_per_step(world: int, b: int, k: int, d: int, pool: int | None, nbytes: int = 4) -> float:
    if pool is None or pool >= world * b:
        return 2 * (world - 1) * b * k * d * nbytes
    return 2 * 2 * (world - 1) / world * pool * k * d * nbytes


def _worker(rank, world, args, path, out):
    from pscv_dist.losses import ContrastiveVarianceLoss

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(rank)
    b, k, s = args.batch, args.classes, args.size
    probs = torch.randn(b, k, s, s, generator=g).softmax(1).requires_grad_(True)
    images = torch.rand(b, 1, s, s, generator=g)
    present = torch.rand(b, k, generator=g) < 0.8
    present[:, 0] = True
    times = {}
    for name, pool in (("global", None), (f"pool {args.pool}", args.pool)):
        loss_fn = ContrastiveVarianceLoss(pool=pool)
        runs = []
        for i in range(args.repeats + 1):
            dist.barrier()
            t0 = time.perf_counter()
            probs.grad = None
            loss_fn(probs, images, present, i).backward()
            dist.barrier()
            runs.append(time.perf_counter() - t0)
        times[name] = sorted(runs[1:])[len(runs[1:]) // 2]
    if rank == 0:
        torch.save(times, out)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pool", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    b, k, d, p = args.batch, args.classes, args.size ** 2, args.pool
    print(f"CV negative pool, b={b} per rank, K={k}, {args.size}x{args.size}, fp32 maps, pool P={p}\n")
    print(f"{'W':>3} {'global MiB/step':>16} {'pool MiB/step':>14} {'ratio':>7} {'negatives/anchor global':>24} {'pool':>6}")
    for w in (2, 8, 64):
        g, q = bytes_per_step(w, b, k, d, None), bytes_per_step(w, b, k, d, p)
        print(f"{w:>3} {g / 2**20:>16,.1f} {q / 2**20:>14,.1f} {g / q:>6.1f}x {(w * b - 1) * (k - 1):>24,} {p * (k - 1):>6}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        mp.spawn(_worker, args=(2, args, os.path.join(tmp, "store"), out), nprocs=2, join=True)
        times = torch.load(out)
    print(f"\nmeasured, W=2 gloo processes on this machine (CV term forward + backward, median of {args.repeats}):")
    base = times["global"]
    for name, t in times.items():
        print(f"  {name:<10} {t * 1e3:8.1f} ms  ({t / base:.2f}x global)")


if __name__ == "__main__":
    main()
