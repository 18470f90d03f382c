"""Integrity checks run on every case before anything of it is written (nnU-Net's
``verify_dataset_integrity``, raising instead of printing)."""
from __future__ import annotations

import numpy as np

from .sources import CaseSource, CaseVolume
from .volume_io import DataError

SPACING_RTOL = 1e-4
AFFINE_ATOL = 1e-4


def check_case(source: CaseSource, vol: CaseVolume, num_label_values: int) -> None:
    """Raise :class:`DataError` naming the file when the case is unusable.

    Checks: 3D non-empty volumes, image/label shapes equal, numeric image dtype, finite image,
    integer-valued label within 0..num_label_values-1, equal spacing and affine in both headers.
    """
    img_file, lab_file = source.files[0], source.files[-1]
    image, label = vol.image, vol.label
    if image.ndim != 3:
        raise DataError(f"{img_file}: expected a 3D image, found {image.ndim}D with shape {image.shape}")
    if label.ndim != 3:
        raise DataError(f"{lab_file}: expected a 3D label, found {label.ndim}D with shape {label.shape}")
    if image.size == 0 or 0 in image.shape:
        raise DataError(f"{img_file}: empty volume (shape {image.shape})")
    if image.shape != label.shape:
        raise DataError(f"{lab_file}: label shape {label.shape} does not match image shape {image.shape} ({img_file})")
    if image.dtype.kind not in "uif":
        raise DataError(f"{img_file}: expected a numeric image dtype, found {image.dtype}")
    if label.dtype.kind not in "uif":
        raise DataError(f"{lab_file}: expected an integer label dtype, found {label.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{img_file}: {bad} voxel(s) are NaN or inf; expected finite intensities")
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise DataError(f"{lab_file}: label values must be integers, found non-integer floats")
    lo, hi = label.min(), label.max()
    if lo < 0 or hi >= num_label_values:
        found = sorted(int(v) for v in np.unique(label) if v < 0 or v >= num_label_values)[:10]
        raise DataError(f"{lab_file}: label values must be in 0..{num_label_values - 1}, found {found}")
    ig, lg = vol.image_geometry, vol.label_geometry
    if ig.spacing is not None and lg.spacing is not None:
        if not np.allclose(ig.spacing, lg.spacing, rtol=SPACING_RTOL, atol=0):
            raise DataError(f"{lab_file}: spacing {tuple(lg.spacing)} does not match the image's {tuple(ig.spacing)} ({img_file})")
    if ig.affine is not None and lg.affine is not None:
        if not np.allclose(ig.affine, lg.affine, rtol=0, atol=AFFINE_ATOL):
            raise DataError(f"{lab_file}: affine differs from the image's ({img_file}); "
                            f"max difference {np.abs(ig.affine - lg.affine).max():.3g}")


class EmptyCase(DataError):
    """A case with nothing to learn from (all-zero image, or a label with no foreground): refused,
    or skipped with a warning under ``--skip-empty``."""


def check_not_empty(source: CaseSource, image: np.ndarray, label: np.ndarray | None) -> None:
    """An all-zero image or an all-background label is almost always a broken export (an empty
    mask file, a failed conversion); training on it teaches nothing or teaches "background"."""
    img_file, lab_file = source.files[0], source.files[-1]
    if not np.any(image):
        raise EmptyCase(f"{img_file}: image of case {source.case!r} is all zero; expected some signal "
                        f"(fix or remove the case, or pass --skip-empty to skip such cases)")
    if label is not None and not np.any(label):
        raise EmptyCase(f"{lab_file}: label of case {source.case!r} is all background (no class to click); "
                        f"expected some foreground (fix or remove the case, or pass --skip-empty)")


def check_normalized(source: CaseSource, image: np.ndarray) -> None:
    """For pre-normalised layouts: the image must already lie in [0, 1]."""
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise DataError(f"{source.files[0]}: this layout is pre-normalised, expected intensities in [0, 1], "
                        f"found [{lo:.4g}, {hi:.4g}]")
