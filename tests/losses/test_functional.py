"""Functional loss pieces against hand-worked values and independent computations."""
import math

import pytest
import torch

from pscv_dist.losses import (entropy_minimization, mumford_shah, partial_cross_entropy, soft_dice_loss,
                              total_variation, variance_maps)


def test_pce_averages_over_labelled_pixels_only():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # B=1, K=2, H=1, W=2
    points = torch.tensor([[[0, 2]]])  # pixel 0 labelled class 0, pixel 1 ignored (ignore_index 2)
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert partial_cross_entropy(logits, points, 2).item() == pytest.approx(expected)


def test_pce_without_labels_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = partial_cross_entropy(logits, torch.full((2, 4, 4), 3), 3)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


def test_one_process_pce_is_exactly_the_plain_mean():
    """Without a process group the pCE is bit-for-bit today's: the mean over labelled pixels."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 5, generator=g)
    points = torch.full((3, 5, 5), 4)
    points[0, 1, 2], points[2, 3, 3], points[2, 0, 0] = 1, 3, 0
    assert torch.equal(partial_cross_entropy(logits, points, 4),
                       torch.nn.functional.cross_entropy(logits, points, ignore_index=4))


def test_variance_maps_by_hand():
    # I = (0, 1); class 0 probs (0.8, 0.2): c = 0.2, z = (0.04*0.8, 0.64*0.2)
    probs = torch.tensor([[[[0.8, 0.2]], [[0.2, 0.8]]]], dtype=torch.float64)
    images = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)
    z = variance_maps(probs, images)
    torch.testing.assert_close(z[0, 0], torch.tensor([0.032, 0.128], dtype=torch.float64))
    torch.testing.assert_close(z[0, 1], torch.tensor([0.128, 0.032], dtype=torch.float64))


def test_variance_maps_gradient_flows_through_the_class_mean():
    probs = torch.rand(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    images = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: variance_maps(p, images), (probs,))


def test_total_variation_by_hand():
    p = torch.zeros(2, 2, 2, 2)
    p[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # |1-0| down + |1-0| right = 2
    p[1, 1] = torch.tensor([[0.0, 0.0], [0.5, 0.5]])  # two vertical steps of 0.5 = 1
    assert total_variation(p).item() == pytest.approx((2 + 1) / 2)


def test_mumford_shah_is_summed_variance_maps():
    probs = torch.tensor([[[[0.8, 0.2]], [[0.2, 0.8]]]])
    images = torch.tensor([[[[0.0, 1.0]]]])
    assert mumford_shah(probs, images).item() == pytest.approx(0.032 + 0.128 + 0.128 + 0.032, rel=1e-6)


def test_entropy_minimization_bounds():
    uniform = torch.full((1, 4, 2, 2), 0.25)
    assert entropy_minimization(uniform).item() == pytest.approx(1.0)
    onehot = torch.zeros(1, 4, 2, 2)
    onehot[:, 2] = 1
    assert entropy_minimization(onehot).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_perfect_and_disjoint():
    label = torch.tensor([[[0, 1], [1, 0]]])
    perfect = torch.nn.functional.one_hot(label, 2).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(perfect, label, [1]).item() == pytest.approx(0.0, abs=1e-5)
    assert soft_dice_loss(1 - perfect, label, [1]).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("fn", [variance_maps, mumford_shah])
def test_ill_shape_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 3, 4, 4\)|\(2, 3, 4, 4\).*\(2, 1, 5, 4\)"):
        fn(torch.rand(2, 3, 4, 4), torch.rand(2, 1, 5, 4))


def test_ill_inputs():
    with pytest.raises(ValueError, match="int64"):
        partial_cross_entropy(torch.rand(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="points must be"):
        partial_cross_entropy(torch.rand(1, 2, 2, 2), torch.zeros(1, 3, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="probs must be"):
        total_variation(torch.rand(2, 2, 2))


def test_unit_variance_maps_backward_matches_autograd_and_gradcheck():
    from pscv_dist.losses.functional import unit_variance_maps, unit_variance_maps_autograd

    g = torch.Generator().manual_seed(3)
    probs = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64).softmax(1)
    images = torch.rand(3, 1, 5, 6, generator=g, dtype=torch.float64)
    probs[0, 2] = 0.0  # a class with no mass: z = 0, the eps branch of the norm
    w = torch.randn(3, 4, 30, generator=g, dtype=torch.float64)
    grads = []
    for fn in (unit_variance_maps, unit_variance_maps_autograd):
        p = probs.clone().requires_grad_(True)
        out = fn(p, images)
        (out * w).sum().backward()
        grads.append((out.detach(), p.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-9, atol=1e-12)
    q = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64).softmax(1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: unit_variance_maps(t, images[:2, :, :3, :4]), (q,))
    # images with a gradient go through autograd (the hand-written backward has none for them)
    im = images.clone().requires_grad_(True)
    unit_variance_maps(probs, im).sum().backward()
    assert im.grad is not None


def test_unit_variance_maps_keep_their_dtype_under_autocast():
    """The pixel sums are matrix products, which autocast would run in bf16: it is off inside."""
    from pscv_dist.losses.functional import unit_variance_maps

    g = torch.Generator().manual_seed(4)
    probs = torch.randn(2, 3, 16, 16, generator=g).softmax(1)
    images = torch.rand(2, 1, 16, 16, generator=g)
    runs = []
    for amp in (False, True):
        p = probs.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = unit_variance_maps(p, images)
            out.square().sum().backward()
        runs.append((out, p.grad))
    assert runs[1][0].dtype == runs[1][1].dtype == torch.float32
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=0)
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-6, atol=1e-7)
