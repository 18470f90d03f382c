"""``pscv prepare``: a dataset layout -> one Zarr v3 store, checked, parallel and atomic.

Flow: parse OUT (unknown protocol, symlink loop) -> discover and pair the files, check every
header (cheap) -> claim OUT (:mod:`.publish`: not the source, parent writable, exists only with
``--overwrite`` and only over a complete store, one run at a time) -> in ``workers`` processes, one
volume at a time per worker: load, check, normalise, write the native volumes, resize, draw the
clicks -> assemble the sharded slice arrays in case order, one shard in memory at a time -> record
every file's checksum -> write the root attributes -> publish. Any failure removes the run's
staging folder: no half-written store appears, and nothing at OUT is touched before the new store
is complete. The array layout itself comes from :mod:`.format` (``ArraySpec``).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing as mp
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from . import format as fmt
from .catalog import CaseResult, content_sha256, fingerprint, make_splits
from .checks import EmptyCase, check_case, check_normalized, check_not_empty
from .integrity import check_complete, filesystem, listing, manifest
from .lifeline import worker_init
from .publish import output_target
from .annotations import FORMATS, Annotation
from .clicks import annotation_record, load_annotations, training_points
from .sources import CaseSource, Layout, discover
from .volume_io import DataError, check_file
from .volumes import NORMALIZATIONS, normalize_intensity, resize_image, resize_label, volume_points
from ..errors import ConfigError
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
    skip_empty: bool = False  # skip (with a warning) cases whose image is all zero or label all background
    clicks: str | None = None  # imported annotations (folder, .csv file, or an HDF5 key): data/clicks.py
    clicks_format: str | None = None  # slicer | nifti | csv | h5-key (detected from `clicks` when None)
    clicks_ignore: int | None = None  # "not annotated" value of sparse maps (nifti: 255; h5-key: K)
    clicks_partial: bool = False  # cases without annotations get simulated clicks instead of an error

    def __post_init__(self):
        if self.size < 8 or self.size % 8:
            raise ConfigError(f"--size must be a positive multiple of 8, got {self.size}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.per_class < 1:
            raise ConfigError(f"points per class must be >= 1, got {self.per_class}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"--normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.clicks_format is not None and self.clicks_format not in FORMATS:
            raise ConfigError(f"--clicks-format must be one of {list(FORMATS)}, got {self.clicks_format!r}")
        if self.clicks is None and (self.clicks_format or self.clicks_ignore is not None or self.clicks_partial):
            raise ConfigError("--clicks-format, --clicks-ignore and --clicks-partial need --clicks")


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
        for f in s.files:  # symlink loops, dangling links: refused before any conversion
            check_file(f)
        if s.header is not None:
            s.header()
    return sources


def process_case(source: CaseSource, staging: str, classes: list[str], normalization: str,
                 remap: dict[int, int] | None, cfg: PrepareConfig, annotation: Annotation | None = None) -> CaseResult:
    """Load, check and convert one case; writes its native volumes into the staging store and its
    training slices to a part file. Returns what the fingerprint and the metadata need."""
    import zarr

    k = len(classes)
    vol = source.load()
    labelled = vol.label is not None
    if not labelled:
        if annotation is None:
            raise DataError(f"{source.files[0]}: case {source.case!r} has neither a dense label nor annotations "
                            f"in --clicks; a case needs one of them")
        vol = dataclasses.replace(vol, label=np.zeros(vol.image.shape, np.uint8), label_geometry=vol.image_geometry)
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
    check_not_empty(source, vol.image, label if labelled else None)
    if not labelled:
        label = np.full(label.shape, k, dtype=np.uint8)  # K = no dense label here (CaseMeta.labelled)

    group = zarr.open_group(staging, mode="r+")
    z, h, w = image.shape
    specs = fmt.volume_specs(source.case, image.shape, None if annotation is None else len(annotation.points))
    specs["image"].create(group, image)
    specs["label"].create(group, label)

    size = (cfg.size, cfg.size)
    s_image, s_label = resize_image(image, size), resize_label(label, size)
    if annotation is not None:  # the annotators' points, the native ones kept as the record
        specs["clicks"].create(group, annotation.points.astype(np.int32))
        s_points, conflicts = training_points(annotation.points, image.shape, cfg.size, k)
        record = annotation_record(annotation, label if labelled else None, k, conflicts)
    else:
        points_cfg = {"seed": cfg.seed, "per_class": cfg.per_class, "include_background": cfg.include_background}
        s_points, record = volume_points(s_label, source.case, k, points_cfg), {"kind": "simulated"}
    present = np.stack([np.bincount(p[p < k], minlength=k) > 0 for p in s_points.reshape(z, -1)])
    part = Path(staging) / "_parts" / f"{source.case}.npz"
    clicks = fmt.clicks_table(s_points, 0, k)  # slice column relative to the case; shifted at assembly
    np.savez(part, image=s_image, label=s_label, clicks=clicks, present=present)

    # seeded by (seed, case id): stable per case, independent of its shape and of the other cases
    rng = np.random.default_rng([cfg.seed, zlib.crc32(source.case.encode())])
    raw = np.asarray(vol.image, dtype=np.float64).reshape(-1)
    fg = raw[(label.reshape(-1) > 0) & (label.reshape(-1) < k)]
    geom = vol.image_geometry
    return CaseResult(
        case=source.case, patient=source.patient, shape=[z, h, w],
        spacing=None if geom.spacing is None else [float(s) for s in geom.spacing],
        affine=None if geom.affine is None else np.asarray(geom.affine).tolist(),
        sha256=content_sha256(image, label),
        sample=rng.choice(raw, size=min(SAMPLE_VOXELS, raw.size), replace=False),
        sample_fg=rng.choice(fg, size=min(SAMPLE_VOXELS, fg.size), replace=False) if fg.size else fg,
        voxels_per_class=np.bincount(label.reshape(-1), minlength=k)[:k],
        slices_per_class=present.sum(axis=0), labelled=labelled, annotation=record,
    )


def _run_cases(sources, staging, classes, normalization, remap, cfg, annotations) -> dict[str, CaseResult]:
    """Convert every case; with ``cfg.skip_empty`` an empty case is skipped with a warning."""
    results: dict[str, CaseResult] = {}
    bar = progress_bar(total=len(sources), desc="prepare", unit="vol", disable=not cfg.progress)
    args = (staging, classes, normalization, remap, cfg)

    def collect(source: CaseSource, get) -> None:
        try:
            results[source.case] = get()
        except EmptyCase as exc:
            if not cfg.skip_empty:
                raise
            log.warning("--skip-empty: skipping case %s: %s", source.case, exc)
        bar.update()

    try:
        if cfg.workers == 1:
            for s in sources:
                collect(s, lambda s=s: process_case(s, *args, annotations.get(s.case)))
            return results
        with cf.ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=worker_init,
                                    initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(process_case, s, *args, annotations.get(s.case)): s for s in sources}
            try:
                for fut in cf.as_completed(futures):
                    collect(futures[fut], fut.result)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return results
    finally:
        bar.close()


def _assemble_slices(group, staging: Path, order: list[str], results: dict[str, CaseResult], k: int,
                     size: int) -> tuple[int, int]:
    """Concatenate the per-case parts into the sharded slice arrays, one shard buffer at a time."""
    n = sum(results[c].n_slices for c in order)
    shard = fmt.SHARD_SLICES
    specs = fmt.slice_specs(n, size, k, 0)
    dense = (fmt.SLICE_IMAGE, fmt.SLICE_LABEL)
    arrays = {name: specs[name].create(group) for name in dense}
    buffers = {name: np.zeros((shard, size, size), dtype=specs[name].dtype) for name in dense}
    clicks = []
    case_index, zs, present = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros((n, k), bool)
    pos = fill = 0
    for ci, case in enumerate(order):
        with np.load(staging / "_parts" / f"{case}.npz") as part:
            data = {fmt.SLICE_IMAGE: part["image"], fmt.SLICE_LABEL: part["label"]}
            present[pos:pos + len(part["present"])] = part["present"]
            clicks.append(part["clicks"] + np.array([pos, 0, 0, 0], dtype=np.int32))
        count = len(data[fmt.SLICE_IMAGE])
        case_index[pos:pos + count], zs[pos:pos + count] = ci, np.arange(count)
        done = 0
        while done < count:
            take = min(shard - fill, count - done)
            for name in dense:
                buffers[name][fill:fill + take] = data[name][done:done + take]
            fill, done = fill + take, done + take
            if fill == shard:
                start = pos + done - shard
                for name in dense:
                    arrays[name][start:start + shard] = buffers[name]
                fill = 0
        pos += count
    if fill:
        for name in dense:
            arrays[name][pos - fill:pos] = buffers[name][:fill]
    table = np.concatenate(clicks).astype(np.int32).reshape(-1, 4)
    specs[fmt.SLICE_CLICKS] = fmt.slice_specs(n, size, k, len(table))[fmt.SLICE_CLICKS]
    for name, values in ((fmt.SLICE_CASE, case_index), (fmt.SLICE_Z, zs), (fmt.SLICE_PRESENT, present),
                         (fmt.SLICE_CLICKS, table)):
        specs[name].create(group, values)
    return n, len(table)


def prepare(cfg: PrepareConfig, storage_options: dict | None = None) -> str:
    """Convert ``cfg.src`` to a store at ``cfg.out``; returns the output path."""
    import zarr

    target = output_target(cfg.out, storage_options)
    layout = discover(cfg.src, cfg.layout, labels_optional=cfg.clicks is not None)
    classes = list(cfg.classes or layout.classes)
    if not classes:
        raise DataError(f"{cfg.src}: class names unknown; add a dataset.json with 'labels' or pass --classes")
    if len(classes) >= 255:
        raise DataError(f"{cfg.src}: {len(classes)} classes do not fit the uint8 label format (max 254)")
    normalization = cfg.normalization or layout.normalization
    sources = _select(layout, cfg)
    annotations: dict[str, Annotation] = {}
    if cfg.clicks is not None:  # every annotation file is read and checked before anything is written
        _, annotations = load_annotations(cfg.clicks, cfg.clicks_format, layout.cases, classes,
                                          cfg.clicks_ignore, cfg.clicks_partial)
    staging = target.claim(cfg.src, cfg.overwrite)
    try:
        try:
            group = zarr.open_group(str(staging), mode="w", zarr_format=3)
            group.create_group("volumes")
            group.create_group("slices")
            (staging / "_parts").mkdir()
            results = _run_cases(sources, str(staging), classes, normalization, layout.remap, cfg, annotations)
            order = [s.case for s in sources if s.case in results]
            if not order:
                raise DataError(f"{cfg.src}: every selected case was empty and skipped (--skip-empty); nothing to write")
            n, n_clicks = _assemble_slices(group, staging, order, results, len(classes), cfg.size)
            shutil.rmtree(staging / "_parts")
            meta = _store_meta(cfg, layout, classes, normalization, order, results, n, n_clicks, staging)
            group.attrs[fmt.FORMAT_NAME] = meta.to_json()  # written last: the store is now complete
            target.publish()
        except BaseException:
            target.discard()
            raise
    finally:
        target.release()
    skipped = len(sources) - len(order)
    log.info("wrote %s: %d cases, %d slices%s", cfg.out, len(order), n, f", {skipped} skipped" if skipped else "")
    return str(cfg.out)


def _store_meta(cfg, layout, classes, normalization, order, results, n, n_clicks, staging) -> fmt.StoreMeta:
    cases, first = {}, 0
    for c in order:
        r = results[c]
        cases[c] = fmt.CaseMeta(patient=r.patient, shape=r.shape, spacing=r.spacing, affine=r.affine,
                                first_slice=first, n_slices=r.n_slices, sha256=r.sha256, labelled=r.labelled,
                                annotation=r.annotation)
        first += r.n_slices
    fs, root = filesystem(str(staging))
    meta = fmt.StoreMeta(
        classes=classes, ignore_index=len(classes), size=cfg.size, layout=cfg.layout, source=str(cfg.src),
        normalization={"mode": normalization}, cases=cases,
        points={"seed": cfg.seed, "per_class": cfg.per_class, "include_background": cfg.include_background},
        splits=make_splits({c: results[c].patient for c in order}, layout.splits, cfg.folds,
                           unlabelled={c for c in order if not results[c].labelled}),
        fingerprint=fingerprint([results[c] for c in order], classes), n_slices=n, n_clicks=n_clicks,
        checksums=manifest(fs, root),
    )
    check_complete(meta, listing(fs, root), str(cfg.out))  # the writer's own layout, checked as a reader would
    return meta
