"""Imported annotations in a store: from the annotators' files to the training slices, and back.

:mod:`.annotations` reads and writes the files (3D Slicer markups, sparse NIfTI maps, CSV, HDF5
keys) as native voxel points (class, z, y, x). This module is what ``pscv prepare --clicks`` and
``pscv clicks export`` do with them:

- the native points are the annotation of record: a store keeps them per case
  (``volumes/<case>/clicks``) and ``SliceStore.volume(case)["clicks"]`` returns them;
- each native slice z is resized to S x S for training as the image is, and each annotated voxel
  (y, x) lands on the training pixel that contains its centre:
  ``(floor((y + 0.5) S / H), floor((x + 0.5) S / W))`` (the pixel ``nearest-exact`` resizing takes
  the label from). Voxels of one class that land on one pixel merge; a pixel claimed by two classes
  is left unannotated and counted (``resize_conflicts``), never guessed;
- the case's metadata records the source (format, file, SHA-256), the annotated voxels per class,
  duplicates dropped at import, voxels annotated with two classes, and, where the case has a dense
  label, how many annotated voxels disagree with it (real annotators make mistakes: reported, kept).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError, OutputError
from .annotations import Annotation, CaseGrid, detect_format, export_annotations, import_annotations
from .volume_io import nifti_geometry


def case_grid(source) -> CaseGrid:
    """The grid (shape, geometry, files) of a source case, from its headers where it has them."""
    image = source.files[0]
    if image.endswith((".nii", ".nii.gz")):
        return CaseGrid.from_geometry(source.case, nifti_geometry(image), source.files)
    if image.endswith(".h5") and len(source.files) <= 2:
        import h5py

        try:
            with h5py.File(image, "r") as f:
                shape = tuple(int(s) for s in f["image"].shape)
        except Exception as exc:
            raise DataError(f"{image}: cannot read the image shape ({type(exc).__name__}: {exc})") from None
        if len(shape) == 3:
            return CaseGrid(source.case, shape, None, None, tuple(source.files))
    vol = source.load()  # layouts without cheap headers (one file per slice): load the case once
    return CaseGrid(source.case, tuple(vol.image.shape), vol.image_geometry.affine, vol.image_geometry.spacing,
                    tuple(source.files))


def stored_grid(case: str, meta) -> CaseGrid:
    """The grid of a store's case, from its :class:`~.format.CaseMeta` (shape, affine, spacing)."""
    return CaseGrid(case, tuple(meta.shape), None if meta.affine is None else np.asarray(meta.affine),
                    None if meta.spacing is None else tuple(meta.spacing))


def load_annotations(clicks: str, fmt: str | None, sources, classes: list[str], ignore: int | None,
                     partial: bool) -> tuple[str, dict[str, Annotation]]:
    """Read every case's annotations (``sources``: all cases of the source dataset). Returns the
    format used and {case: Annotation}; every bad input is a :class:`DataError` naming the file."""
    if fmt is None:
        fmt = detect_format(clicks)
    if fmt != "h5-key" and not os.path.exists(clicks):
        raise DataError(f"{clicks}: --clicks not found; expected {'a .csv file' if fmt == 'csv' else 'a folder'}")
    grids = {s.case: case_grid(s) for s in sources}
    return fmt, import_annotations(clicks, fmt, grids, classes, ignore=ignore, partial=partial)


def training_points(points: np.ndarray, shape, size: int, k: int) -> tuple[np.ndarray, int]:
    """Native (n, 4) (class, z, y, x) points -> (Z, S, S) uint8 point maps (``k`` = unannotated)
    and the number of training pixels dropped because two classes landed on them."""
    z_n, h, w = (int(v) for v in shape)
    maps = np.full((z_n, size, size), k, dtype=np.uint8)
    if len(points) == 0:
        return maps, 0
    cls, z, y, x = (points[:, i].astype(np.int64) for i in range(4))
    ty = np.minimum(((y + 0.5) * size / h).astype(np.int64), size - 1)
    tx = np.minimum(((x + 0.5) * size / w).astype(np.int64), size - 1)
    key = (z * size + ty) * size + tx
    pairs = np.unique(np.stack([key, cls]), axis=1)  # distinct (pixel, class)
    keys, counts = np.unique(pairs[0], return_counts=True)
    clash = np.isin(pairs[0], keys[counts > 1])
    good = pairs[:, ~clash]
    maps.reshape(-1)[good[0]] = good[1]
    return maps, int((counts > 1).sum())


def annotation_record(ann: Annotation, label: np.ndarray | None, k: int, resize_conflicts: int) -> dict:
    """What the case metadata says about its imported annotation."""
    record = {"kind": "imported", **{key: v for key, v in ann.source.items()},
              "points": int(len(ann.points)), "per_class": ann.counts(k), "duplicates": int(ann.duplicates),
              "resize_conflicts": resize_conflicts}
    if label is not None and len(ann.points):
        p = ann.points
        record["disagree_with_label"] = int((label[p[:, 1], p[:, 2], p[:, 3]] != p[:, 0]).sum())
    return record


def export_store_clicks(store_path: str, out: str, fmt: str, ignore: int = 255) -> list[Path]:
    """``pscv clicks export``: write a store's imported annotations (the native points of record)
    as Slicer markups, CSV or sparse NIfTI maps; import of the result gives the same points."""
    from .store import SliceStore

    if "://" not in store_path:  # the store is never written into: it is checked by its file list
        store_dir, dest = (Path(os.path.realpath(os.path.abspath(p))) for p in (store_path, out))
        if dest == store_dir or store_dir in dest.parents:
            raise OutputError(f"{out}: output lies inside the store {store_path}; export to a folder outside it")
    store = SliceStore(store_path)
    grids, anns = {}, {}
    for case, meta in store.meta.cases.items():
        grids[case] = stored_grid(case, meta)
        if meta.annotation.get("kind") == "imported":
            anns[case] = Annotation(case, store.clicks_of(case), dict(meta.annotation), 0)
    if not anns:
        raise DataError(f"{store_path}: the store holds no imported annotations (its clicks were simulated "
                        f"from dense labels); nothing to export")
    return export_annotations(anns, grids, store.classes, out, fmt, ignore=ignore)
