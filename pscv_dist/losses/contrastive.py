"""The contrastive variance (CV) loss of PSCV, with negatives gathered across ranks.

Reference: Annotation by Clicks: A Point-Supervised Contrastive Variance Method for Medical Semantic
Segmentation (PSCV), Eq. 4-8; every choice the paper leaves open is fixed in docs/METHOD.md.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..distributed import all_reduce_with_grad, gather_no_grad, gather_with_grad, rank_in
from .functional import EPS, unit_variance_maps, unit_variance_maps_autograd

CV_CLASSES = ("all", "foreground")


def draw_positives(present: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """For each (n, k), one image m ≠ n with class k present, uniform among the candidates; -1 when
    there is none. ``present`` is the GLOBAL (N, K) presence; the draw depends only on it and on
    (seed, step), so every rank (and a one-process run on the concatenated batch) draws the same."""
    n, k = present.shape
    state = int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0])
    u = torch.rand((n, k), generator=torch.Generator().manual_seed(state), dtype=torch.float64)
    u = u.to(present.device)
    cand = present.T[None, :, :].expand(n, k, n).clone()  # cand[a, k, m] = present[m, k]
    idx = torch.arange(n, device=present.device)
    cand[idx, :, idx] = False  # m != n
    count = cand.sum(-1)
    choice = torch.minimum((u * count).floor().long(), (count - 1).clamp_min(0))
    hit = (cand.long().cumsum(-1) == (choice + 1)[..., None]) & cand
    return torch.where(count > 0, hit.long().argmax(-1), torch.full_like(count, -1))


def draw_pool(n: int, size: int, seed: int, step: int) -> torch.Tensor:
    """The sorted global indices of step's negative pool: ``size`` of the ``n`` images, uniform
    without replacement, from (seed, step) alone, so every rank draws the same pool."""
    state = int(np.random.SeedSequence([int(seed), int(step), 0x9001]).generate_state(1)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(state))[:size].sort().values


class ContrastiveVarianceLoss(nn.Module):
    """Contrastive variance loss (PSCV Eq. 6-8), over the GLOBAL batch of all ranks.

    For an anchor (n, k) (class k present in image n) with unit variance maps ẑ = z/‖z‖:
    ``ℓ(n,k) = -s⁺/τ + logsumexp({s⁺/τ} ∪ {s⁻/τ})``, ``s⁺ = ẑ_k^n·ẑ_k^m`` for one image m ≠ n drawn
    among the global images with k present (anchor skipped when there is none), ``s⁻ = ẑ_k^n·ẑ_j^i``
    for every i ≠ n, j ≠ k with j present in i. Each rank returns Σ over its images' anchors / b
    (its own batch size), so the mean over ranks is the one-process loss on the concatenated batch.

    A bounded pool (``pool=P``, our addition for cluster scale): positives and negatives come from P
    images of the global batch drawn by :func:`draw_pool` from (seed, step) (every image still
    anchors). With the global pool a rank receives (W-1)·b·K·H·W map values per step and an anchor
    has up to (N-1)(K-1) negatives, both growing with the world size W; with P, each rank puts its
    pool images' maps into a (P, K, H·W) buffer and one all-reduce assembles it, so the bytes
    (2(W-1)/W · P·K·H·W) and the negatives per anchor no longer grow with W. P ≥ N is the global
    pool. The loss and gradients equal the one-process loss on the concatenated batch with the
    same pool, as in the global case.

    Args:
        tau: temperature τ (default 0.07, the paper's).
        seed: seeds the positive draw together with ``step``, identically on every rank.
        gather_dtype: dtype of the maps sent between ranks (``torch.bfloat16`` halves the bytes);
            None sends them in their own dtype.
        process_group: the group to gather over; None = the default group when initialised.
        classes: ``all`` (background included; it has a click too) or ``foreground``.
        eps: guards the class mean and the cosine norm.
        compile: fuse the variance-map computation with ``torch.compile`` (about 2x faster on CPU
            and at the GEMM floor; the first call compiles for ~20 s).
        pool: None (the global batch) or the number P ≥ 2 of pool images.

    Raises:
        ValueError: bad options, shape mismatches, non-bool ``present``.
    """

    def __init__(self, tau: float = 0.07, seed: int = 0, gather_dtype: torch.dtype | None = None,
                 process_group=None, classes: str = "all", eps: float = EPS, compile: bool = False,
                 pool: int | None = None):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if classes not in CV_CLASSES:
            raise ValueError(f"classes must be one of {CV_CLASSES}, got {classes!r}")
        if gather_dtype is not None and not gather_dtype.is_floating_point:
            raise ValueError(f"gather_dtype must be a floating dtype, got {gather_dtype}")
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 2):
            raise ValueError(f"pool must be None (global) or an integer >= 2, got {pool!r}")
        self.tau, self.seed, self.gather_dtype, self.pool = float(tau), int(seed), gather_dtype, pool
        self.process_group, self.classes, self.eps = process_group, classes, float(eps)
        self._unit_maps = torch.compile(unit_variance_maps_autograd, dynamic=False) if compile else unit_variance_maps

    def forward(self, probs: torch.Tensor, images: torch.Tensor, present: torch.Tensor, step: int) -> torch.Tensor:
        if present.dtype != torch.bool or present.shape != probs.shape[:2]:
            raise ValueError(f"present must be bool (B, K) = {tuple(probs.shape[:2])}, got "
                             f"{present.dtype} {tuple(present.shape)}")
        # Finite inputs give a finite loss (every division is eps-guarded). NaN/inf inputs give a
        # non-finite loss on every rank (the gathered maps carry them), and the collectives run the
        # same on every rank whatever the values: the trainer's one NaN guard per step stops the run.
        return self._loss(probs, images, present, step)

    def _loss(self, probs, images, present, step):
        zn = self._unit_maps(probs, images, self.eps)  # (b, K, D), unit norm
        all_p = gather_no_grad(present.to(torch.uint8), self.process_group).bool()
        rank, _ = rank_in(self.process_group)
        b, n_all = zn.shape[0], all_p.shape[0]
        rows = torch.arange(rank * b, (rank + 1) * b, device=zn.device)
        pool = None if self.pool is None or self.pool >= n_all else draw_pool(n_all, self.pool, self.seed, step).to(zn.device)
        cand = all_p
        if pool is not None:  # positives from the pool too
            cand = torch.zeros_like(all_p)
            cand[pool] = all_p[pool]
        pos = draw_positives(cand, self.seed, step)[rows]  # (b, K) global image index or -1
        if self.classes == "foreground":  # drawn on all classes first: the same positives either way
            zn, present, all_p, pos = zn[:, 1:], present[:, 1:], all_p[:, 1:], pos[:, 1:]
        k, d = zn.shape[1:]
        sent = zn if self.gather_dtype is None else zn.to(self.gather_dtype)
        if pool is None:
            all_z = gather_with_grad(sent, self.process_group).to(zn.dtype)  # (N, K, D)
            col_of = torch.arange(n_all, device=zn.device)  # column block -> global image
        else:  # each rank fills its pool images' rows; one all-reduce (sum) assembles the pool everywhere
            mine = (pool >= rank * b) & (pool < (rank + 1) * b)
            buf = sent.new_zeros((len(pool), k, d)).index_copy(0, mine.nonzero().squeeze(1), sent[pool[mine] - rank * b])
            all_z = all_reduce_with_grad(buf, self.process_group).to(zn.dtype)  # (P, K, D)
            col_of = pool
        valid = (present & (pos >= 0)).reshape(-1)
        if not valid.any():
            # still through the collective's output: every rank must run its backward collective
            return all_z.sum() * 0.0 + zn.sum() * 0.0
        anchors = valid.nonzero().squeeze(1)  # flat (n_local * K + k)
        a_img, a_cls = rows[anchors // k], anchors % k
        # all local rows in one GEMM, then select the anchors' rows: indexing the (b*K, C*K) result is
        # cheap, indexing the (b*K, D) maps would copy them (and scatter their gradient back)
        sim = (zn.reshape(b * k, d) @ all_z.reshape(-1, d).T / self.tau)[anchors]  # (A, C*K), C = N or P
        col_img = col_of.repeat_interleave(k)
        col_cls = torch.arange(k, device=zn.device).repeat(len(col_of))
        negative = (all_p[col_of].reshape(-1)[None, :] & (col_img[None, :] != a_img[:, None])
                    & (col_cls[None, :] != a_cls[:, None]))
        block = torch.full((n_all,), -1, dtype=torch.long, device=zn.device)
        block[col_of] = torch.arange(len(col_of), device=zn.device)  # global image -> its column block
        pos_col = block[pos.reshape(-1)[anchors]] * k + a_cls
        keep = negative.clone()
        keep[torch.arange(len(anchors), device=zn.device), pos_col] = True
        lse = torch.logsumexp(sim.masked_fill(~keep, float("-inf")), dim=1)
        s_pos = sim.gather(1, pos_col[:, None]).squeeze(1)
        return (lse - s_pos).sum() / b
