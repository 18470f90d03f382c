"""On-device augmentation that moves image, dense label and clicks together.

METHOD.md's protocol, per sample: with p = ``p_rot90_flip`` a rotation by k·90° and a random
horizontal flip; otherwise with p = ``p_rotate`` a rotation by an angle in [-max_angle, max_angle].
Each sample's transform is ONE affine matrix in pixel coordinates (x, y, pixel centres at integers)
about the slice centre, applied to the image (bilinear), the label (nearest) and the click
coordinates (exactly, then rounded).

How each sample is applied (the result is the same geometry whatever runs it):

- no transform, or a transform refused for the clicks (below): the sample is passed through, no
  resampling;
- rot90 and flips map pixel centres onto pixel centres: they are applied as an exact pixel
  permutation (a gather), identical on every backend and free of interpolation error;
- rotations by other angles go through the backend's warp: Kornia ``warp_affine`` (on the batch's
  device) or NVIDIA DALI ``fn.warp_affine`` (a CPU pipeline when there is no GPU), with the same
  matrices.

Clicks: a transform that would push an annotated pixel out of the slice, or land pixels of two
different classes on one pixel, is not applied to that sample (it stays un-rotated), so no click
is ever lost and no pixel changes class. Annotated pixels of one class that land on one pixel merge
(a rotated scribble is resampled like the image); single clicks, one per class, never merge.

Parameters come from a generator seeded by (seed, step, rank): a resumed run augments exactly as
the uninterrupted one, and a DataLoader worker draws what the main process would.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import AugmentConfig
from .errors import DataError

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def sample_matrices(b: int, size: int, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, 3) forward matrices (source (x, y) -> destination) and the (B,) mode (0 none,
    1 rot90+flip, 2 rotation)."""
    u1, u2, u3 = (torch.rand(b, generator=gen, dtype=torch.float64) for _ in range(3))
    k = torch.randint(0, 4, (b,), generator=gen)
    angle = (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * cfg.max_angle
    mode = torch.where(u1 < cfg.p_rot90_flip, 1, torch.where(u2 < cfg.p_rotate, 2, 0))
    c = (size - 1) / 2.0
    rows = []
    for m, k_i, u, a in zip(mode.tolist(), k.tolist(), u3.tolist(), angle.tolist()):
        if m == 1:
            theta, flip = math.pi / 2 * k_i, u < 0.5
        elif m == 2:
            theta, flip = math.radians(a), False
        else:
            theta, flip = 0.0, False
        cos, sin = round(math.cos(theta), 12), round(math.sin(theta), 12)
        f = -1.0 if flip else 1.0
        a00, a01, a10, a11 = cos * f, -sin, sin * f, cos  # rotation @ diag(f, 1)
        rows.append(((a00, a01, c - (a00 * c + a01 * c)), (a10, a11, c - (a10 * c + a11 * c))))
    mats = torch.tensor(rows, dtype=torch.float64).view(b, 2, 3)
    return mats, mode


def move_clicks(points: torch.Tensor, mats: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform every sample's annotated pixels by its matrix, for the whole batch at once.

    Returns the new (B, H, W) point maps and a (B,) bool: False where an annotated pixel would
    leave the slice or pixels of two classes would land on one pixel (that sample must not be
    warped; its map is returned unchanged)."""
    b, h, w = points.shape
    bi_t, ys_t, xs_t = torch.nonzero(points != ignore_index, as_tuple=True)
    cls_t = points[bi_t, ys_t, xs_t]
    bi, ys, xs, cls = (t.cpu().numpy() for t in (bi_t, ys_t, xs_t, cls_t))
    m = mats.detach().to(torch.float64).cpu().numpy()[bi]  # (P, 2, 3)
    nx = np.rint(m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2]).astype(np.int64)
    ny = np.rint(m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2]).astype(np.int64)
    ok = np.ones(b, dtype=bool)
    ok[bi[(nx < 0) | (nx >= w) | (ny < 0) | (ny >= h)]] = False
    # pixels of different classes on one destination pixel: the sample is refused
    key = (bi * h + np.clip(ny, 0, h - 1)) * w + np.clip(nx, 0, w - 1)
    order = np.lexsort((cls, key))
    k_sorted, c_sorted = key[order], cls[order]
    clash = (k_sorted[1:] == k_sorted[:-1]) & (c_sorted[1:] != c_sorted[:-1])
    ok[k_sorted[1:][clash] // (h * w)] = False
    out = points.clone()
    moving = ok[bi]
    dev = points.device
    out[torch.from_numpy(np.unique(bi[moving])).to(dev)] = ignore_index
    sel = torch.from_numpy(moving).to(dev)
    out[bi_t[sel], torch.from_numpy(ny[moving]).to(dev), torch.from_numpy(nx[moving]).to(dev)] = cls_t[sel]
    return out, torch.from_numpy(ok)


def _symmetry(a: tuple[int, int, int, int]):
    """The torch op (rot90 count, flip first) equal to the integer matrix ``a`` (row-major 2x2)
    applied about the slice centre: found once per matrix by comparing with the definition on a
    3x4 grid (rotations about the centre do not depend on the slice size)."""
    if a not in _SYMMETRIES:
        g = torch.arange(9).view(1, 1, 3, 3)
        m = torch.tensor([[a[0], a[1], 1.0 - a[0] - a[1]], [a[2], a[3], 1.0 - a[2] - a[3]]], dtype=torch.float64)
        want = _permute(g, m)
        for k in range(4):
            for flip in (False, True):
                if torch.equal(torch.rot90(g.flip(-1) if flip else g, k, (-2, -1)), want):
                    _SYMMETRIES[a] = (k, flip)
        if a not in _SYMMETRIES:
            raise ValueError(f"matrix {a} is not a symmetry of the square")
    return _SYMMETRIES[a]


_SYMMETRIES: dict[tuple[int, int, int, int], tuple[int, bool]] = {}


def _permute(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Definition of an exact warp of one (1, C, H, W) tensor: out(x', y') = x(A⁻¹((x', y') - t))."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    inv = m[:, :2].T
    dx, dy = xx - m[0, 2], yy - m[1, 2]
    sx = (inv[0, 0] * dx + inv[0, 1] * dy).round().long()
    sy = (inv[1, 0] * dx + inv[1, 1] * dy).round().long()
    return x[..., sy, sx]


def exact_warp(image: torch.Tensor, label: torch.Tensor, mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply matrices that map pixel centres onto pixel centres (rot90, flips, the identity)
    exactly, as ``torch.rot90`` / ``flip`` (memory copies, no interpolation)."""
    new_image, new_label = torch.empty_like(image), torch.empty_like(label)
    for i, m in enumerate(mats):
        k, flip = _symmetry(tuple(int(v) for v in m[:, :2].round().flatten().tolist()))
        img, lab = (image[i].flip(-1), label[i].flip(-1)) if flip else (image[i], label[i])
        new_image[i].copy_(torch.rot90(img, k, (-2, -1)))
        new_label[i].copy_(torch.rot90(lab, k, (-2, -1)))
    return new_image, new_label


class Augmenter:
    """Augments a batch dict (``image`` (B,1,S,S), ``label``, ``points`` (B,S,S), ``present``) on
    the batch's device: in the main process on a GPU, inside the DataLoader workers on CPU."""

    def __init__(self, cfg: AugmentConfig, ignore_index: int, seed: int):
        self.cfg, self.ignore_index, self.seed = cfg, ignore_index, seed
        self._dali: dict[tuple[int, bool], object] = {}
        self._grids: dict[tuple[int, int, str], torch.Tensor] = {}

    def generator(self, step: int, rank: int) -> torch.Generator:
        state = int(np.random.SeedSequence([self.seed, step, rank, 0xA06]).generate_state(1)[0])
        return torch.Generator().manual_seed(state)

    def __call__(self, batch: dict[str, torch.Tensor], step: int, rank: int) -> dict[str, torch.Tensor]:
        if self.cfg.backend == "none":
            return batch
        image, label, points = batch["image"], batch["label"], batch["points"]
        b, _, h, w = image.shape
        if h != w:
            raise DataError(f"augmentation needs square slices, got {h}x{w}")
        mats, mode = sample_matrices(b, h, self.cfg, self.generator(step, rank))
        new_points, ok = move_clicks(points, mats, self.ignore_index)
        new_image, new_label = image.clone(), label.clone()
        for which, warp in ((ok & (mode == 1), exact_warp), (ok & (mode == 2), self._warp)):
            if which.any():
                idx = torch.nonzero(which).flatten()
                dev = idx.to(image.device)
                new_image[dev], new_label[dev] = warp(image[dev], label[dev], mats[idx])
        # every click is moved, none lost and no pixel changes class, so ``present`` is unchanged
        return {**batch, "image": new_image, "label": new_label, "points": new_points}

    def _warp(self, image, label, mats):
        return self._kornia(image, label, mats) if self.cfg.backend == "kornia" else self._dali_warp(image, label, mats)

    def _kornia(self, image, label, mats):
        """Kornia's ``warp_affine`` (bilinear image, nearest label, zeros outside, pixel centres at
        integers), with the sampling grid built once for both: Kornia's normalised homography, its
        inverse, the grid and two ``grid_sample`` calls (what ``warp_affine`` does per call). The
        grid is ``affine_grid``'s, bit for bit, from a base grid kept per size and device (building
        it is most of ``affine_grid``'s time on a CPU)."""
        import torch.nn.functional as F
        from kornia.geometry.conversions import convert_affinematrix_to_homography, normalize_homography

        b, c, h, w = image.shape
        m = convert_affinematrix_to_homography(mats.to(image.device, torch.float64))
        src_from_dst = torch.linalg.inv(normalize_homography(m, (h, w), (h, w), align_corners=True))
        grid = (self._base_grid(h, w, image.device) @ src_from_dst[:, :2].float().transpose(1, 2)).view(b, h, w, 2)
        img = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        lab = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
        return img.to(image.dtype), lab[:, 0].round().to(label.dtype)

    def _base_grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(1, H*W, 3) rows (x, y, 1) of normalised pixel centres, as ``affine_grid`` builds them
        (align_corners=True)."""
        key = (h, w, str(device))
        if key not in self._grids:
            x = torch.linspace(-1, 1, w, device=device)
            y = torch.linspace(-1, 1, h, device=device)
            yy, xx = torch.meshgrid(y, x, indexing="ij")
            self._grids[key] = torch.stack((xx, yy, torch.ones_like(xx)), -1).view(1, h * w, 3)
        return self._grids[key]

    def _dali_warp(self, image, label, mats):
        from .dali_warp import DaliWarp

        key = (image.shape[0], image.is_cuda)
        if key not in self._dali:  # one pipeline per sub-batch size (at most the batch size of them)
            self._dali[key] = DaliWarp(image.shape[0], gpu=image.is_cuda, device_id=image.device.index)
        return self._dali[key](image, label, mats)
