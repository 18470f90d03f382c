"""Synthetic phantoms: NIfTI volumes with organ-like structures, so the demo and the tests have data
on any machine.

Each phantom is a textured body ellipse holding three structures of distinct mean intensity,
texture and shape: a large smooth ``organ`` (liver-like), a ``wall`` ring (myocardium-like) and the
bright ``cavity`` it encloses (blood-pool-like). Positions, sizes and the bias field vary per case;
Rician-like noise is added; intensities are stored as int16 "scanner units" so the MR
normalisation is exercised. Written in the ``nifti`` layout (imagesTr / labelsTr / dataset.json).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from .volume_io import write_nifti

PHANTOM_CLASSES = ["background", "organ", "wall", "cavity"]
SPACING = (3.0, 1.5, 1.5)  # (dz, dy, dx) mm


def phantom(rng: np.random.Generator, shape=(12, 96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """One (Z, H, W) phantom: int16 image and uint8 label (0..3)."""
    z, h, w = shape
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    label = np.zeros(shape, dtype=np.uint8)
    body = (yy / 0.9) ** 2 + (xx / 0.95) ** 2 < 1
    # organ: large ellipsoid on one side, its extent shrinking towards the volume's ends
    oy, ox = rng.uniform(-0.25, 0.1), rng.uniform(-0.55, -0.35)
    ry, rx = rng.uniform(0.35, 0.5), rng.uniform(0.25, 0.35)
    organ = ((yy - oy) / ry) ** 2 + ((xx - ox) / rx) ** 2 + (zz / 1.3) ** 2 < 1
    # wall + cavity: a ring around a disc on the other side
    cy, cx = rng.uniform(-0.2, 0.2), rng.uniform(0.25, 0.45)
    r_in, thick = rng.uniform(0.14, 0.2), rng.uniform(0.07, 0.1)
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) * (1 + 0.3 * zz**2)
    cavity, wall = r < r_in, (r >= r_in) & (r < r_in + thick)
    label[organ & body], label[wall & body], label[cavity & body] = 1, 2, 3

    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1, 3, 3))
    texture /= texture.std() + 1e-8
    base = np.where(body, 0.30, 0.02) + 0.04 * texture * body
    base[label == 1] = 0.55 + 0.06 * texture[label == 1]
    base[label == 2] = 0.42 + 0.02 * texture[label == 2]
    base[label == 3] = 0.85 + 0.03 * texture[label == 3]
    bias = 1 + 0.15 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
    noisy = np.abs(base * bias + rng.normal(0, 0.04, shape) + 1j * rng.normal(0, 0.04, shape))
    return np.round(noisy * 1000).astype(np.int16), label


def write_phantoms(out: str | Path, n: int, seed: int = 0, shape=(12, 96, 96)) -> Path:
    """Write ``n`` phantoms ``phantom_NNN`` into ``out`` (nifti layout); returns ``out``."""
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, label = phantom(np.random.default_rng([seed, i]), shape)
        write_nifti(image, SPACING, out / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz", dtype=np.int16)
        write_nifti(label, SPACING, out / "labelsTr" / f"phantom_{i:03d}.nii.gz", dtype=np.uint8)
    meta = {"name": "pscv-phantoms", "modality": {"0": "MRI"},
            "labels": {str(i): c for i, c in enumerate(PHANTOM_CLASSES)}, "numTraining": n}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out
