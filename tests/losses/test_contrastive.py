"""The CV loss in one process: hand-worked golden values, a loop reference, gradcheck, errors."""
import math

import pytest
import torch

from pscv_dist.losses import ContrastiveVarianceLoss, draw_positives

from .reference import cv_reference


def _two_pixel_batch(patterns):
    """probs (B, K, 1, 2) from per-image lists of per-class (p1, p2); image I = (0, 1).
    With I = (0, 1) the variance map of (p1, p2) is ∝ (p2, p1), so cosines are those of the probs."""
    probs = torch.tensor([[[[p1, p2]] for p1, p2 in img] for img in patterns], dtype=torch.float64)
    images = torch.tensor([[[[0.0, 1.0]]]] * len(patterns), dtype=torch.float64)
    return probs, images


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_golden_two_images_two_classes():
    # A: class0 (0.8, 0.2) -> u ∝ (1, 4), class1 (0.2, 0.8) -> v ∝ (4, 1); B swapped.
    # Anchor (A,0): positive (B,0) = v, cos(u, v) = 8/17; one negative (B,1) = u, cos = 1.
    # ℓ = log(e^{(8/17)/τ} + e^{1/τ}) - (8/17)/τ = softplus((9/17)/τ), the same for all 4 anchors.
    probs, images = _two_pixel_batch([[(0.8, 0.2), (0.2, 0.8)], [(0.2, 0.8), (0.8, 0.2)]])
    present = torch.ones(2, 2, dtype=torch.bool)
    for tau in (1.0, 0.07):
        loss = ContrastiveVarianceLoss(tau=tau)(probs, images, present, step=0)
        expected = 4 * math.log1p(math.exp(9 / 17 / tau)) / 2
        assert loss.item() == pytest.approx(expected, rel=1e-7)


def test_golden_three_images_three_classes_each_present_twice():
    # Every image: class0 (0.6, 0.2) -> a ∝ (1, 3); class1 (0.2, 0.6) -> b ∝ (3, 1); class2 (0.2, 0.2) -> e ∝ (1, 1)
    # cos(a,b) = 0.6, cos(a,e) = cos(b,e) = r = 2/√5. Present: img0 {0,1}, img1 {0,2}, img2 {1,2}:
    # each class in exactly two images, so every positive is forced and has cos 1.
    probs, images = _two_pixel_batch([[(0.6, 0.2), (0.2, 0.6), (0.2, 0.2)]] * 3)
    present = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    tau, r = 0.5, 2 / math.sqrt(5)
    t = lambda s: s / tau  # noqa: E731
    l_00 = lse(t(1), t(r), t(0.6), t(r)) - t(1)  # (0,0): negatives (1,2)=e, (2,1)=b, (2,2)=e
    l_01 = lse(t(1), t(0.6), t(r), t(r)) - t(1)  # (0,1): negatives (1,0)=a, (1,2)=e, (2,2)=e
    l_10 = lse(t(1), t(0.6), t(0.6), t(r)) - t(1)  # (1,0): negatives (0,1)=b, (2,1)=b, (2,2)=e
    l_12 = lse(t(1), t(r), t(r), t(r)) - t(1)  # (1,2): negatives (0,0)=a, (0,1)=b, (2,1)=b
    l_21 = lse(t(1), t(0.6), t(0.6), t(r)) - t(1)  # (2,1): negatives (0,0)=a, (1,0)=a, (1,2)=e
    l_22 = lse(t(1), t(r), t(r), t(r)) - t(1)  # (2,2): negatives (0,0)=a, (0,1)=b, (1,0)=a
    expected = (l_00 + l_01 + l_10 + l_12 + l_21 + l_22) / 3
    loss = ContrastiveVarianceLoss(tau=tau)(probs, images, present, step=5)
    assert loss.item() == pytest.approx(expected, rel=1e-7)


