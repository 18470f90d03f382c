"""Input-pipeline benchmark: the trainer's input path against the literature's, side by side.

    python benchmarks/bench_input.py [--src ../shared/data/acdc_wsl4mis/ACDC_training_volumes]
        [--sizes 128 256] [--workers 0 1 2] [--batch 12] [--steps 60] [--stores DIR]

The literature's pipeline is re-implemented here as WSL4MIS runs it (Luo et al., ``BaseDataSets`` +
``RandomGenerator``): one HDF5 file per training slice (written from the volumes into a temporary
folder first), read with h5py; with p = 0.5 a random rot90 and flip (numpy), else with p = 0.5 a
random rotation in [-20°, 20°) (``scipy.ndimage.rotate``, order 0); then ``scipy.ndimage.zoom`` to
the training size (order 0); a shuffling DataLoader of ``batch`` slices and ``workers`` workers.

Ours is :func:`pscv_dist.data.bench.bench_input`: the very pipeline object the trainer iterates
(store -> this rank's batches -> the same augmentation protocol, applied to image, label and clicks).
Both run in this process, one after the other, on the same cores; every number is measured in this
run. Stores are written with ``pscv prepare`` at each size (into ``--stores`` when given and kept).
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from pscv_dist.data.bench import bench_input
from pscv_dist.data.prepare import PrepareConfig, prepare

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared/data/acdc_wsl4mis/ACDC_training_volumes"


def write_slices(src: Path, out: Path) -> list[Path]:
    """WSL4MIS's ``ACDC_training_slices``: one h5 file (image, label) per slice of every volume."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for vol in sorted(src.glob("*.h5")):
        with h5py.File(vol, "r") as f:
            image, label = f["image"][()], f["label"][()]
        for z in range(image.shape[0]):
            path = out / f"{vol.stem}_slice_{z}.h5"
            with h5py.File(path, "w") as g:
                g["image"], g["label"] = image[z], label[z]
            files.append(path)
    return files


class LiteratureSlices(Dataset):
    """WSL4MIS ``BaseDataSets`` (train split) with its ``RandomGenerator``."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with h5py.File(self.files[i], "r") as f:
            image, label = f["image"][:], f["label"][:]
        if random.random() > 0.5:
            k = np.random.randint(0, 4)
            image, label = np.rot90(image, k), np.rot90(label, k)
            axis = np.random.randint(0, 2)
            image, label = np.flip(image, axis=axis).copy(), np.flip(label, axis=axis).copy()
        elif random.random() > 0.5:
            angle = np.random.randint(-20, 20)
            image = ndimage.rotate(image, angle, order=0, reshape=False)
            label = ndimage.rotate(label, angle, order=0, reshape=False)
        x, y = image.shape
        image = ndimage.zoom(image, (self.size / x, self.size / y), order=0)
        label = ndimage.zoom(label, (self.size / x, self.size / y), order=0)
        return {"image": torch.from_numpy(image.astype(np.float32))[None], "label": torch.from_numpy(label.astype(np.uint8))}


def bench_literature(files: list[Path], size: int, workers: int, batch: int, steps: int, warmup: int = 5) -> float:
    loader = DataLoader(LiteratureSlices(files, size), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=False)
    done, t0 = 0, None
    while True:
        for _ in loader:
            done += 1
            if done == warmup:
                t0 = time.perf_counter()
            if done == warmup + steps:
                return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(DEFAULT_SRC))
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--stores", help="folder for the stores (kept; reused when already there)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the benchmarking process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = Path(args.src)
    tmp = Path(tempfile.mkdtemp(prefix="bench_input_"))
    stores = Path(args.stores) if args.stores else tmp
    rows = []
    try:
        t0 = time.perf_counter()
        files = write_slices(src, tmp / "slices")
        print(f"wrote {len(files)} slice files in {time.perf_counter() - t0:.1f} s", flush=True)
        for size in args.sizes:
            store = stores / f"acdc{size}.zarr"
            if not (store / "zarr.json").exists():
                prepare(PrepareConfig(str(src), str(store), "wsl4mis-h5", size=size, workers=2, progress=False))
            for w in args.workers:
                lit = bench_literature(files, size, w, args.batch, args.steps)
                ours = bench_input(str(store), workers=w, batch=args.batch, steps=args.steps)
                rows.append((size, w, lit, ours.slices_per_s, ours.setup_s))
                print(f"{size}² workers={w}: literature {lit:.0f}, ours {ours.slices_per_s:.0f} slices/s", flush=True)
    finally:
        shutil.rmtree(tmp)
    print(f"\nbatch {args.batch}, {args.steps} timed steps, {torch.get_num_threads()} torch thread(s) in this process")
    print(f"{'size':>5} {'workers':>7} {'literature':>12} {'ours':>10} {'ours/lit':>9} {'ours set-up':>12}")
    for size, w, lit, ours, setup in rows:
        print(f"{size:>5} {w:>7} {lit:>10.0f}/s {ours:>8.0f}/s {ours / lit:>8.1f}x {setup:>10.1f} s")


if __name__ == "__main__":
    main()
