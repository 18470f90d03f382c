"""Training-step benchmark on CPU: our Trainer's step vs a bare PyTorch loop, per method.

    python benchmarks/bench_train.py [--size 128] [--batch 12] [--steps 10]

Bare loop: the same UNet, objective and SGD on one fixed batch already in memory - no data
loading, no augmentation, no framework. Ours: Trainer.train_step, measured twice - with
augmentation off (the same work as the bare loop plus our data stream) and with the default Kornia
augmentation. One process (world size 1), fp32, medians of ``--steps`` steps after 2 warm-up steps.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from pscv_dist.config import load_config
from pscv_dist.data import SliceStore
from pscv_dist.distributed import DistState
from pscv_dist.losses import build_objective
from pscv_dist.model import UNet
from pscv_dist.trainer import Trainer
from timing import median_time  # benchmarks/timing.py (the script's own folder)

METHODS = ["pce", "entmini", "ms", "pscv", "fullsup"]


def bare(store_path, method, batch, steps, cfg):
    store = SliceStore(store_path)
    items = [store[i] for i in range(batch)]
    b = {k: torch.stack([it[k] for it in items]) for k in ("image", "label", "points", "present")}
    torch.manual_seed(0)
    model = UNet(num_classes=store.num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    obj = build_objective(cfg.loss, store.num_classes, store.ignore_index, seed=cfg.train.seed,
                          compile=cfg.model.compile)
    x = b["image"].contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        obj(model(x), b, 0)["loss"].backward()
        opt.step()
    return median_time(step, steps, warmup=2)


def ours(store_path, method, batch, steps, out, augment):
    cfg = load_config(None, [f"data.store={store_path}", f"data.batch_size={batch}", "data.num_workers=1",
                             f"loss.name={method}", f"augment.backend={augment}", "tracking.enabled=false",
                             f"train.out_dir={out}", "train.iterations=1000000"])
    trainer = Trainer(cfg, DistState())
    it = trainer.batches()
    return median_time(lambda: trainer.train_step(it), steps, warmup=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args()
    from pscv_dist.data.prepare import PrepareConfig, prepare
    from pscv_dist.data.synthetic import write_phantoms

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = write_phantoms(Path(tmp) / "ph", 6, seed=0, shape=(8, 128, 128))
        store = str(Path(tmp) / "s.zarr")
        prepare(PrepareConfig(str(src), store, "nifti", size=a.size, progress=False))
        for method in a.methods.split(","):
            cfg = load_config(None, [f"loss.name={method}"])
            t_bare = bare(store, method, a.batch, a.steps, cfg)
            t_none = ours(store, method, a.batch, a.steps, Path(tmp) / f"o_{method}_n", "none")
            t_aug = ours(store, method, a.batch, a.steps, Path(tmp) / f"o_{method}_k", "kornia")
            rows.append((method, t_bare, t_none, t_aug))
    print(f"CPU, {torch.get_num_threads()} threads, batch {a.batch}, {a.size}x{a.size}, UNet 16-256, median of {a.steps} steps")
    print(f"{'method':<9}{'bare img/s':>12}{'ours img/s':>12}{'ratio':>8}{'ours+aug img/s':>16}{'ratio':>8}   (ratio = step time / bare; goal <= 1.1)")
    for m, tb, tn, ta in rows:
        print(f"{m:<9}{a.batch / tb:>12.1f}{a.batch / tn:>12.1f}{tn / tb:>8.2f}{a.batch / ta:>16.1f}{ta / tb:>8.2f}")


if __name__ == "__main__":
    main()
