"""Functional loss pieces, each on the softmax output ``probs`` = Ŷ (B, K, H, W).

Reduction convention (METHOD.md): a per-image quantity is summed over its classes / pixels, then
averaged over the images of the batch, so a loss does not change with how a global batch is split.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8


def _check_probs(probs: torch.Tensor, images: torch.Tensor | None = None) -> None:
    if probs.dim() != 4:
        raise ValueError(f"probs must be (B, K, H, W), got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got {probs.dtype}")
    if images is not None:
        b, _, h, w = probs.shape
        if images.shape != (b, 1, h, w):
            raise ValueError(f"images must be (B, 1, H, W) = {(b, 1, h, w)} to match probs "
                             f"{tuple(probs.shape)}, got {tuple(images.shape)}")


def partial_cross_entropy(logits: torch.Tensor, points: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """pCE (Tang et al. 2018; PSCV Eq. 2): cross-entropy over the labelled pixels only, averaged over
    them. ``points`` (B, H, W) int64 holds ``ignore_index`` where unlabelled. No labelled pixel
    gives 0 (with a graph), not NaN.

    Raises:
        ValueError: shapes or dtypes do not match.
    """
    if logits.dim() != 4 or points.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"points must be (B, H, W) matching logits {tuple(logits.shape)}, got {tuple(points.shape)}")
    if points.dtype != torch.int64:
        raise ValueError(f"points must be int64, got {points.dtype}")
    if not (points != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, points, ignore_index=ignore_index)


def variance_maps(probs: torch.Tensor, images: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pixel-level variance maps (PSCV Eq. 4-5), flattened to (B, K, H·W).

    ``c_k = Σ_r I(r)·Ŷ_k(r) / (Σ_r Ŷ_k(r) + eps)`` and ``z_k(r) = (I(r) - c_k)² · Ŷ_k(r)``;
    gradients flow through ``c_k``.
    """
    _check_probs(probs, images)
    p = probs.flatten(2)
    x = images.flatten(2).to(p.dtype)
    c = (x * p).sum(-1, keepdim=True) / (p.sum(-1, keepdim=True) + eps)
    return (x - c) ** 2 * p


def unit_variance_maps(probs: torch.Tensor, images: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Variance maps scaled to unit L2 norm, ``ẑ = z / max(‖z‖, eps)`` (the eps-safe cosine's input):
    (B, K, H·W). Pure elementwise work plus two reductions, so ``torch.compile`` fuses it."""
    return F.normalize(variance_maps(probs, images, eps), dim=-1, eps=eps)


def total_variation(probs: torch.Tensor) -> torch.Tensor:
    """TV (PSCV Eq. 3/6, second term): per image ``Σ_k Σ_r |Ŷ_k(r) - Ŷ_k(r+down)| + |Ŷ_k(r) -
    Ŷ_k(r+right)|`` (forward differences inside the image), averaged over images."""
    _check_probs(probs)
    dv = (probs[:, :, 1:, :] - probs[:, :, :-1, :]).abs().sum(dim=(1, 2, 3))
    dh = (probs[:, :, :, 1:] - probs[:, :, :, :-1]).abs().sum(dim=(1, 2, 3))
    return (dv + dh).mean()


def mumford_shah(probs: torch.Tensor, images: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Vanilla Mumford-Shah data term (Kim & Ye 2019; PSCV Eq. 3, first term): per image
    ``Σ_k Σ_r (I(r) - c_k)² Ŷ_k(r)``, i.e. the variance maps summed, averaged over images."""
    return variance_maps(probs, images, eps).sum(dim=(1, 2)).mean()


def entropy_minimization(probs: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Entropy minimisation (Grandvalet & Bengio 2004): mean per-pixel entropy ``-Σ_k Ŷ_k log Ŷ_k``
    divided by log K (so it lies in [0, 1])."""
    _check_probs(probs)
    k = probs.shape[1]
    ent = -(probs * torch.log(probs.clamp_min(eps))).sum(1)
    return ent.mean() / math.log(k)


def soft_dice_loss(probs: torch.Tensor, label: torch.Tensor, classes: list[int], smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice loss over the batch, averaged over ``classes`` (TransUNet's DiceLoss, foreground
    classes): ``1 - (2 Σ Ŷ_k G_k + s) / (Σ Ŷ_k² + Σ G_k + s)``."""
    _check_probs(probs)
    if label.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"label must be (B, H, W) matching probs {tuple(probs.shape)}, got {tuple(label.shape)}")
    losses = []
    for k in classes:
        p, g = probs[:, k], (label == k).to(probs.dtype)
        losses.append(1 - (2 * (p * g).sum() + smooth) / ((p * p).sum() + g.sum() + smooth))
    return torch.stack(losses).mean()
