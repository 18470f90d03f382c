"""Functional loss pieces, each on the softmax output ``probs`` = Ŷ (B, K, H, W).

Reduction convention (METHOD.md): a per-image quantity is summed over its classes / pixels, then
averaged over the images of the batch, so a loss does not change with how a global batch is split.

Split invariance (METHOD.md, distributed semantics). The global batch is split exactly over the W
ranks of a process group; rank r returns L_r, DDP averages gradients. A term is split-invariant when

    (1/W) Σ_r L_r = L(global batch)   and   (1/W) ∂L_r/∂x_r = ∂L(global batch)/∂x_r

for every rank's own inputs x_r. Per-image means (TV, Mumford-Shah, CV) and per-pixel means over
equally sized local batches (entropy, dense CE) meet it as they are. Two terms need the group:

* pCE averages over the LABELLED pixels, whose count differs between ranks. With ce_i the
  cross-entropy of labelled pixel i, Ω_r rank r's labelled pixels and N = Σ_r |Ω_r| (all-reduced,
  no gradient)::

      L_r = W · Σ_{i∈Ω_r} ce_i / N          (N = 0 on every rank: L_r = 0, with a graph)

  so the mean over ranks is Σ_i ce_i / N, the one-process pCE (Tang et al. 2018; PSCV Eq. 2).
* soft Dice is a ratio of batch sums S = (Σ Ŷ_k G_k, Σ Ŷ_k², Σ G_k). With S = Σ_r S_r all-reduced
  (no gradient) and S̃_r = S + W·(S_r - sg(S_r)) (sg = stop-gradient; S̃_r equals S in value)::

      L_r = Dice(S̃_r)

  so every rank's value is the global Dice and (1/W) ∂L_r/∂S_r = ∂Dice/∂S.

Without a process group (or with W = 1) both are computed exactly as in one process.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.autograd.function import once_differentiable
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import rank_in

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


def _world(process_group) -> int:
    """W of ``process_group`` (None = the default group when one is initialised), 1 without one."""
    return rank_in(process_group)[1]


def partial_cross_entropy(logits: torch.Tensor, points: torch.Tensor, ignore_index: int,
                          process_group=None) -> torch.Tensor:
    """pCE (Tang et al. 2018; PSCV Eq. 2): cross-entropy over the labelled pixels only, averaged over
    the labelled pixels of the GLOBAL batch: ``L_r = W · Σ_{i∈Ω_r} ce_i / N`` with N all-reduced over
    ``process_group`` (see the module docstring). ``points`` (B, H, W) int64 holds ``ignore_index``
    where unlabelled. A rank without labelled pixels returns 0 with a graph and still joins the
    all-reduce; no labelled pixel anywhere gives 0 (with a graph), not NaN. Collective: every rank of
    the group must call it. Without a group (or W = 1) it is the plain mean over labelled pixels.

    Raises:
        ValueError: shapes or dtypes do not match.
    """
    if logits.dim() != 4 or points.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"points must be (B, H, W) matching logits {tuple(logits.shape)}, got {tuple(points.shape)}")
    if points.dtype != torch.int64:
        raise ValueError(f"points must be int64, got {points.dtype}")
    world = _world(process_group)
    if world == 1:
        if not (points != ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, points, ignore_index=ignore_index)
    count = (points != ignore_index).sum().reshape(1)
    dist.all_reduce(count, group=process_group)  # every rank, labelled pixels or not
    total = int(count.item())
    if total == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, points, ignore_index=ignore_index, reduction="sum") * (world / total)


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


def unit_variance_maps_autograd(probs: torch.Tensor, images: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """:func:`unit_variance_maps` through autograd's generic backward (what ``torch.compile`` fuses)."""
    return F.normalize(variance_maps(probs, images, eps), dim=-1, eps=eps)


