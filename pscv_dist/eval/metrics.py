"""3D segmentation metrics as the literature computes them: Dice and HD95 (medpy's definition).

HD95 (medpy.metric.binary.hd95): surface voxels are the mask minus its erosion by the
connectivity-1 structuring element (voxels on the array border count as surface); the distances
from each surface voxel of one mask to the nearest surface voxel of the other are computed with
an exact Euclidean distance transform in ``spacing`` units, both directions are pooled, and the
95th percentile (linear interpolation) is taken.

Empty masks, per foreground class of a case (METHOD.md), with ``d`` the volume's diagonal:

=================  ====================  ==========================
pred / gt          ``strict`` (default)   ``literature`` (TransUNet)
=================  ====================  ==========================
both non-empty     computed               computed
both empty         skipped (None)         DSC 0, HD95 0
pred empty only    DSC 0, HD95 d          DSC 0, HD95 0
gt empty only      DSC 0, HD95 d          DSC 1, HD95 0
=================  ====================  ==========================
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import ConfigError

CONVENTIONS = ("strict", "literature")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P| + |G|) of two boolean masks (1.0 when both are empty)."""
    p, g = pred.astype(bool), gt.astype(bool)
    denom = p.sum() + g.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(p, g).sum() / denom)


def _surface(mask: np.ndarray) -> np.ndarray:
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing=None) -> np.ndarray:
    """Distances from every surface voxel of ``a`` to the surface of ``b`` (both non-empty)."""
    a, b = a.astype(bool), b.astype(bool)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    dt = ndimage.distance_transform_edt(~_surface(b), sampling=spacing)
    return dt[_surface(a)]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing=None) -> float:
    """Symmetric 95% Hausdorff distance, pooled over both directions (medpy)."""
    return float(np.percentile(np.hstack([surface_distances(pred, gt, spacing), surface_distances(gt, pred, spacing)]), 95))


def diagonal(shape, spacing=None) -> float:
    sp = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=float)
    return float(math.sqrt(float(np.sum((np.asarray(shape) * sp) ** 2))))


def class_metrics(pred: np.ndarray, gt: np.ndarray, convention: str = "strict", spacing=None) -> dict[str, Any] | None:
    """Dice, HD95 in voxels and (with ``spacing``) in mm for one class of one case; None = skipped.
    ``empty`` says which mask was empty ("pred", "gt", "both" or None)."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    p, g = pred.astype(bool), gt.astype(bool)
    has_p, has_g = bool(p.any()), bool(g.any())
    out: dict[str, Any]
    if has_p and has_g:
        out = {"dsc": dice(p, g), "hd95": hd95(p, g), "empty": None}
        if spacing is not None:
            out["hd95_mm"] = hd95(p, g, spacing)
        return out
    empty = "both" if not (has_p or has_g) else ("pred" if not has_p else "gt")
    if convention == "strict":
        if empty == "both":
            return None
        out = {"dsc": 0.0, "hd95": diagonal(p.shape), "empty": empty}
        if spacing is not None:
            out["hd95_mm"] = diagonal(p.shape, spacing)
        return out
    out = {"dsc": 1.0 if empty == "gt" else 0.0, "hd95": 0.0, "empty": empty}
    if spacing is not None:
        out["hd95_mm"] = 0.0
    return out


def case_metrics(pred: np.ndarray, gt: np.ndarray, classes: list[str], convention: str = "strict",
                 spacing=None) -> dict[str, Any]:
    """Per foreground class (names from ``classes``, background first) of one case."""
    return {name: class_metrics(pred == k, gt == k, convention, spacing) for k, name in enumerate(classes) if k > 0}


def summarize(per_case: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Class averages over cases (skipped entries left out), then the mean over classes."""
    per_class: dict[str, dict[str, float | None]] = {}
    empty_pred = 0
    for name in classes[1:]:
        vals = [c[name] for c in per_case if c.get(name) is not None]
        empty_pred += sum(v["empty"] == "pred" for v in vals)
        entry: dict[str, float | None] = {
            "dsc": float(np.mean([v["dsc"] for v in vals])) if vals else None,
            "hd95": float(np.mean([v["hd95"] for v in vals])) if vals else None,
            "n": len(vals),
        }
        if vals and all("hd95_mm" in v for v in vals):
            entry["hd95_mm"] = float(np.mean([v["hd95_mm"] for v in vals]))
        per_class[name] = entry
    scored = [v for v in per_class.values() if v["dsc"] is not None]
    out = {
        "mean_dsc": float(np.mean([v["dsc"] for v in scored])) if scored else None,
        "mean_hd95": float(np.mean([v["hd95"] for v in scored])) if scored else None,
        "per_class": per_class,
        "n_empty_prediction": int(empty_pred),
    }
    if scored and all("hd95_mm" in v for v in scored):
        out["mean_hd95_mm"] = float(np.mean([v["hd95_mm"] for v in scored]))
    return out


def check_edge_filter(pixels: int, widths: dict[str, int]) -> None:
    """The Synapse edge filter must leave some columns: ``0 <= pixels`` and ``2 · pixels < W`` for the
    native width W of every volume in ``widths`` ({description: W}, e.g. ``{"case 'p01'": 232}``).

    Raises:
        ConfigError: naming ``--edge-filter``, the narrowest case and the largest allowed value.
    """
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 0:
        raise ConfigError(f"--edge-filter: expected a number of pixels >= 0, found {pixels!r}")
    if pixels and widths:
        where, w = min(widths.items(), key=lambda item: item[1])
        if 2 * pixels >= w:
            raise ConfigError(f"--edge-filter {pixels}: would set the whole width of {where} ({w} pixels) to "
                              f"background; expected at most {(w - 1) // 2}")


def edge_filter(pred: np.ndarray, pixels: int) -> np.ndarray:
    """Synapse protocol: set the ``pixels`` columns nearest the left and right edges to background
    (the last axis; ``0 <= 2·pixels < W``)."""
    check_edge_filter(pixels, {f"a volume of shape {pred.shape}": pred.shape[-1]})
    if pixels == 0:
        return pred
    out = pred.copy()
    out[..., :pixels] = 0
    out[..., -pixels:] = 0
    return out
