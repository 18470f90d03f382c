"""Array operations of the writer: normalisation, resizing and point labels."""
import numpy as np
import pytest

from pscv_dist.data.volumes import (normalize_intensity, point_labels, point_rng, resize_image,
                                    resize_label, volume_points)

from .fixtures import nearest_index


def test_mr_normalisation_golden():
    # 100 values 0..99: the 99th percentile (linear) is 98.01; clip there, then min-max.
    x = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    y = normalize_intensity(x, "mr")
    assert y.min() == 0 and y.max() == pytest.approx(1.0)
    assert y.flat[50] == pytest.approx(50 / 98.01, rel=1e-6)
    assert y.flat[99] == pytest.approx(1.0)


def test_ct_normalisation_golden():
    x = np.array([-1000, -125, 75, 275, 3000], dtype=np.float32).reshape(1, 1, 5)
    np.testing.assert_allclose(normalize_intensity(x, "ct").ravel(), [0, 0, 0.5, 1, 1], rtol=1e-6)


def test_constant_volume_normalises_to_zero():
    assert not normalize_intensity(np.full((2, 3, 3), 7.0), "mr").any()


def test_unknown_normalisation_raises():
    with pytest.raises(ValueError, match="normalization"):
        normalize_intensity(np.zeros((1, 2, 2)), "pet")


@pytest.mark.parametrize("src,dst", [((37, 53), (32, 32)), ((20, 20), (64, 48)), ((256, 216), (256, 256))])
def test_resize_label_is_nearest_of_the_source(src, dst):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(3, *src), dtype=np.uint8)
    out = resize_label(label, dst)
    iy, ix = nearest_index(src[0], dst[0]), nearest_index(src[1], dst[1])
    np.testing.assert_array_equal(out, label[:, iy][:, :, ix])
    assert out.dtype == np.uint8


def test_resize_image_keeps_constant_and_range():
    img = np.full((2, 17, 23), 0.25, dtype=np.float32)
    np.testing.assert_allclose(resize_image(img, (32, 32)), 0.25, rtol=1e-6)
    ramp = np.linspace(0, 1, 40, dtype=np.float32)[None, None].repeat(40, 1)
    out = resize_image(ramp, (64, 64))
    assert out.min() >= 0 and out.max() <= 1 and np.all(np.diff(out[0, 0]) >= -1e-7)


def test_point_labels_one_per_present_class_on_that_class():
    rng = np.random.default_rng(5)
    for trial in range(50):
        label = rng.integers(0, 3, size=(12, 12)) * (rng.random((12, 12)) < 0.7)
        pts = point_labels(label, 4, point_rng(trial, "c", 0))
        for k in range(4):
            where = np.argwhere(pts == k)
            if (label == k).any():
                assert len(where) == 1 and label[tuple(where[0])] == k
            else:
                assert len(where) == 0
        assert ((pts == 4) | (pts == label)).all()


def test_point_labels_options():
    label = np.zeros((8, 8), dtype=np.int64)
    label[2:6, 2:6] = 1
    pts = point_labels(label, 2, np.random.default_rng(0), per_class=3, include_background=False)
    assert (pts == 1).sum() == 3 and (pts == 0).sum() == 0
    assert (label[pts == 1] == 1).all()


def test_points_depend_only_on_seed_case_and_slice():
    label = np.random.default_rng(1).integers(0, 3, size=(4, 16, 16)).astype(np.uint8)
    cfg = {"seed": 7, "per_class": 1, "include_background": True}
    a = volume_points(label, "case_a", 3, cfg)
    np.testing.assert_array_equal(a, volume_points(label, "case_a", 3, cfg))
    assert not np.array_equal(a, volume_points(label, "case_b", 3, cfg))
    assert not np.array_equal(a, volume_points(label, "case_a", 3, {**cfg, "seed": 8}))