def _no_autocast(device_type: str):
    """Autocast off where the device has it (not on ``meta``)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1, keepdim=True)`` as a batched matrix product: one read of each, no
    (B, K, D) temporary."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).squeeze(-1)


class _UnitVarianceMaps(torch.autograd.Function):
    """ẑ = z / max(‖z‖, eps), z = (x - c)² p, c = Σxp / (Σp + eps), per (image, class) over pixels,
    with the backward written out (p the only input with a gradient):

        g_z = (g - ẑ (g·ẑ) [‖z‖ ≥ eps]) / max(‖z‖, eps)
        ∂L/∂c = -2 Σ_r g_z (x - c) p          (c's dependence: ∂c/∂p_r = (x_r - c) / (Σp + eps))
        ∂L/∂p = g_z (x - c)² + ∂L/∂c · (x - c) / (Σp + eps)
              = (x - c) · (u / max(‖z‖, eps) + ∂L/∂c / (Σp + eps)),   u = (g - ẑ (g·ẑ)[·]) (x - c)

    The pixel sums are matrix products (Σp and Σxp in one read of p, g·ẑ and u·p without a
    (B, K, D) temporary), and each step writes in place: about half the memory traffic of
    autograd's generic backward, gradcheck-tested against it (:func:`unit_variance_maps_autograd`).
    Autocast is off inside, so the sums over D = H·W pixels run in the maps' own dtype (on CUDA
    with TF32 matmuls allowed, fp32 sums would be rounded to TF32; pscv-dist leaves TF32 off)."""

    @staticmethod
    def forward(ctx, p, x, eps):
        with _no_autocast(p.device.type):
            sums = torch.matmul(p, torch.cat([x, torch.ones_like(x)], 1).mT)  # (B, K, 2): Σxp, Σp
            s = sums[..., 1:].add(eps)
            d = x - sums[..., :1] / s
            z = d.square().mul_(p)
            n = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
            nc = n.clamp_min(eps)
            zh = z.div_(nc)
        ctx.save_for_backward(p, d, zh, nc, s, n >= eps)  # clamp_min passes the gradient at n == eps
        return zh

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        p, d, zh, nc, s, big = ctx.saved_tensors
        with _no_autocast(p.device.type):
            u = torch.addcmul(g, zh, _dot(g, zh) * big, value=-1).mul_(d)  # g_z · max(‖z‖, eps) · (x - c)
            gc_s = _dot(u, p).mul_(-2).div_(nc).div_(s)  # ∂L/∂c / (Σp + eps)
            return u.div_(nc).add_(gc_s).mul_(d), None, None


def unit_variance_maps(probs: torch.Tensor, images: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Variance maps scaled to unit L2 norm, ``ẑ = z / max(‖z‖, eps)`` (the eps-safe cosine's input):
    (B, K, H·W), with a hand-written backward (:class:`_UnitVarianceMaps`); through autograd when
    the images need a gradient too."""
    _check_probs(probs, images)
    if images.requires_grad:
        return unit_variance_maps_autograd(probs, images, eps)
    return _UnitVarianceMaps.apply(probs.flatten(2), images.flatten(2).to(probs.dtype), float(eps))


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


def soft_dice_loss(probs: torch.Tensor, label: torch.Tensor, classes: list[int], smooth: float = 1e-5,
                   process_group=None) -> torch.Tensor:
    """Soft Dice loss over the GLOBAL batch, averaged over ``classes`` (TransUNet's DiceLoss,
    foreground classes): ``1 - (2 Σ Ŷ_k G_k + s) / (Σ Ŷ_k² + Σ G_k + s)``, the sums taken over every
    rank of ``process_group`` (all-reduced, gradients kept for this rank's share; see the module
    docstring). Collective under a group; without one (or W = 1) the sums are this batch's."""
    _check_probs(probs)
    if label.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"label must be (B, H, W) matching probs {tuple(probs.shape)}, got {tuple(label.shape)}")
    sums = []
    for k in classes:
        p, g = probs[:, k], (label == k).to(probs.dtype)
        sums.append(torch.stack([(p * g).sum(), (p * p).sum(), g.sum()]))
    s = torch.stack(sums)  # (C, 3): intersection, Σ Ŷ², Σ G per class
    world = _world(process_group)
    if world > 1:
        total = s.detach().clone()
        dist.all_reduce(total, group=process_group)
        s = total + world * (s - s.detach())  # the global sums in value, W x this rank's gradient
    inter, pp, gg = s.unbind(1)
    return (1 - (2 * inter + smooth) / (pp + gg + smooth)).mean()
