"""Dice and HD95 against hand-made masks and an independent brute-force computation."""
import math

import numpy as np
import pytest

from pscv_dist.errors import ConfigError
from pscv_dist.eval.metrics import (case_metrics, class_metrics, diagonal, dice, edge_filter, hd95,
                                    summarize)


def brute_hd95(a, b, spacing=None):
    """Surface = mask voxels with a face-neighbour outside the mask or outside the array; all
    pairwise distances between the two surfaces; pooled 95th percentile."""
    sp = np.ones(a.ndim) if spacing is None else np.asarray(spacing, float)

    def surface(m):
        pts = []
        for idx in zip(*np.nonzero(m)):
            for d in range(m.ndim):
                for s in (-1, 1):
                    j = list(idx)
                    j[d] += s
                    if not 0 <= j[d] < m.shape[d] or not m[tuple(j)]:
                        pts.append(idx)
                        break
                else:
                    continue
                break
        return np.array(sorted(set(pts)), float) * sp

    sa, sb = surface(a), surface(b)
    dists = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.hstack([dists.min(1), dists.min(0)]), 95))


def test_dice_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 voxels
    b[1:3, 1:3] = True  # 4 voxels, overlap 1
    assert dice(a, b) == pytest.approx(2 * 1 / 8)
    assert dice(a, a) == 1.0


def test_hd95_single_voxels_known_distance():
    a = np.zeros((5, 6, 3), bool)
    b = np.zeros((5, 6, 3), bool)
    a[0, 0, 0], b[3, 4, 0] = True, True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(math.sqrt(36 + 16))


def test_hd95_shifted_cube():
    a = np.zeros((12, 12, 12), bool)
    a[2:6, 2:6, 2:6] = True
    b = np.roll(a, 3, axis=0)
    # every surface voxel of one cube is within 3 voxels of the other's surface; the shifted faces are 3 away
    assert hd95(a, b) == pytest.approx(brute_hd95(a, b))
    assert hd95(a, b) == pytest.approx(3.0)


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = (6, 7, 5) if seed % 2 else (9, 11)
    a, b = rng.random(shape) < 0.3, rng.random(shape) < 0.25
    spacing = None if seed < 3 else tuple(rng.uniform(0.5, 3, len(shape)))
    assert hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing), rel=1e-9)


def test_empty_mask_conventions():
    full = np.zeros((2, 3, 4), bool)
    full[0, 1, 1] = True
    empty = np.zeros_like(full)
    d = diagonal(full.shape)
    assert d == pytest.approx(math.sqrt(4 + 9 + 16))
    assert class_metrics(empty, empty, "strict") is None
    assert class_metrics(empty, full, "strict") == {"dsc": 0.0, "hd95": d, "empty": "pred"}
    assert class_metrics(full, empty, "strict") == {"dsc": 0.0, "hd95": d, "empty": "gt"}
    assert class_metrics(empty, empty, "literature") == {"dsc": 0.0, "hd95": 0.0, "empty": "both"}
    assert class_metrics(empty, full, "literature") == {"dsc": 0.0, "hd95": 0.0, "empty": "pred"}
    assert class_metrics(full, empty, "literature") == {"dsc": 1.0, "hd95": 0.0, "empty": "gt"}
    mm = class_metrics(empty, full, "strict", spacing=(2.0, 1.0, 1.0))
    assert mm["hd95_mm"] == pytest.approx(math.sqrt(16 + 9 + 16))
    with pytest.raises(ValueError, match="convention"):
        class_metrics(full, full, "lenient")


def test_summarize_by_hand():
    classes = ["background", "a", "b"]
    per_case = [
        {"case": "c1", "a": {"dsc": 0.8, "hd95": 2.0, "empty": None}, "b": None},
        {"case": "c2", "a": {"dsc": 0.6, "hd95": 4.0, "empty": None}, "b": {"dsc": 0.0, "hd95": 10.0, "empty": "pred"}},
    ]
    s = summarize(per_case, classes)
    assert s["per_class"]["a"] == {"dsc": pytest.approx(0.7), "hd95": pytest.approx(3.0), "n": 2}
    assert s["per_class"]["b"]["n"] == 1 and s["n_empty_prediction"] == 1
    assert s["mean_dsc"] == pytest.approx((0.7 + 0.0) / 2) and s["mean_hd95"] == pytest.approx((3 + 10) / 2)


def test_case_metrics_iterates_foreground_classes():
    gt = np.zeros((3, 8, 8), np.int64)
    gt[:, 2:5, 2:5] = 1
    gt[:, 6:8, 6:8] = 2
    m = case_metrics(gt.copy(), gt, ["bg", "x", "y", "z"], "strict")
    assert set(m) == {"x", "y", "z"} and m["x"]["dsc"] == 1.0 and m["x"]["hd95"] == 0.0 and m["z"] is None


def test_edge_filter():
    pred = np.ones((2, 4, 10), np.uint8)
    out = edge_filter(pred, 3)
    assert out[..., :3].sum() == 0 and out[..., -3:].sum() == 0 and out[..., 3:7].all()
    assert edge_filter(pred, 0) is pred
    assert edge_filter(pred, 4)[..., 4:6].all()  # the widest filter that leaves columns
    for bad, match in ((-1, "expected a number of pixels >= 0, found -1"),
                       (5, r"would set the whole width of a volume of shape \(2, 4, 10\) \(10 pixels\)"),
                       (50, "expected at most 4")):
        with pytest.raises(ConfigError, match=match):
            edge_filter(pred, bad)