def _random_case(b=5, k=3, h=4, w=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(b, k, h, w, generator=g, dtype=dtype).softmax(1)
    images = torch.rand(b, 1, h, w, generator=g, dtype=dtype)
    present = torch.rand(b, k, generator=g) < 0.6
    present[:, 0] = True
    present[:, -1] = False
    present[0, -1] = True  # the last class is present in one image only: an anchor with no positive
    return probs, images, present


@pytest.mark.parametrize("classes", ["all", "foreground"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(classes, seed):
    probs, images, present = _random_case(seed=seed)
    step = 11 + seed
    loss = ContrastiveVarianceLoss(tau=0.1, seed=3, classes=classes)(probs, images, present, step)
    pos = draw_positives(present, 3, step)
    expected = cv_reference(probs, images, present, pos.tolist(), 0.1, classes)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("classes", ["all", "foreground"])
@pytest.mark.parametrize("size", [2, 3, 5])
def test_a_bounded_pool_matches_the_loop_reference_on_that_pool(classes, size):
    from pscv_dist.losses.contrastive import draw_pool

    probs, images, present = _random_case(b=7, seed=size)
    loss = ContrastiveVarianceLoss(tau=0.1, seed=3, classes=classes, pool=size)(probs, images, present, 9)
    pool = draw_pool(7, size, 3, 9).tolist()
    assert len(set(pool)) == size and pool == sorted(pool)
    cand = present & torch.tensor([i in pool for i in range(7)])[:, None]
    pos = draw_positives(cand, 3, 9)
    assert all(m in pool for m in pos.flatten().tolist() if m >= 0)
    expected = cv_reference(probs, images, present, pos.tolist(), 0.1, classes, pool=pool)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_a_pool_as_large_as_the_batch_is_the_global_loss():
    probs, images, present = _random_case(b=5, seed=7)
    ref = ContrastiveVarianceLoss(tau=0.1, seed=3)(probs, images, present, 4)
    for size in (5, 50):
        assert ContrastiveVarianceLoss(tau=0.1, seed=3, pool=size)(probs, images, present, 4).item() == ref.item()


def test_pools_differ_between_steps_and_cover_the_batch():
    from pscv_dist.losses.contrastive import draw_pool

    pools = [tuple(draw_pool(12, 4, 0, s).tolist()) for s in range(300)]
    assert len(set(pools)) > 200
    counts = torch.bincount(torch.tensor(pools).flatten(), minlength=12).double()
    assert counts.min() > 0.7 * counts.mean()  # every image gets into pools about equally (300·4/12 = 100)


def test_gradcheck():
    probs, images, present = _random_case(b=3, k=3, h=3, w=3, seed=4)
    logits = probs.log().detach().requires_grad_(True)
    loss_fn = ContrastiveVarianceLoss(tau=0.2)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x.softmax(1), images, present, 1), (logits,))


def test_all_absent_gives_zero_with_gradient():
    probs = torch.rand(3, 2, 4, 4, requires_grad=True)
    loss = ContrastiveVarianceLoss()(probs, torch.rand(3, 1, 4, 4), torch.zeros(3, 2, dtype=torch.bool), 0)
    loss.backward()
    assert loss.item() == 0 and probs.grad is not None and torch.isfinite(probs.grad).all()


def test_no_positive_anywhere_gives_zero():
    probs = torch.rand(2, 2, 4, 4).softmax(1)
    present = torch.tensor([[True, False], [False, True]])  # each class in one image only
    assert ContrastiveVarianceLoss()(probs, torch.rand(2, 1, 4, 4), present, 0).item() == 0


def test_zero_variance_map_is_eps_safe():
    probs = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    probs[:, 0] = 1.0  # class 1 has all-zero probabilities -> zero variance map
    logits = probs.clamp_min(1e-300).log().requires_grad_(True)
    loss = ContrastiveVarianceLoss()(logits.softmax(1), torch.rand(2, 1, 4, 4, dtype=torch.float64),
                                     torch.ones(2, 2, dtype=torch.bool), 0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_positive_draw_is_valid_deterministic_and_uniform():
    present = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    counts = torch.zeros(4, 4)
    for step in range(3000):
        pos = draw_positives(present, 0, step)
        for n in range(4):
            m = int(pos[n, 0])
            assert m != n and present[m, 0]
            counts[n, m] += 1
        assert pos[1, 1] in (0, 2, 3) and pos[3, 1] in (0, 2)
    torch.testing.assert_close(draw_positives(present, 0, 7), draw_positives(present, 0, 7))
    assert not all(torch.equal(draw_positives(present, 0, 7), draw_positives(present, 0, s)) for s in range(8, 20))
    # class 0 is present in images 0, 1, 2: each anchor picks one of the two others, ~1500 each
    for n, others in ((0, (1, 2)), (1, (0, 2)), (2, (0, 1))):
        for m in others:
            assert abs(counts[n, m] - 1500) < 5 * math.sqrt(3000 * 0.25)


def test_ill_options_and_shapes():
    with pytest.raises(ValueError, match="tau"):
        ContrastiveVarianceLoss(tau=0)
    with pytest.raises(ValueError, match="classes"):
        ContrastiveVarianceLoss(classes="some")
    with pytest.raises(ValueError, match="gather_dtype"):
        ContrastiveVarianceLoss(gather_dtype=torch.int8)
    for bad in (1, 0, True, 2.5):
        with pytest.raises(ValueError, match="pool must be None"):
            ContrastiveVarianceLoss(pool=bad)
    loss = ContrastiveVarianceLoss()
    with pytest.raises(ValueError, match=r"present must be bool \(B, K\) = \(2, 3\)"):
        loss(torch.rand(2, 3, 4, 4), torch.rand(2, 1, 4, 4), torch.ones(2, 2, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match=r"images must be \(B, 1, H, W\)"):
        loss(torch.rand(2, 3, 4, 4), torch.rand(2, 1, 4, 5), torch.ones(2, 3, dtype=torch.bool), 0)
    nan = torch.rand(2, 3, 4, 4)
    nan[0, 0, 0, 0] = float("nan")  # not raised here: a non-finite loss, caught by the trainer's guard
    assert not torch.isfinite(loss(nan, torch.rand(2, 1, 4, 4), torch.ones(2, 3, dtype=torch.bool), 0))


@pytest.mark.slow
def test_compiled_variance_maps_match_eager():
    probs, images, present = _random_case(b=4, k=3, h=8, w=8, seed=6, dtype=torch.float32)
    a = probs.clone().requires_grad_(True)
    c = probs.clone().requires_grad_(True)
    eager = ContrastiveVarianceLoss(tau=0.1)(a, images, present, 3)
    compiled = ContrastiveVarianceLoss(tau=0.1, compile=True)(c, images, present, 3)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.grad, a.grad, rtol=1e-4, atol=1e-6)
