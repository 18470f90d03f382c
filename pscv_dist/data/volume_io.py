"""Reading and writing the file formats volumes arrive in (NIfTI, HDF5, NPZ), with errors that name
the file. Arrays come back in the store's (Z, H, W) order.

NIfTI arrays are (i, j, k) = (x, y, z); we store them as (k, j, i) = (Z, H, W) and keep the affine of
the source untouched, so a prediction written back with :func:`write_nifti_like` has the input's
exact geometry. No reorientation is applied (nnU-Net's choice too): slices are the file's k-planes.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

import numpy as np

from ..errors import DataError  # noqa: F401  (re-exported: the data package's error)


@dataclasses.dataclass
class Geometry:
    shape: tuple[int, ...]  # (Z, H, W)
    spacing: tuple[float, float, float] | None  # (dz, dy, dx)
    affine: np.ndarray | None  # 4x4, NIfTI (i, j, k) convention


def check_file(path: str | os.PathLike) -> None:
    """Refuse a path that cannot be a readable file, naming why in the user's terms: a symlink
    loop, a dangling link or missing file, a folder (readers otherwise say "no such file" for all)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{path}: symlink loop (the link points back to itself)") from None
        if os.path.islink(path):
            raise DataError(f"{path}: dangling symlink (its target {os.readlink(path)!r} does not exist)") from None
        if exc.errno == errno.ENOENT:
            raise DataError(f"{path}: file not found") from None
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a folder, expected a file")


def _nifti(path: Path):
    import nibabel as nib

    check_file(path)
    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None


def nifti_geometry(path: str | os.PathLike) -> Geometry:
    """Geometry from the header alone (cheap: no voxel data is read)."""
    img = _nifti(Path(path))
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, found shape {shape}")
    if 0 in shape:
        raise DataError(f"{path}: empty volume (shape {shape})")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    return Geometry(shape=(shape[2], shape[1], shape[0]), spacing=(zooms[2], zooms[1], zooms[0]),
                    affine=np.asarray(img.affine, dtype=np.float64))


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Voxel data as (Z, H, W) and its geometry. Truncated or corrupt files raise :class:`DataError`."""
    geom = nifti_geometry(path)
    img = _nifti(Path(path))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError on truncated gzip
        raise DataError(f"{path}: voxel data could not be read, file truncated or corrupt "
                        f"({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0))), geom


def write_nifti_like(array_zhw: np.ndarray, reference: str | os.PathLike, out: str | os.PathLike) -> None:
    """Write a (Z, H, W) uint8 label volume with the reference file's affine and header geometry,
    atomically (temp file + rename)."""
    import nibabel as nib

    ref = _nifti(Path(reference))
    data = np.transpose(np.asarray(array_zhw, dtype=np.uint8), (2, 1, 0))
    if data.shape != tuple(ref.shape[:3]):
        raise DataError(f"{out}: prediction shape {data.shape} does not match {reference} {ref.shape[:3]}")
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0  # labels are stored unscaled
    img = nib.Nifti1Image(data, ref.affine, header)
    img.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
    img.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
    save_atomic(img, out)


def write_nifti(array_zhw: np.ndarray, spacing_zhw, out: str | os.PathLike, dtype=np.float32) -> None:
    """Write a (Z, H, W) array as a NIfTI with a diagonal affine of the given spacing, atomically."""
    import nibabel as nib

    dz, dy, dx = spacing_zhw
    img = nib.Nifti1Image(np.transpose(np.asarray(array_zhw, dtype=dtype), (2, 1, 0)),
                          np.diag([dx, dy, dz, 1.0]))
    img.header.set_zooms((dx, dy, dz))
    save_atomic(img, out)


def save_atomic(img, out: str | os.PathLike) -> None:
    import nibabel as nib

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}" + "".join(out.suffixes))
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_keys(path, keys, kind: str, opener, names) -> dict[str, np.ndarray]:
    """Read ``keys`` from an HDF5 / NPZ file, with one error vocabulary for both."""
    check_file(path)
    try:
        with opener(path) as f:
            found = names(f)
            missing = [k for k in keys if k not in found]
            if missing:
                raise DataError(f"{path}: missing key(s) {missing}; expected {list(keys)}, found {sorted(found)}")
            return {k: np.asarray(f[k][()]) for k in keys}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable {kind} file ({type(exc).__name__}: {exc})") from None


def read_h5(path: str | os.PathLike, keys=("image", "label")) -> dict[str, np.ndarray]:
    import h5py

    return _read_keys(path, keys, "HDF5", lambda p: h5py.File(p, "r"), lambda f: list(f.keys()))


def read_npz(path: str | os.PathLike, keys=("image", "label")) -> dict[str, np.ndarray]:
    return _read_keys(path, keys, "NPZ", np.load, lambda f: list(f.files))
