"""Augmentation: clicks are never lost or duplicated, image/label/clicks stay aligned, both
backends (Kornia, DALI CPU pipeline) agree, and the draw is a function of (seed, step, rank)."""
import numpy as np
import pytest
import torch

from pscv_dist.augment import Augmenter, move_clicks, sample_matrices
from pscv_dist.config import AugmentConfig

K = 4  # classes; ignore_index = 4


def _batch(b=8, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, K, (b, s, s), generator=g)
    points = torch.full_like(label, K)
    for i in range(b):
        ys = torch.randint(0, s, (K,), generator=g)
        xs = torch.randint(0, s, (K,), generator=g)
        for k in range(K):
            points[i, ys[k], xs[k]] = k
    present = torch.stack([torch.bincount(p[p < K], minlength=K) > 0 for p in points.flatten(1)])
    return {"image": torch.rand(b, 1, s, s, generator=g), "label": label, "points": points, "present": present}


def test_clicks_never_lost_or_duplicated_over_many_draws():
    aug = Augmenter(AugmentConfig(backend="kornia", p_rot90_flip=0.3, p_rotate=0.9, max_angle=45), K, seed=1)
    rotated = 0
    for step in range(60):
        batch = _batch(seed=step)
        out = aug(batch, step, 0)
        for i in range(8):
            before = sorted(batch["points"][i][batch["points"][i] < K].tolist())
            after = sorted(out["points"][i][out["points"][i] < K].tolist())
            assert before == after  # same multiset of clicked classes: none lost, none duplicated
        moved = torch.stack([torch.bincount(p[p < K], minlength=K) > 0 for p in out["points"].flatten(1)])
        torch.testing.assert_close(out["present"], moved)  # the presence the loss sees matches the clicks
        rotated += int((~torch.eq(out["points"], batch["points"]).flatten(1).all(1)).sum())
    assert rotated > 200  # most of the 480 samples really moved


def test_each_click_lands_where_the_image_moved():
    # a bright blob at every click; after the warp the blob's brightest pixel is at the moved click
    s, g = 40, torch.Generator().manual_seed(3)
    cfg = AugmentConfig(backend="kornia", p_rot90_flip=0.5, p_rotate=1.0, max_angle=30)
    for trial in range(40):
        y, x = (int(v) for v in torch.randint(8, s - 8, (2,), generator=g))
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        image = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)[None, None].float()
        points = torch.full((1, s, s), K)
        points[0, y, x] = 2
        batch = {"image": image, "label": torch.zeros(1, s, s, dtype=torch.long), "points": points,
                 "present": torch.tensor([[False, False, True, False]])}
        out = Augmenter(cfg, K, seed=trial)(batch, 0, 0)
        ny, nx = torch.nonzero(out["points"][0] == 2)[0].tolist()
        my, mx = np.unravel_index(int(out["image"][0, 0].argmax()), (s, s))
        assert abs(ny - my) <= 1 and abs(nx - mx) <= 1


def test_rot90_and_flip_are_exact():
    mats, mode = sample_matrices(64, 16, AugmentConfig(p_rot90_flip=1.0), torch.Generator().manual_seed(0))
    assert (mode == 1).all()
    img = torch.arange(256.0).reshape(1, 1, 16, 16).repeat(64, 1, 1, 1)
    lab = torch.arange(256).reshape(1, 16, 16).repeat(64, 1, 1) % 7
    out_img, out_lab = Augmenter(AugmentConfig(), K, 0)._kornia(img, lab, mats)
    for i in range(64):
        a = mats[i, :, :2].round()
        # the result is one of the 8 exact symmetries of the square
        candidates = [torch.rot90(img[i, 0], k, (0, 1)) for k in range(4)]
        candidates += [torch.rot90(img[i, 0].flip(-1), k, (0, 1)) for k in range(4)]
        assert any(torch.allclose(out_img[i, 0], c, atol=1e-3) for c in candidates), a
        assert torch.equal(out_lab[i], (out_img[i, 0].round().long() % 7))


def test_rotation_pushing_a_click_out_is_not_applied():
    s = 16
    points = torch.full((1, s, s), K)
    points[0, 0, 0] = 1  # a corner click leaves the slice under any non-right-angle rotation
    mats = torch.tensor([[[0.9659, -0.2588, 2.3], [0.2588, 0.9659, -1.7]]], dtype=torch.float64)  # 15°
    new, ok = move_clicks(points, mats, K)
    assert not ok[0] and torch.equal(new, points)


