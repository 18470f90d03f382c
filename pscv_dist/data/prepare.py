"""``pscv prepare``: a dataset layout -> one Zarr v3 store, checked, parallel and atomic.

Flow: discover and pair the files, check every header (cheap) -> in ``workers`` processes, one
volume at a time per worker: load, check, normalise, write the native volumes, resize, draw the
clicks -> assemble the sharded slice arrays in case order, one shard in memory at a time -> write
the root attributes -> rename the staging folder onto the output (or upload it, root metadata
last, for an fsspec URL). Any failure removes the staging folder: no half-written store appears.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import format as fmt
from .catalog import content_sha256, fingerprint, make_splits
from .checks import check_case, check_normalized
from .sources import CaseSource, Layout, discover
from .volume_io import DataError
from .volumes import NORMALIZATIONS, normalize_intensity, resize_image, resize_label, volume_points
from ..progress import progress_bar

log = logging.getLogger(__name__)
SAMPLE_VOXELS = 10_000


@dataclasses.dataclass
class PrepareConfig:
    src: str
    out: str
    layout: str
    size: int = 256
    seed: int = 0
    workers: int = 1
    cases: list[str] | None = None
    folds: int = 5
    per_class: int = 1
    include_background: bool = True
    classes: list[str] | None = None  # for `nifti` sources without a dataset.json
    normalization: str | None = None  # override the layout's default
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.size < 8 or self.size % 8:
            raise ValueError(f"--size must be a positive multiple of 8, got {self.size}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.per_class < 1:
            raise ValueError(f"points per class must be >= 1, got {self.per_class}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"--normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")


def _is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _select(layout: Layout, cfg: PrepareConfig) -> list[CaseSource]:
    sources = layout.cases
    if cfg.cases:
        by_id = {s.case: s for s in sources}
        unknown = [c for c in cfg.cases if c not in by_id]
        if unknown:
            raise DataError(f"{cfg.src}: --cases {unknown} not found; available e.g. {sorted(by_id)[:5]}")
        sources = [by_id[c] for c in cfg.cases]
    if not sources:
        raise DataError(f"{cfg.src}: no cases found for layout {cfg.layout!r}")
    seen = set()
    for s in sources:
        fmt.check_case_id(s.case)
        if s.case in seen:
            raise DataError(f"{s.files[0]}: case id {s.case!r} appears twice")
        seen.add(s.case)
        if s.header is not None:
            s.header()
    return sources


def process_case(source: CaseSource, staging: str, classes: list[str], normalization: str,
                 remap: dict[int, int] | None, cfg: PrepareConfig) -> dict[str, Any]:
    """Load, check and convert one case; writes its native volumes into the staging store and its
    training slices to a part file. Returns what the fingerprint and the metadata need."""
    import zarr

    k = len(classes)
    vol = source.load()
    check_case(source, vol, source.label_values or k)
    label = vol.label.astype(np.int64)
    if remap is not None:
        lut = np.zeros(int(source.label_values or label.max() + 1), dtype=np.int64)
        for raw, new in remap.items():
            lut[raw] = new
        label = lut[label]
    label = label.astype(np.uint8)
    image = normalize_intensity(vol.image, normalization)
    if normalization == "none":
        check_normalized(source, image)

    group = zarr.open_group(staging, mode="r+")
    z, h, w = image.shape
    for kind, arr in (("image", image), ("label", label)):
        group.create_array(fmt.volume_path(source.case, kind), data=arr, chunks=(1, h, w),
                           compressors=fmt.blosc())

    size = (cfg.size, cfg.size)
    s_image, s_label = resize_image(image, size), resize_label(label, size)
    points_cfg = {"seed": cfg.seed, "per_class": cfg.per_class, "include_background": cfg.include_background}
    s_points = volume_points(s_label, source.case, k, points_cfg)
    present = np.stack([np.bincount(p[p < k], minlength=k) > 0 for p in s_points.reshape(z, -1)])
    part = Path(staging) / "_parts" / f"{source.case}.npz"
    clicks = np.stack([fmt.clicks_from_map(p, k, k * cfg.per_class) for p in s_points])
    np.savez(part, image=s_image, label=s_label, clicks=clicks, present=present)

    rng = np.random.default_rng([cfg.seed, z, h, w])
    raw = np.asarray(vol.image, dtype=np.float64).reshape(-1)
    fg = raw[label.reshape(-1) > 0]
    geom = vol.image_geometry
    return {
        "case": source.case, "patient": source.patient, "shape": [z, h, w], "n_slices": z,
        "spacing": None if geom.spacing is None else [float(s) for s in geom.spacing],
        "affine": None if geom.affine is None else np.asarray(geom.affine).tolist(),
        "sha256": content_sha256(image, label),
        "sample": rng.choice(raw, size=min(SAMPLE_VOXELS, raw.size), replace=False),
        "sample_fg": rng.choice(fg, size=min(SAMPLE_VOXELS, fg.size), replace=False) if fg.size else fg,
        "voxels_per_class": np.bincount(label.reshape(-1), minlength=k)[:k],
        "slices_per_class": present.sum(axis=0),
    }


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one volume per process: parallelism comes from the workers


def _run_cases(sources, staging, classes, normalization, remap, cfg) -> dict[str, dict]:
    results: dict[str, dict] = {}
    bar = progress_bar(total=len(sources), desc="prepare", unit="vol", disable=not cfg.progress)
    args = (staging, classes, normalization, remap, cfg)
    try:
        if cfg.workers == 1:
            for s in sources:
                results[s.case] = process_case(s, *args)
                bar.update()
            return results
        with cf.ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futures = {pool.submit(process_case, s, *args): s for s in sources}
            try:
                for fut in cf.as_completed(futures):
                    results[futures[fut].case] = fut.result()
                    bar.update()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return results
    finally:
        bar.close()


def _assemble_slices(group, staging: Path, order: list[str], results: dict, k: int, size: int,
                     per_class: int) -> int:
    """Concatenate the per-case parts into the sharded slice arrays, one shard buffer at a time."""
    n = sum(results[c]["n_slices"] for c in order)
    shard = fmt.SHARD_SLICES
    spec = {fmt.SLICE_IMAGE: ("float32", (size, size)), fmt.SLICE_LABEL: ("uint8", (size, size))}
    arrays = {name: group.create_array(name, shape=(n, *hw), dtype=dt, chunks=(1, *hw), shards=(shard, *hw),
                                       compressors=fmt.blosc(), fill_value=0)
              for name, (dt, hw) in spec.items()}
    clicks = np.full((n, k * per_class, 3), -1, dtype=np.int16)
    buffers = {name: np.zeros((shard, *hw), dtype=dt) for name, (dt, hw) in spec.items()}
    case_index, zs, present = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros((n, k), bool)
    pos = fill = 0
    for ci, case in enumerate(order):
        with np.load(staging / "_parts" / f"{case}.npz") as part:
            data = {fmt.SLICE_IMAGE: part["image"], fmt.SLICE_LABEL: part["label"]}
            present[pos:pos + len(part["present"])] = part["present"]
            clicks[pos:pos + len(part["clicks"])] = part["clicks"]
        count = len(data[fmt.SLICE_IMAGE])
        case_index[pos:pos + count], zs[pos:pos + count] = ci, np.arange(count)
        done = 0
        while done < count:
            take = min(shard - fill, count - done)
            for name in spec:
                buffers[name][fill:fill + take] = data[name][done:done + take]
            fill, done = fill + take, done + take
            if fill == shard:
                start = pos + done - shard
                for name in spec:
                    arrays[name][start:start + shard] = buffers[name]
                fill = 0
        pos += count
    if fill:
        for name in spec:
            arrays[name][pos - fill:pos] = buffers[name][:fill]
    group.create_array(fmt.SLICE_CASE, data=case_index, chunks=(max(n, 1),), compressors=fmt.blosc())
    group.create_array(fmt.SLICE_Z, data=zs, chunks=(max(n, 1),), compressors=fmt.blosc())
    group.create_array(fmt.SLICE_PRESENT, data=present, chunks=(max(n, 1), k), compressors=fmt.blosc())
    group.create_array(fmt.SLICE_CLICKS, data=clicks, chunks=clicks.shape if n else (1, k * per_class, 3),
                       compressors=fmt.blosc())
    return n


def _publish(staging: Path, out: str, storage_options: dict | None) -> None:
    if not _is_url(out):
        dest = Path(out.removeprefix("file://"))
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():  # --overwrite: move the old store aside, then swap the new one in
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    if fs.exists(root):
        fs.rm(root, recursive=True)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    root_meta = staging / "zarr.json"
    for p in [f for f in files if f != root_meta] + [root_meta]:  # root metadata last = commit
        fs.put_file(str(p), f"{root}/{p.relative_to(staging).as_posix()}")
    shutil.rmtree(staging.parent)  # the mkdtemp folder holding the staging store


def prepare(cfg: PrepareConfig, storage_options: dict | None = None) -> str:
    """Convert ``cfg.src`` to a store at ``cfg.out``; returns the output path."""
    import zarr

    layout = discover(cfg.src, cfg.layout)
    classes = list(cfg.classes or layout.classes)
    if not classes:
        raise DataError(f"{cfg.src}: class names unknown; add a dataset.json with 'labels' or pass --classes")
    if len(classes) >= 255:
        raise DataError(f"{cfg.src}: {len(classes)} classes do not fit the uint8 label format (max 254)")
    normalization = cfg.normalization or layout.normalization
    sources = _select(layout, cfg)
    out = str(cfg.out)
    local_out = None if _is_url(out) else Path(out.removeprefix("file://"))
    if local_out is not None and local_out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{local_out}: output already exists; pass --overwrite to replace it")
    if local_out is not None:
        local_out.parent.mkdir(parents=True, exist_ok=True)
        staging = local_out.with_name(f".{local_out.name}.partial")
        if staging.exists():  # left over by an interrupted run
            shutil.rmtree(staging)
    else:
        staging = Path(tempfile.mkdtemp(prefix="pscv-store-")) / "store.zarr"
    try:
        group = zarr.open_group(str(staging), mode="w", zarr_format=3)
        group.create_group("volumes")
        group.create_group("slices")
        (staging / "_parts").mkdir()
        results = _run_cases(sources, str(staging), classes, normalization, layout.remap, cfg)
        order = [s.case for s in sources]
        n = _assemble_slices(group, staging, order, results, len(classes), cfg.size, cfg.per_class)
        shutil.rmtree(staging / "_parts")
        cases, first = {}, 0
        for c in order:
            r = results[c]
            cases[c] = fmt.CaseMeta(patient=r["patient"], shape=r["shape"], spacing=r["spacing"],
                                    affine=r["affine"], first_slice=first, n_slices=r["n_slices"],
                                    sha256=r["sha256"])
            first += r["n_slices"]
        meta = fmt.StoreMeta(
            classes=classes, ignore_index=len(classes), size=cfg.size, layout=cfg.layout, source=str(cfg.src),
            normalization={"mode": normalization}, cases=cases,
            points={"seed": cfg.seed, "per_class": cfg.per_class, "include_background": cfg.include_background},
            splits=make_splits({c: results[c]["patient"] for c in order}, layout.splits, cfg.folds),
            fingerprint=fingerprint([results[c] for c in order], classes), n_slices=n,
        )
        group.attrs[fmt.FORMAT_NAME] = meta.to_json()
        _publish(staging, out, storage_options)
    except BaseException:
        shutil.rmtree(staging if local_out is not None else staging.parent, ignore_errors=True)
        raise
    log.info("wrote %s: %d cases, %d slices", out, len(order), n)
    return out
