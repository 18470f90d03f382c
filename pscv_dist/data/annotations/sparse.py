"""Sparse label maps: a NIfTI ``<case>.nii[.gz]`` on the image's grid, or a key of the case's HDF5
file (``h5-key``: the WSL4MIS ``scribble``). Every voxel that does not hold the ignore value is an
annotated point of the class it holds (0 can be a class: background scribbles exist)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..volume_io import read_h5, read_nifti
from .core import Annotation, CaseGrid, ClassNames, finalize, sha256_file

NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
AFFINE_ATOL = 1e-4


def case_name(path: Path) -> str:
    return NIFTI_SUFFIX.sub("", path.name)


def check_ignore(ignore, names: ClassNames, where: str) -> None:
    if isinstance(ignore, bool) or not isinstance(ignore, (int, np.integer)) or 0 <= ignore < len(names):
        raise DataError(f"{where}: the ignore value {ignore!r} must be an integer that is not a class index "
                        f"(0..{len(names) - 1}); {names.known()}")


def _ijk(shape) -> str:
    z, y, x = shape
    return f"{x} x {y} x {z} (i, j, k)"


def _matrix(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a), precision=4, suppress_small=True, separator=",",
                           max_line_width=10_000).replace("\n", "")


def labels_to_points(data: np.ndarray, where: str, names: ClassNames, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, zyx) of every voxel not equal to ``ignore``, sorted by (class, z, y, x). Refuses
    a value that is neither a class nor ``ignore`` (naming it and its voxel count), and a map
    without any ignore voxel (a dense label, not a sparse annotation)."""
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all() or not (data == np.rint(data)).all():
            bad = data[~finite | (data != np.rint(np.where(finite, data, 0)))]
            raise DataError(f"{where}: expected integer labels, found non-integer value {bad[0]} in {bad.size} voxel(s)")
        data = data.astype(np.int64)
    elif data.dtype.kind not in "ui":
        raise DataError(f"{where}: expected an integer label map, found dtype {data.dtype}")
    flat = data.reshape(-1)
    if flat.dtype.kind == "u" and flat.dtype.itemsize <= 2:
        counts = np.bincount(flat, minlength=len(names))
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(flat, return_counts=True)
    bad = [(int(v), int(n)) for v, n in zip(values, counts) if not (0 <= v < len(names) or v == ignore)]
    if bad:
        listed = ", ".join(f"value {v} in {n} voxel(s)" for v, n in bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise DataError(f"{where}: {listed}: neither a class index (0..{len(names) - 1}) nor the ignore value "
                        f"{ignore}; {names.known()}")
    if ignore not in values.tolist():
        raise DataError(f"{where}: no voxel holds the ignore value {ignore}, so every voxel would be a click: this "
                        f"is a dense label, not a sparse annotation (wrong ignore value? values found: "
                        f"{values.tolist()})")
    zyx = np.argwhere(data != ignore)  # sorted by (z, y, x)
    classes = data[tuple(zyx.T)].astype(np.int64)
    order = np.argsort(classes, kind="stable")
    return classes[order], zyx[order]


def read_sparse_nifti(path: Path, case: str, grid: CaseGrid, names: ClassNames, ignore: int) -> Annotation:
    data, geom = read_nifti(path)
    if tuple(geom.shape) != tuple(grid.shape):
        raise DataError(f"{path}: sparse map of shape {_ijk(geom.shape)}, expected the image's grid "
                        f"{_ijk(grid.shape)} of {grid.image}")
    if grid.affine is not None and not np.allclose(geom.affine, grid.affine, rtol=0, atol=AFFINE_ATOL):
        diff = float(np.abs(geom.affine - grid.affine).max())
        raise DataError(f"{path}: sparse map affine {_matrix(geom.affine)} differs from the affine "
                        f"{_matrix(grid.affine)} of {grid.image} (largest difference {diff:.3g}, tolerance "
                        f"{AFFINE_ATOL}); resample the map onto the image's grid")
    classes, zyx = labels_to_points(data, str(path), names, ignore)
    source = {"format": "nifti", "file": str(path), "sha256": sha256_file(path), "ignore": int(ignore)}
    return finalize(case, grid, classes, zyx, source, presorted=True)


def h5_has_key(path: str, key: str) -> bool:
    """False only when the file is readable and lacks ``key`` (anything else: let read_h5 say it)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return key in f
    except Exception:
        return True


def read_h5_key(case: str, grid: CaseGrid, key: str, names: ClassNames, ignore: int) -> Annotation:
    if not grid.files:
        raise DataError(f"case {case}: no source file to read the key {key!r} from")
    path = grid.files[0]
    data = read_h5(path, keys=(key,))[key]
    if tuple(data.shape) != tuple(grid.shape):
        raise DataError(f"{path}: key {key!r} has shape {tuple(data.shape)} (Z, H, W), expected the image's "
                        f"{tuple(grid.shape)}")
    classes, zyx = labels_to_points(data, f"{path}: key {key!r}", names, ignore)
    source = {"format": "h5-key", "file": str(path), "key": key, "sha256": sha256_file(path), "ignore": int(ignore)}
    return finalize(case, grid, classes, zyx, source, presorted=True)


def check_one_class_per_voxel(annotation: Annotation, grid: CaseGrid) -> None:
    voxel = np.ravel_multi_index(tuple(annotation.points[:, 1:].T.astype(np.int64)), grid.shape)
    shared = int((np.unique(voxel, return_counts=True)[1] > 1).sum())
    if shared:
        raise DataError(f"case {annotation.case}: {shared} voxel(s) carry two classes, which a sparse label map "
                        f"cannot hold; export as slicer or csv instead")


def sparse_nifti_image(annotation: Annotation, grid: CaseGrid, ignore: int):
    """A uint8 NIfTI on the image grid: the class at each annotated voxel, ``ignore`` elsewhere."""
    import nibabel as nib

    check_one_class_per_voxel(annotation, grid)
    points = annotation.points
    data = np.full(grid.shape, ignore, dtype=np.uint8)
    data[points[:, 1], points[:, 2], points[:, 3]] = points[:, 0]
    affine = grid.world_affine()
    img = nib.Nifti1Image(np.transpose(data, (2, 1, 0)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img
