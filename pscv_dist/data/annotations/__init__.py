"""Real annotations (clicks and scribbles) read from the files annotators make, and written back.

Formats (:data:`FORMATS`)
-------------------------
``slicer``
    A folder of 3D Slicer markups, ``<case>.mrk.json``: point lists (``"type": "Fiducial"``) whose
    control point ``label`` names the class, optionally followed by ``-<number>`` (Slicer's default
    ``%N-%d`` label of a point list named after the class). The class name is matched exactly, then
    case-insensitively. Other markup types (Line, Angle, Curve, ClosedCurve, Plane, ROI) are refused.
``nifti``
    A folder of sparse label maps, ``<case>.nii.gz`` / ``<case>.nii``, on the image's grid (same
    shape; same affine within 1e-4): a voxel holding a class index is annotated, every other voxel
    holds the ignore value (default 255). Scribbles are sparse maps too.
``csv``
    One file, header ``case,class,i,j,k`` (NIfTI voxel indices) or ``case,class,x,y,z,space``
    (world mm; ``space`` RAS or LPS per row); ``class`` by name or integer index.
``h5-key``
    A key of each case's HDF5 file (``--clicks scribble`` for the WSL4MIS ACDC volumes): a sparse
    map in store order; the ignore value defaults to the number of classes (4 for ACDC).

Coordinate conventions
----------------------
* **Store order.** An annotation is ``points``, int32 (n, 4) rows of ``(class, z, y, x)`` indexing
  the store's (Z, H, W) volume, unique and sorted. For a NIfTI image (Z, H, W) is the file's
  (k, j, i): ``z = k, y = j, x = i``, with no reorientation (slices are the file's k-planes). HDF5
  keys are already (Z, H, W).
* **Voxel indices** (CSV ``i, j, k``) are NIfTI's: ``i`` runs along the first axis of the NIfTI
  array (the store's W), ``k`` along the third (the store's Z). An integer index is a voxel centre.
* **World** positions are millimetres, RAS (NIfTI: +x right, +y anterior, +z superior) or LPS
  (DICOM, and Slicer's markups default: +x left, +y posterior, +z superior). ``LPS = (-x, -y, z)`` of
  RAS; a markups file without ``coordinateSystem`` is LPS (Slicer's schema default).
* **Voxel -> world**: ``RAS = A @ (i, j, k, 1)``, where ``A`` is :meth:`CaseGrid.world_affine`: the
  image's NIfTI affine (as nibabel reads it, oblique ones included) when it has one; otherwise
  ``diag(dx, dy, dz, 1)`` from the voxel spacing; otherwise the identity (the WSL4MIS .h5 volumes
  have no geometry: there "mm" are voxel indices).
* **World -> voxel**: ``(i, j, k) = rint(inv(A) @ RAS)``, the nearest voxel centre (ties go to the
  even index, as ``np.rint``). A point that rounds to a voxel outside the volume is refused, naming
  the file, the point and the voxel found against the volume's size.
* **Export** writes voxel centres: Slicer markups in LPS (one point list per case, labels
  ``<class>-<n>`` counted per class), CSV ``case,class,i,j,k`` with class names, NIfTI uint8 maps
  with affine ``A`` (sform and qform code 1) and the ignore value elsewhere. Import of an export
  gives the same points, for every format.

Cases and bookkeeping
---------------------
* An annotation file ``<name>.mrk.json`` / ``<name>.nii.gz`` (or a CSV ``case``) names a case by
  the case name or by its image file's name without extension (``Prostatex_0000`` for the case
  ``Prostatex`` of the nifti layout). A name matching no case, or two files for one case, is refused.
* Without ``partial``, every case must have an annotation with at least one point; a file
  holding no point counts as no annotation.
* Exact duplicates after rounding are dropped and counted (:attr:`Annotation.duplicates`); one
  voxel given two classes is kept (an annotator's disagreement) and counted in
  ``source["conflicts"]``. ``source`` records the format, file, its SHA-256 (the CSV's for every
  case, the .h5 file's for ``h5-key``), and ``key`` / ``ignore`` where they apply.
* Export writes through a temporary file and a rename, refuses to overwrite any existing file, and
  deletes nothing.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ...files import write_atomic
from ..volume_io import check_file, save_atomic
from . import csvio, slicer, sparse
from .core import (EXPORT_FORMATS, FORMATS, Annotation, CaseGrid, CaseNames, ClassNames, check_class_indices,
                   check_inside, refuse_existing)

__all__ = ["FORMATS", "EXPORT_FORMATS", "CaseGrid", "Annotation", "detect_format", "import_annotations",
           "export_annotations"]

_WHAT = "expected a folder of 3D Slicer markups (*.mrk.json), a folder of sparse NIfTI maps (*.nii, *.nii.gz) " \
        "or a .csv file"
_HINTS = {".fcsv": "legacy Slicer .fcsv files: save the point lists as .mrk.json",
          ".json": ".json files: Slicer markups must be named <case>.mrk.json",
          ".h5": ".h5 files: for a key of the source's HDF5 files use --clicks-format h5-key --clicks KEY"}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".mrk.json", ".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower() or "(no extension)"


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def detect_format(clicks: str | Path) -> str:
    """``slicer``, ``nifti`` or ``csv`` from what ``clicks`` is (``h5-key`` is a key name, never detected)."""
    path = Path(clicks)
    if path.is_dir():
        files = _visible_files(path)
        kinds = {_suffix(p) for p in files}
        has_mrk, has_nii = ".mrk.json" in kinds, bool(kinds & {".nii", ".nii.gz"})
        if has_mrk and has_nii:
            raise DataError(f"{path}: holds both Slicer markups (*.mrk.json) and NIfTI maps; pass --clicks-format "
                            f"slicer or nifti")
        if has_mrk or has_nii:
            return "slicer" if has_mrk else "nifti"
        found = ", ".join(f"{sum(_suffix(p) == k for p in files)} {k}" for k in sorted(kinds)) or "no files"
        hints = "; ".join(_HINTS[k] for k in sorted(kinds) if k in _HINTS)
        raise DataError(f"{path}: {_WHAT}; found a folder with {found}" + (f" ({hints})" if hints else ""))
    if path.is_file():
        if path.name.lower().endswith(".csv"):
            return "csv"
        hint = _HINTS.get(_suffix(path), "")
        raise DataError(f"{path}: {_WHAT}; found a {_suffix(path)} file" + (f" ({hint})" if hint else ""))
    try:
        check_file(path)  # names a dangling link or a symlink loop
    except DataError as exc:
        raise DataError(f"{exc}; {_WHAT} (or a key name with --clicks-format h5-key)") from None
    raise DataError(f"{path}: {_WHAT}; found something else")


def _folder_cases(folder: Path, fmt: str, cases: CaseNames) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: --clicks-format {fmt} expects a folder of "
                        f"{'*.mrk.json' if fmt == 'slicer' else '*.nii / *.nii.gz'} files, found "
                        f"{'a file' if folder.exists() else 'nothing'}")
    if fmt == "slicer":
        files = [p for p in _visible_files(folder) if p.name.lower().endswith(slicer.SUFFIX)]
        name_of = slicer.case_name
    else:
        files = [p for p in _visible_files(folder) if sparse.NIFTI_SUFFIX.search(p.name)]
        name_of = sparse.case_name
    if not files:
        raise DataError(f"{folder}: no {'*.mrk.json' if fmt == 'slicer' else '*.nii / *.nii.gz'} files found")
    found: dict[str, Path] = {}
    for path in files:
        case = cases.resolve(name_of(path), str(path))
        if case in found:
            raise DataError(f"{path}: a second annotation for case {case!r} (the first is {found[case]}); keep one")
        found[case] = path
    return found


def _refuse_missing(clicks, grids: dict, have, empty: set, partial: bool) -> None:
    missing = [c for c in grids if c not in have or c in empty]
    if partial or not missing:
        return
    listed = ", ".join(f"{c} (no annotated point)" if c in empty else c for c in missing[:5])
    more = ", ..." if len(missing) > 5 else ""
    raise DataError(f"{clicks}: {len(missing)} of {len(grids)} case(s) have no annotation: {listed}{more}; "
                    f"annotate them, or pass --clicks-partial to simulate their clicks from their dense labels")


def import_annotations(clicks: str | Path, fmt: str | None, grids: dict[str, CaseGrid], classes: list[str], *,
                       ignore: int | None = None, partial: bool = False) -> dict[str, Annotation]:
    """The annotations of the cases in ``grids`` that have one (in ``grids`` order).

    ``clicks``: the folder or CSV file, or for ``h5-key`` the key name read from each
    ``grids[case].files[0]``. ``fmt`` None: :func:`detect_format`. ``ignore`` (sparse maps only):
    the "not annotated" value, default 255 for ``nifti`` and ``len(classes)`` for ``h5-key``.
    Without ``partial`` a case with no annotation (or an empty one) is refused; with it, it is
    left out of the result (and, for ``h5-key``, a file without the key is such a case)."""
    fmt = fmt or detect_format(clicks)
    if fmt not in FORMATS:
        raise DataError(f"{clicks}: unknown clicks format {fmt!r}; expected one of {', '.join(FORMATS)}")
    names = ClassNames(classes)
    cases = CaseNames(grids)
    result: dict[str, Annotation] = {}
    if fmt in ("slicer", "nifti"):
        files = _folder_cases(Path(clicks), fmt, cases)
        _refuse_missing(clicks, grids, files, set(), partial)
        if fmt == "nifti":
            ignore = 255 if ignore is None else ignore
            sparse.check_ignore(ignore, names, str(clicks))
        for case in grids:
            if case in files:
                if fmt == "slicer":
                    result[case] = slicer.read_markups(files[case], case, grids[case], names)
                else:
                    result[case] = sparse.read_sparse_nifti(files[case], case, grids[case], names, ignore)
    elif fmt == "csv":
        path = Path(clicks)
        if path.is_dir():
            raise DataError(f"{path}: --clicks-format csv expects a .csv file, found a folder")
        read = csvio.read_csv(path, grids, cases, names)
        result = {case: read[case] for case in grids if case in read}
    else:  # h5-key
        key = str(clicks)
        ignore = len(names) if ignore is None else ignore
        sparse.check_ignore(ignore, names, f"--clicks {key}")
        for case, grid in grids.items():
            if partial and grid.files and not sparse.h5_has_key(grid.files[0], key):
                continue
            result[case] = sparse.read_h5_key(case, grid, key, names, ignore)
    empty = {case for case, a in result.items() if not len(a.points)}
    _refuse_missing(clicks, grids, result, empty, partial)
    return {case: a for case, a in result.items() if case not in empty}


def export_annotations(annotations: dict[str, Annotation], grids: dict[str, CaseGrid], classes: list[str],
                       out: str | Path, fmt: str, *, ignore: int = 255) -> list[Path]:
    """Write ``annotations`` as ``fmt`` (slicer, csv or nifti) under ``out``; the paths written.

    slicer: ``out/<case>.mrk.json``; csv: ``out`` itself when it ends in .csv, else
    ``out/clicks.csv``; nifti: ``out/<case>.nii.gz`` (uint8, ``ignore`` where not annotated).
    Everything is checked before the first file is written; existing files are never overwritten."""
    if fmt not in EXPORT_FORMATS:
        raise DataError(f"{out}: cannot export clicks as {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    names = ClassNames(classes)
    for case, annotation in annotations.items():
        if case not in grids:
            raise DataError(f"{out}: case {case!r} has annotations but no grid to place them on")
        check_class_indices(annotation, names)
        check_inside(annotation, grids[case])
    out = Path(out)
    if fmt == "nifti":
        sparse.check_ignore(ignore, names, f"{out}: export")
        if not 0 <= ignore <= 255 or len(names) > 255:
            raise DataError(f"{out}: a uint8 map holds classes 0..254 and an ignore value 0..255; found "
                            f"{len(names)} classes and ignore {ignore}")
        for case, annotation in annotations.items():
            sparse.check_one_class_per_voxel(annotation, grids[case])
    if fmt == "csv":
        targets = {None: out if out.suffix.lower() == ".csv" else out / "clicks.csv"}
    else:
        suffix = slicer.SUFFIX if fmt == "slicer" else ".nii.gz"
        targets = {case: out / f"{case}{suffix}" for case in annotations}
    folder = (out.parent if fmt == "csv" and out.suffix.lower() == ".csv" else out)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: expected a folder to write the clicks into, found a file")
    refuse_existing(list(targets.values()))
    folder.mkdir(parents=True, exist_ok=True)
    for case, target in targets.items():
        if fmt == "csv":
            write_atomic(target, csvio.clicks_csv(annotations, names))
        elif fmt == "slicer":
            write_atomic(target, slicer.markups_json(annotations[case], grids[case], names))
        else:
            save_atomic(sparse.sparse_nifti_image(annotations[case], grids[case], ignore), target)
    return list(targets.values())
