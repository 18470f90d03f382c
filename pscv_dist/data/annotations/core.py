"""What every annotation format shares: the case grid, the annotation record, class names, case
names, world <-> voxel mapping, the final checks (inside the volume, duplicates) and atomic writes.
The coordinate conventions are documented in the package docstring (:mod:`..annotations`)."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...errors import DataError

FORMATS = ("slicer", "nifti", "csv", "h5-key")
EXPORT_FORMATS = ("slicer", "csv", "nifti")
_SOURCE_SUFFIXES = re.compile(r"(\.nii\.gz|\.nii|\.h5|\.hdf5|\.npy\.h5|\.npz|\.mrk\.json)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: an ndarray field makes == ambiguous
class CaseGrid:
    """The voxel grid of one case, as import and export need it."""

    case: str
    shape: tuple[int, int, int]  # (Z, H, W) = NIfTI (k, j, i) sizes
    affine: np.ndarray | None  # 4x4, NIfTI voxel (i, j, k) -> RAS mm; None for sources without geometry
    spacing: tuple[float, float, float] | None  # (dz, dy, dx)
    files: tuple[str, ...] = ()  # files[0] is the image (the .h5 file for wsl4mis-h5)

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise DataError(f"case {self.case}: expected a 3D (Z, H, W) shape, found {self.shape}")
        object.__setattr__(self, "shape", shape)
        if self.affine is not None:
            affine = np.asarray(self.affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.isfinite(affine).all():
                raise DataError(f"case {self.case}: expected a finite 4x4 affine, found {affine.shape}")
            object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))

    @classmethod
    def from_geometry(cls, case: str, geometry, files: Sequence[str] = ()) -> "CaseGrid":
        """From a :class:`~pscv_dist.data.volume_io.Geometry` (``nifti_geometry(image)``)."""
        return cls(case, tuple(geometry.shape), geometry.affine, geometry.spacing, tuple(files))

    def world_affine(self) -> np.ndarray:
        """Voxel (i, j, k) -> world mm: the NIfTI affine (RAS) when there is one; otherwise
        ``diag(dx, dy, dz, 1)`` from the spacing (origin at voxel 0, axes along i, j, k); otherwise
        the identity (world "mm" = voxel indices, as for the WSL4MIS .h5 volumes)."""
        if self.affine is not None:
            return self.affine.copy()
        if self.spacing is not None:
            dz, dy, dx = (float(s) for s in self.spacing)
            return np.diag([dx, dy, dz, 1.0])
        return np.eye(4)

    @property
    def image(self) -> str:
        return self.files[0] if self.files else f"case {self.case}"


@dataclasses.dataclass
class Annotation:
    """The imported annotation of one case (the annotation of record)."""

    case: str
    points: np.ndarray  # int32 (n, 4): (class, z, y, x), store (Z, H, W) order; unique rows, sorted
    source: dict  # {"format", "file", "sha256", ...}; "key" for h5-key
    duplicates: int  # points dropped as exact duplicates after rounding to voxels

    def counts(self, n_classes: int) -> list[int]:
        """Annotated voxels per class."""
        return np.bincount(self.points[:, 0], minlength=n_classes).astype(int).tolist()


class ClassNames:
    """Class lookup: the exact name first, then the name case-insensitively (unique match only)."""

    def __init__(self, classes: Sequence[str]):
        self.classes = [str(c) for c in classes]
        self._exact = {c: i for i, c in enumerate(self.classes)}
        self._folded: dict[str, list[int]] = {}
        for i, c in enumerate(self.classes):
            self._folded.setdefault(c.casefold(), []).append(i)

    def __len__(self) -> int:
        return len(self.classes)

    def known(self) -> str:
        return "known classes: " + (", ".join(f"{i}={c}" for i, c in enumerate(self.classes)) or "none")

    def name(self, text: str) -> int | None:
        if text in self._exact:
            return self._exact[text]
        hits = self._folded.get(text.casefold(), [])
        return hits[0] if len(hits) == 1 else None

    def label(self, label: str) -> int | None:
        """A Slicer control point label: ``<class>`` or ``<class>-<number>`` (``%N-%d``)."""
        label = label.strip()
        stem, dash, number = label.rpartition("-")
        stem = stem.strip() if dash and stem.strip() and number.isascii() and number.isdigit() else None
        for candidate in (label, stem):  # exact first (a class may itself end in -<digits>)
            if candidate is not None and candidate in self._exact:
                return self._exact[candidate]
        for candidate in (label, stem):
            if candidate is not None and (hit := self.name(candidate)) is not None:
                return hit
        return None

    def name_or_index(self, text: str) -> int | None:
        text = text.strip()
        hit = self.name(text)
        if hit is None and re.fullmatch(r"[+]?\d+", text) and int(text) < len(self.classes):
            hit = int(text)
        return hit


def strip_suffix(name: str) -> str:
    return _SOURCE_SUFFIXES.sub("", name)


class CaseNames:
    """An annotation's case name -> the case: the case name itself, else the name of its image file
    without extension (``Prostatex_0000`` for the case ``Prostatex`` of the nifti layout)."""

    def __init__(self, grids: dict[str, CaseGrid]):
        self.grids = grids
        self.alias = {case: case for case in grids}
        for case, grid in grids.items():
            if grid.files:
                self.alias.setdefault(strip_suffix(Path(grid.files[0]).name), case)

    def resolve(self, name: str, where: str) -> str:
        if name in self.alias:
            return self.alias[name]
        close = difflib.get_close_matches(name, list(self.alias), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        examples = ", ".join(list(self.grids)[:3]) + (", ..." if len(self.grids) > 3 else "")
        raise DataError(f"{where}: annotation for case {name!r}, but the source has no image for it "
                        f"({len(self.grids)} case(s): {examples}){hint}")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def world_to_voxel(grid: CaseGrid, ras: np.ndarray, where: str) -> np.ndarray:
    """RAS mm (n, 3) -> nearest voxel (n, 3) as NIfTI (i, j, k), int64 (``np.rint``)."""
    try:
        inverse = np.linalg.inv(grid.world_affine())
    except np.linalg.LinAlgError:
        raise DataError(f"{where}: the image {grid.image} has a singular affine; world positions "
                        f"cannot be mapped to voxels") from None
    ras = np.asarray(ras, dtype=np.float64).reshape(-1, 3)
    ijk = ras @ inverse[:3, :3].T + inverse[:3, 3]
    return np.rint(ijk).astype(np.int64)


def voxel_to_world(grid: CaseGrid, points: np.ndarray) -> np.ndarray:
    """Store points (n, 4) (class, z, y, x) -> RAS mm (n, 3) of the voxel centres."""
    ijk = points[:, [3, 2, 1]].astype(np.float64)
    affine = grid.world_affine()
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def lps_to_ras(xyz: np.ndarray) -> np.ndarray:
    """LPS <-> RAS (its own inverse): negate the first two axes."""
    out = np.array(xyz, dtype=np.float64, copy=True).reshape(-1, 3)
    out[:, :2] *= -1
    return out


class Lazy:
    """``where[i]`` formatted on demand: only the point an error names is ever described."""

    def __init__(self, describe: Callable[[int], str]):
        self.describe = describe

    def __getitem__(self, i: int) -> str:
        return self.describe(i)


def finalize(case: str, grid: CaseGrid, classes: np.ndarray, zyx: np.ndarray, source: dict,
             where: Sequence[str] | Lazy | None = None, presorted: bool = False) -> Annotation:
    """Check every point is inside the volume (the first outside one is named by ``where[i]``),
    drop exact duplicates (counted) and sort. ``presorted``: already unique and sorted, inside."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    zyx = np.asarray(zyx, dtype=np.int64).reshape(-1, 3)
    points = np.column_stack([classes, zyx]) if len(classes) else np.zeros((0, 4), np.int64)
    if presorted:
        return Annotation(case, points.astype(np.int32), source, 0)
    outside = ((zyx < 0) | (zyx >= np.asarray(grid.shape))).any(axis=1)
    if outside.any():
        i = int(np.argmax(outside))
        z, y, x = (int(v) for v in zyx[i])
        Z, H, W = grid.shape
        what = where[i] if where is not None else f"case {case}: point {i + 1}"
        raise DataError(f"{what}: lands on voxel (i, j, k) = ({x}, {y}, {z}), outside the volume "
                        f"of {W} x {H} x {Z} voxels (i, j, k) of {grid.image}")
    # inside the volume now: one int64 key per voxel, per (class, voxel) (np.unique on 1-D is fast)
    voxel = np.ravel_multi_index(tuple(zyx.T), grid.shape) if len(zyx) else np.zeros(0, np.int64)
    keys = np.unique(classes * int(np.prod(grid.shape)) + voxel)
    c, v = np.divmod(keys, int(np.prod(grid.shape)))
    unique = np.column_stack([c, *np.unravel_index(v, grid.shape)]).astype(np.int32)
    conflicts = int((np.unique(v, return_counts=True)[1] > 1).sum())  # voxels with two classes or more
    if conflicts:
        source = {**source, "conflicts": conflicts}  # voxels given two classes: kept, reported
    return Annotation(case, unique, source, int(len(points) - len(unique)))


def check_class_indices(annotation: Annotation, classes: "ClassNames") -> None:
    c = annotation.points[:, 0]
    bad = c[(c < 0) | (c >= len(classes))]
    if len(bad):
        raise DataError(f"case {annotation.case}: class index {int(bad[0])} in {len(bad)} point(s) is not "
                        f"a class of the dataset; {classes.known()}")


def check_inside(annotation: Annotation, grid: CaseGrid) -> None:
    zyx = annotation.points[:, 1:]
    outside = ((zyx < 0) | (zyx >= np.asarray(grid.shape))).any(axis=1)
    if outside.any():
        z, y, x = (int(v) for v in zyx[int(np.argmax(outside))])
        Z, H, W = grid.shape
        raise DataError(f"case {annotation.case}: {int(outside.sum())} point(s) outside the volume, e.g. voxel "
                        f"(i, j, k) = ({x}, {y}, {z}) in {W} x {H} x {Z} voxels (i, j, k) of {grid.image}")


def refuse_existing(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise DataError(f"{path}: already exists; export never overwrites (choose a new output, or "
                            f"remove it yourself)")


