"""Scaling on this machine: the real Trainer's PSCV step at 1 and 2 ranks (gloo), and the bytes a rank
moves per step for the CV term's exchange against DDP's gradient all-reduce.

    python benchmarks/bench_scaling.py [--size 128] [--batch 12] [--steps 8] [--pool 12]

Throughput: ``Trainer.train_step`` (DDP, gloo, fp32, Kornia augmentation, PSCV at its defaults) on
a phantom store, median of ``--steps`` steps after 2 warm-up steps, with a barrier before and after
every step so the slowest rank sets the time. Four configurations, each in fresh processes:
one rank on 1 thread and on every thread; two ranks on 1 thread each at the same per-rank batch
(weak scaling: global batch 2b) and at the same global batch (strong scaling: b/2 per rank).

Bytes per rank per step (fp32), from the built model's parameter count and the store's K classes
and D = size² pixels, for W = 2, 8, 64 at the measured size and at the paper's 256²:
- DDP gradient all-reduce on a ring: 2(W-1)/W of the trainable parameters' bytes (the buffers'
  broadcast, a few KiB of BatchNorm statistics, is left out);
- CV term, global pool: (W-1)·b·K·D map values received forward and as many backward (NCCL's
  reduce-scatter; on gloo the backward all-reduces the whole gathered gradient, about twice that);
- CV term, pool of P: one ring all-reduce of the (P, K, D) pool forward and one backward
  (``bench_cv_pool.bytes_per_step``).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench_cv_pool import bytes_per_step  # benchmarks/ (the script's own folder)
from timing import median_time

CONFIGS = [  # (name, ranks, threads per rank, global batch as a multiple of --batch; 0.5 = strong)
    ("1 rank, 1 thread", 1, 1, 1.0),
    ("1 rank, all threads", 1, None, 1.0),
    ("2 ranks, weak (b per rank)", 2, 1, 2.0),
    ("2 ranks, strong (b/2 per rank)", 2, 1, 1.0),
]


def ddp_bytes_per_step(world: int, n_params: int, nbytes: int = 4) -> float:
    """A ring all-reduce sends (and receives) 2(W-1)/W of the buffer per rank."""
    return 2 * (world - 1) / world * n_params * nbytes


def _worker(rank, world, threads, overrides, steps, init, out):
    from pscv_dist.config import load_config
    from pscv_dist.distributed import DistState, barrier
    from pscv_dist.trainer import Trainer

    torch.set_num_threads(threads)
    state = DistState()  # on the CPU cores, also where a GPU is present: this measures the cores
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
        state = DistState(rank, world, 0, "gloo", torch.device("cpu"))
    trainer = Trainer(load_config(None, overrides), state)
    it = trainer.batches()

    def step():  # the barriers make the slowest rank set the time (no-ops on one rank)
        barrier(state)
        trainer.train_step(it)
        barrier(state)
    step_s = median_time(step, steps, warmup=2)
    if rank == 0:
        n_params = sum(p.numel() for p in trainer.engine.module.parameters() if p.requires_grad)
        torch.save({"step_s": step_s, "n_params": n_params, "classes": trainer.store.num_classes}, out)
    if world > 1:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=12, help="per-rank batch of the weak-scaling run")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--pool", type=int, default=12)
    a = ap.parse_args()
    if a.batch % 2:
        ap.error(f"--batch must be even (the strong-scaling run splits it over 2 ranks), got {a.batch}")
    from pscv_dist.data.prepare import PrepareConfig, prepare
    from pscv_dist.data.synthetic import write_phantoms

    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = write_phantoms(Path(tmp) / "ph", 8, seed=0, shape=(8, a.size, a.size))
        store = str(Path(tmp) / "s.zarr")
        prepare(PrepareConfig(str(src), store, "nifti", size=a.size, progress=False))
        for i, (name, world, threads, mult) in enumerate(CONFIGS):
            batch = int(a.batch * mult)
            overrides = [f"data.store={store}", f"data.batch_size={batch}", "data.num_workers=0",
                         "loss.name=pscv", "tracking.enabled=false", "train.progress=false",
                         f"train.out_dir={Path(tmp) / f'run{i}'}", "train.iterations=1000000"]
            out = os.path.join(tmp, f"r{i}.pt")
            mp.spawn(_worker, args=(world, threads or cores, overrides, a.steps, os.path.join(tmp, f"init{i}"), out),
                     nprocs=world, join=True)
            rows.append((name, world, threads or cores, batch, torch.load(out)))

    print(f"PSCV training step, {a.size}x{a.size}, fp32, gloo, this machine's {cores} cores, "
          f"median of {a.steps} steps\n")
    base = rows[0][3] / rows[0][4]["step_s"]
    print(f"{'configuration':<32}{'ranks':>6}{'thr/rank':>9}{'global batch':>13}{'step ms':>9}{'img/s':>8}"
          f"{'vs 1 rank 1 thread':>20}")
    for name, world, threads, batch, r in rows:
        ips = batch / r["step_s"]
        print(f"{name:<32}{world:>6}{threads:>9}{batch:>13}{r['step_s'] * 1e3:>9.0f}{ips:>8.1f}{ips / base:>19.2f}x")

    n_params, k = rows[0][4]["n_params"], rows[0][4]["classes"]
    print(f"\nbytes per rank per step (fp32): DDP all-reduce of {n_params:,} gradients against the CV "
          f"term's exchange of b={a.batch} images x K={k} maps per rank")
    print(f"{'size':>5}{'W':>4}{'DDP grads MiB':>15}{'CV global MiB':>15}{'x DDP':>8}"
          f"{f'CV pool {a.pool} MiB':>17}{'x DDP':>8}")
    for size in sorted({a.size, 256}):
        for w in (2, 8, 64):
            g = ddp_bytes_per_step(w, n_params)
            cv, pool = bytes_per_step(w, a.batch, k, size ** 2, None), bytes_per_step(w, a.batch, k, size ** 2, a.pool)
            print(f"{size:>5}{w:>4}{g / 2**20:>15.1f}{cv / 2**20:>15,.1f}{cv / g:>7.1f}x{pool / 2**20:>17,.1f}"
                  f"{pool / g:>7.1f}x")


if __name__ == "__main__":
    main()
