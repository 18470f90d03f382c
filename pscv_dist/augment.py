"""On-device augmentation that moves image, dense label and clicks together.

METHOD.md's protocol, per sample: with p = ``p_rot90_flip`` a rotation by k·90° and a random
horizontal flip; otherwise with p = ``p_rotate`` a rotation by an angle in [-max_angle, max_angle].
Each sample's transform is ONE affine matrix in pixel coordinates (x, y, pixel centres at integers)
about the slice centre, applied to the image (bilinear), the label (nearest) and the click
coordinates (exactly, then rounded). rot90 and flips map pixel centres onto pixel centres, so they
are exact. A rotation that would push a click out of the slice or merge two clicks into one pixel
is not applied to that sample (it stays un-rotated), so no click is ever lost or duplicated.

Parameters come from a generator seeded by (seed, step, rank): a resumed run augments exactly as
the uninterrupted one. Backends: Kornia (``warp_affine``, on the training device) or NVIDIA DALI
(``fn.warp_affine``; a CPU pipeline when there is no GPU) - same matrices, same geometry.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import AugmentConfig


def sample_matrices(b: int, size: int, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, 3) forward matrices (source (x, y) -> destination) and the (B,) mode (0 none,
    1 rot90+flip, 2 rotation)."""
    u1, u2, u3 = (torch.rand(b, generator=gen, dtype=torch.float64) for _ in range(3))
    k = torch.randint(0, 4, (b,), generator=gen)
    angle = (torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * cfg.max_angle
    mode = torch.where(u1 < cfg.p_rot90_flip, 1, torch.where(u2 < cfg.p_rotate, 2, 0))
    c = (size - 1) / 2.0
    mats = torch.zeros(b, 2, 3, dtype=torch.float64)
    for i in range(b):
        if mode[i] == 1:
            theta, flip = math.pi / 2 * int(k[i]), bool(u3[i] < 0.5)
        elif mode[i] == 2:
            theta, flip = math.radians(float(angle[i])), False
        else:
            theta, flip = 0.0, False
        cos, sin = round(math.cos(theta), 12), round(math.sin(theta), 12)
        a = np.array([[cos, -sin], [sin, cos]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
        t = np.array([c, c]) - a @ np.array([c, c])
        mats[i, :, :2], mats[i, :, 2] = torch.from_numpy(a), torch.from_numpy(t)
    return mats, mode


def move_clicks(points: torch.Tensor, mats: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform every sample's clicks by its matrix. Returns the new (B, H, W) point maps and a
    (B,) bool: False where a click would leave the slice or two clicks would share a pixel (that
    sample must not be warped; its map is returned unchanged)."""
    b, h, w = points.shape
    out = torch.full_like(points, ignore_index)
    ok = torch.ones(b, dtype=torch.bool)
    for i in range(b):
        ys, xs = torch.nonzero(points[i] != ignore_index, as_tuple=True)
        cls = points[i, ys, xs]
        m = mats[i].to(torch.float64).cpu()
        xy = torch.stack([xs.double().cpu(), ys.double().cpu(), torch.ones(len(xs), dtype=torch.float64)])
        nx, ny = (m @ xy).round().long()
        inside = (nx >= 0) & (nx < w) & (ny >= 0) & (ny < h)
        if not inside.all() or len(set(zip(nx.tolist(), ny.tolist()))) != len(xs):
            ok[i] = False
            out[i] = points[i]
            continue
        out[i, ny.to(points.device), nx.to(points.device)] = cls
    return out, ok


class Augmenter:
    """Augments a batch dict (``image`` (B,1,S,S), ``label``, ``points`` (B,S,S), ``present``) in place
    of the data loader, on the batch's device."""

    def __init__(self, cfg: AugmentConfig, ignore_index: int, seed: int):
        self.cfg, self.ignore_index, self.seed = cfg, ignore_index, seed
        self._dali = None

    def generator(self, step: int, rank: int) -> torch.Generator:
        state = int(np.random.SeedSequence([self.seed, step, rank, 0xA06]).generate_state(1)[0])
        return torch.Generator().manual_seed(state)

    def __call__(self, batch: dict[str, torch.Tensor], step: int, rank: int) -> dict[str, torch.Tensor]:
        if self.cfg.backend == "none":
            return batch
        image, label, points = batch["image"], batch["label"], batch["points"]
        b, _, h, w = image.shape
        if h != w:
            raise ValueError(f"augmentation needs square slices, got {h}x{w}")
        mats, _ = sample_matrices(b, h, self.cfg, self.generator(step, rank))
        new_points, ok = move_clicks(points, mats, self.ignore_index)
        mats[~ok] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
        if self.cfg.backend == "kornia":
            new_image, new_label = self._kornia(image, label, mats)
        else:
            new_image, new_label = self._dali_warp(image, label, mats)
        # every click is moved, none lost or merged (move_clicks), so ``present`` is unchanged
        return {**batch, "image": new_image, "label": new_label, "points": new_points}

    @staticmethod
    def _kornia(image, label, mats):
        from kornia.geometry.transform import warp_affine

        m = mats.to(image.device, torch.float32)
        size = tuple(image.shape[-2:])
        img = warp_affine(image.float(), m, size, mode="bilinear", padding_mode="zeros", align_corners=True)
        lab = warp_affine(label[:, None].float(), m, size, mode="nearest", padding_mode="zeros", align_corners=True)
        return img.to(image.dtype), lab[:, 0].round().to(label.dtype)

    def _dali_warp(self, image, label, mats):
        from .dali_warp import DaliWarp

        if self._dali is None or self._dali.batch_size != image.shape[0]:
            self._dali = DaliWarp(image.shape[0], gpu=image.is_cuda, device_id=image.device.index)
        return self._dali(image, label, mats)
