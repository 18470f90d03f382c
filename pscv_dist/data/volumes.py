"""Array operations on volumes: intensity normalisation, slice resizing and point labels.

All pure functions of numpy arrays (Z, H, W); the writer and the predictor share them, so training
and inference see identical preprocessing.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

CT_WINDOW = (-125.0, 275.0)
MR_CLIP_PERCENTILE = 99.0
NORMALIZATIONS = ("mr", "ct", "none")


def normalize_intensity(image: np.ndarray, mode: str) -> np.ndarray:
    """Normalise a volume to [0, 1] as METHOD.md fixes it.

    - ``mr``: clip at the volume's 99th percentile, then min-max to [0, 1] (ACDC protocol).
    - ``ct``: clip Hounsfield units to [-125, 275], then min-max to [0, 1] (Synapse protocol).
    - ``none``: the source is already normalised (WSL4MIS h5, TransUNet npz); returned as float32.

    A constant volume maps to zeros rather than dividing by zero.
    """
    x = np.asarray(image, dtype=np.float32)
    if mode == "none":
        return x
    if mode == "mr":
        x = np.minimum(x, np.percentile(x, MR_CLIP_PERCENTILE).astype(np.float32))
    elif mode == "ct":
        x = np.clip(x, *CT_WINDOW).astype(np.float32)
    else:
        raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (Z, H, W) float volume, slice by slice, to (Z, *size)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[:, None]
    if tuple(t.shape[-2:]) == tuple(size):
        return t[:, 0].numpy().copy()
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of a (Z, H, W) label volume: output pixel i takes source floor((i+0.5)·H/S)."""
    arr = np.ascontiguousarray(label)
    if tuple(arr.shape[-2:]) == tuple(size):
        return arr.copy()
    t = torch.from_numpy(arr.astype(np.int16))[:, None].float()
    out = F.interpolate(t, size=tuple(size), mode="nearest-exact")
    return out[:, 0].round().numpy().astype(arr.dtype)


def point_rng(seed: int, case: str, z: int) -> np.random.Generator:
    """The generator of one slice's clicks: depends on (seed, case id, z) only, so the clicks do not
    change with the worker count, the case order or a ``--cases`` subset."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode()), int(z)])


def point_labels(
    label: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    per_class: int = 1,
    include_background: bool = True,
) -> np.ndarray:
    """Point label of one (H, W) slice: ``ignore_index`` (= num_classes) everywhere except
    ``per_class`` pixels drawn uniformly (without replacement) from each present class."""
    points = np.full(label.shape, num_classes, dtype=np.uint8)
    flat = label.reshape(-1)
    for k in range(0 if include_background else 1, num_classes):
        where = np.flatnonzero(flat == k)
        if where.size == 0:
            continue
        picks = rng.choice(where, size=min(per_class, where.size), replace=False)
        points.reshape(-1)[picks] = k
    return points


def volume_points(label: np.ndarray, case: str, num_classes: int, points_cfg: dict[str, Any]) -> np.ndarray:
    """Point labels for every slice of a resized (Z, S, S) label volume."""
    return np.stack(
        [
            point_labels(
                label[z],
                num_classes,
                point_rng(points_cfg["seed"], case, z),
                per_class=points_cfg["per_class"],
                include_background=points_cfg["include_background"],
            )
            for z in range(label.shape[0])
        ]
    )
