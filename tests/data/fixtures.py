"""Small datasets in each supported on-disk layout, written by the tests themselves."""
from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np


def nearest_index(n_src: int, n_dst: int) -> np.ndarray:
    """Independent nearest-neighbour mapping: output pixel i samples source floor((i + 0.5) * n_src / n_dst)."""
    return np.minimum(((np.arange(n_dst) + 0.5) * n_src / n_dst).astype(int), n_src - 1)


def save_nifti(path: Path, xyz: np.ndarray, spacing=(1.0, 1.0, 2.0), affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([*spacing[:3], 1.0]) if affine is None else affine
    img = nib.Nifti1Image(xyz, aff)
    img.header.set_zooms(spacing)
    nib.save(img, str(path))
    return path


def blob_volume(rng, shape_xyz=(24, 20, 4), classes=4):
    """An (X, Y, Z) label with a square of each class and an image of class-dependent intensity."""
    label = np.zeros(shape_xyz, dtype=np.uint8)
    for k in range(1, classes):
        x0, y0 = rng.integers(0, shape_xyz[0] - 6), rng.integers(0, shape_xyz[1] - 6)
        label[x0:x0 + 5, y0:y0 + 5, :] = k
    image = (label * 100 + rng.normal(0, 5, shape_xyz)).astype(np.float32)
    return image, label


def write_acdc_raw(root: Path, patients=(1, 2, 3), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for p in patients:
        for frame in (1, 12):
            img, lab = blob_volume(rng)
            stem = f"patient{p:03d}_frame{frame:02d}"
            save_nifti(root / f"patient{p:03d}" / f"{stem}.nii.gz", img, (1.5, 1.5, 10.0))
            save_nifti(root / f"patient{p:03d}" / f"{stem}_gt.nii.gz", lab, (1.5, 1.5, 10.0))
        save_nifti(root / f"patient{p:03d}" / f"patient{p:03d}_4d.nii.gz", np.zeros((4, 4, 2, 3), np.float32), (1.5, 1.5, 10.0, 1.0))
    return root


def write_btcv(root: Path, numbers=(1, 5, 8), seed=0) -> Path:
    """Raw BTCV: labels use all 13 organ values; CT intensities in HU."""
    rng = np.random.default_rng(seed)
    for n in numbers:
        label = np.zeros((20, 20, 3), dtype=np.uint8)
        for raw in range(1, 14):
            label[(raw - 1) % 5 * 4:(raw - 1) % 5 * 4 + 3, (raw - 1) // 5 * 6:(raw - 1) // 5 * 6 + 3, :] = raw
        image = rng.uniform(-1000, 1000, size=label.shape).astype(np.int16)
        save_nifti(root / "img" / f"img{n:04d}.nii.gz", image, (0.8, 0.8, 3.0))
        save_nifti(root / "label" / f"label{n:04d}.nii.gz", label, (0.8, 0.8, 3.0))
    return root


def write_transunet(root: Path, seed=0) -> Path:
    """Preprocessed Synapse: case0005 (train, 3 slices of npz) and case0001 (test, one h5 volume)."""
    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir(parents=True)
    for s in range(3):
        label = rng.integers(0, 9, size=(16, 16)).astype(np.uint8)
        np.savez(root / "train_npz" / f"case0005_slice{s:03d}.npz", image=rng.random((16, 16)).astype(np.float32),
                 label=label)
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"] = rng.random((4, 16, 16)).astype(np.float32)
        f["label"] = rng.integers(0, 9, size=(4, 16, 16)).astype(np.float32)
    return root


def write_nifti_dataset(root: Path, n=2, seed=0, classes=("background", "a", "b", "c")) -> Path:
    import json

    rng = np.random.default_rng(seed)
    for i in range(n):
        img, lab = blob_volume(rng, classes=len(classes))
        save_nifti(root / "imagesTr" / f"case{i}_0000.nii.gz", img)
        save_nifti(root / "labelsTr" / f"case{i}.nii.gz", lab)
    (root / "dataset.json").write_text(json.dumps({"labels": {str(i): c for i, c in enumerate(classes)},
                                                   "modality": {"0": "MRI"}}))
    return root
