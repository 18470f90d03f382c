"""Data benchmark: conversion throughput and random training-slice reads, store vs h5py.

    python benchmarks/bench_data.py [--src ../shared/data/acdc_wsl4mis/ACDC_training_volumes] [--workers 2]

Prints one table; every number is measured in this run.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from pscv_dist.data import SliceStore
from pscv_dist.data.prepare import PrepareConfig, prepare
from pscv_dist.data.volumes import resize_image, resize_label

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared/data/acdc_wsl4mis/ACDC_training_volumes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", default=str(DEFAULT_SRC))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reads", type=int, default=500)
    args = ap.parse_args()
    src = Path(args.src)
    files = sorted(src.glob("*.h5"))
    tmp = Path(tempfile.mkdtemp())
    rows = []
    try:
        for workers in sorted({1, args.workers}):
            t0 = time.perf_counter()
            prepare(PrepareConfig(str(src), str(tmp / f"s{workers}.zarr"), "wsl4mis-h5", workers=workers,
                                  progress=False))
            dt = time.perf_counter() - t0
            rows.append((f"convert {len(files)} volumes, {workers} worker(s)", f"{len(files) / dt:.1f} volumes/s", f"{dt:.1f} s"))
        store = SliceStore(str(tmp / f"s{args.workers}.zarr"))
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(store), args.reads)
        for i in idx[:20]:
            store[int(i)]  # warm the OS cache as for the h5 files below
        t0 = time.perf_counter()
        for i in idx:
            store[int(i)]
        t_store = (time.perf_counter() - t0) / args.reads
        # the same slices from the h5 volumes: open, read image+label slice (WSL4MIS dataset style)
        cases, zs = [store.cases[store._case_index[i]] for i in idx], [int(store._z[i]) for i in idx]
        t0 = time.perf_counter()
        for c, z in zip(cases, zs):
            with h5py.File(src / f"{c}.h5", "r") as f:
                f["image"][z], f["label"][z]
        t_h5 = (time.perf_counter() - t0) / args.reads
        t0 = time.perf_counter()
        for c, z in zip(cases, zs):
            with h5py.File(src / f"{c}.h5", "r") as f:
                im, lab = f["image"][z], f["label"][z]
            resize_image(im[None], (256, 256)), resize_label(lab[None], (256, 256))
        t_h5r = (time.perf_counter() - t0) / args.reads
        rows.append(("random slice read: store (image+label+points at 256²)", f"{1 / t_store:.0f} slices/s", f"{t_store * 1e3:.2f} ms"))
        rows.append(("random slice read: h5py (native image+label)", f"{1 / t_h5:.0f} slices/s", f"{t_h5 * 1e3:.2f} ms"))
        rows.append(("random slice read: h5py + resize to 256²", f"{1 / t_h5r:.0f} slices/s", f"{t_h5r * 1e3:.2f} ms"))
        size = sum(p.stat().st_size for p in (tmp / f"s{args.workers}.zarr").rglob("*") if p.is_file())
        src_size = sum(p.stat().st_size for p in files)
        rows.append(("bytes on disk: store vs h5 source", f"{size / 2**20:.0f} MiB", f"{src_size / 2**20:.0f} MiB"))
    finally:
        shutil.rmtree(tmp)
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'rate':>16}  {'time':>10}")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>16}  {r[2]:>10}")


if __name__ == "__main__":
    main()