def test_draw_depends_on_seed_step_and_rank_only():
    aug = Augmenter(AugmentConfig(), K, seed=5)
    batch = _batch()
    a, b = aug(batch, 3, 1), aug(batch, 3, 1)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["points"], b["points"])
    assert not torch.equal(aug(batch, 4, 1)["image"], a["image"])
    assert not torch.equal(aug(batch, 3, 0)["image"], a["image"])


@pytest.mark.slow
def test_dali_cpu_pipeline_matches_kornia():
    pytest.importorskip("nvidia.dali")
    batch = _batch(b=6, s=32, seed=9)
    cfg = dict(p_rot90_flip=0.5, p_rotate=1.0, max_angle=20)
    for step in range(4):
        k = Augmenter(AugmentConfig(backend="kornia", **cfg), K, 0)(batch, step, 0)
        d = Augmenter(AugmentConfig(backend="dali", **cfg), K, 0)(batch, step, 0)
        assert torch.equal(k["points"], d["points"])
        torch.testing.assert_close(d["image"], k["image"], atol=1e-4, rtol=0)
        # nearest-neighbour ties can round differently at exact half-pixel positions: allow a few pixels
        assert (d["label"] != k["label"]).float().mean() < 0.01


@pytest.mark.parametrize("size", [16, 17])
def test_exact_warp_is_the_pixel_permutation_the_matrix_defines(size):
    from pscv_dist.augment import _permute, exact_warp

    mats, _ = sample_matrices(64, size, AugmentConfig(p_rot90_flip=1.0), torch.Generator().manual_seed(size))
    img, lab = torch.rand(64, 1, size, size), torch.randint(0, K, (64, size, size), dtype=torch.uint8)
    new_img, new_lab = exact_warp(img, lab, mats)
    for i in range(64):  # the definition: out(x', y') = in(A^-1((x', y') - t)), index by index
        assert torch.equal(new_img[i:i + 1], _permute(img[i:i + 1], mats[i]))
        assert torch.equal(new_lab[i], _permute(lab[i][None, None], mats[i])[0, 0])


def test_shared_grid_warp_equals_kornias_warp_affine():
    from kornia.geometry.transform import warp_affine

    mats, _ = sample_matrices(16, 48, AugmentConfig(p_rot90_flip=0, p_rotate=1.0, max_angle=40),
                              torch.Generator().manual_seed(1))
    img, lab = torch.rand(16, 1, 48, 48), torch.randint(0, K, (16, 48, 48))
    new_img, new_lab = Augmenter(AugmentConfig(), K, 0)._kornia(img, lab, mats)
    m = mats.float()
    ref_img = warp_affine(img, m, (48, 48), mode="bilinear", padding_mode="zeros", align_corners=True)
    ref_lab = warp_affine(lab[:, None].float(), m, (48, 48), mode="nearest", padding_mode="zeros",
                          align_corners=True)[:, 0].round().long()
    torch.testing.assert_close(new_img, ref_img, atol=1e-4, rtol=0)
    assert (new_lab != ref_lab).float().mean() < 1e-3  # nearest ties at exact half-pixels only


def test_the_kept_base_grid_gives_affine_grids_grid_bit_for_bit():
    import torch.nn.functional as F

    aug = Augmenter(AugmentConfig(), K, 0)
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(2))
    for h, w in ((48, 48), (7, 9)):
        grid = (aug._base_grid(h, w, torch.device("cpu")) @ theta.transpose(1, 2)).view(5, h, w, 2)
        assert torch.equal(grid, F.affine_grid(theta, [5, 1, h, w], align_corners=True))
    assert aug._base_grid(48, 48, torch.device("cpu")) is aug._base_grid(48, 48, torch.device("cpu"))


def test_scribble_pixels_of_one_class_may_merge_two_classes_may_not():
    s = 16
    mats = torch.tensor([[[0.5, 0, 0], [0, 0.5, 0]]], dtype=torch.float64)  # a zoom by 1/2: neighbours merge
    scribble = torch.full((1, s, s), K)
    scribble[0, 4, 4:8] = 2  # class 2 at x = 4..7 -> x/2 = 2, 2.5, 3, 3.5 -> 2, 2, 3, 4 (half to even)
    new, ok = move_clicks(scribble, mats, K)
    assert ok[0] and sorted(torch.nonzero(new[0] == 2).tolist()) == [[2, 2], [2, 3], [2, 4]]
    two = scribble.clone()
    two[0, 5, 4] = 1  # class 1 right under a class-2 pixel: both land on (2, 2) -> refused
    new, ok = move_clicks(two, mats, K)
    assert not ok[0] and torch.equal(new, two)
