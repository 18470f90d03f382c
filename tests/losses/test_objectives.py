import pytest
import torch

from pscv_dist.losses import (OBJECTIVES, build_objective, entropy_minimization, mumford_shah,
                              partial_cross_entropy, total_variation)


def _batch(b=4, k=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, k, (b, h, w), generator=g)
    points = torch.full_like(label, k)
    points[:, 2, 3], points[:, 5, 5] = label[:, 2, 3], label[:, 5, 5]
    present = torch.stack([torch.bincount(p[p < k], minlength=k) > 0 for p in points.flatten(1)])
    return {"image": torch.rand(b, 1, h, w, generator=g), "label": label, "points": points, "present": present}


def test_registry_names():
    assert set(OBJECTIVES) == {"pce", "entmini", "ms", "pscv", "fullsup"}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_is_finite_and_backpropagates(name):
    batch = _batch()
    logits = torch.randn(4, 3, 8, 8, requires_grad=True)
    out = build_objective(name, 3, 3)(logits, batch, step=0)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values()) and logits.grad.abs().sum() > 0


def test_pscv_total_is_the_weighted_sum_of_its_terms():
    batch = _batch()
    logits = torch.randn(4, 3, 8, 8)
    obj = build_objective("pscv", 3, 3, lambda_cv=0.3, mu=1e-2, tau=0.1)
    out = obj(logits, batch, step=2)
    probs = logits.softmax(1)
    assert out["pce"] == pytest.approx(partial_cross_entropy(logits, batch["points"], 3).item())
    assert out["tv"] == pytest.approx(total_variation(probs).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((out["pce"] + 0.3 * out["cv"] + 1e-2 * out["tv"]).item(), rel=1e-6)


def test_baseline_totals():
    batch = _batch()
    logits = torch.randn(4, 3, 8, 8)
    probs = logits.softmax(1)
    pce = partial_cross_entropy(logits, batch["points"], 3).item()
    ent = build_objective("entmini", 3, 3)(logits, batch, 0)["loss"].item()
    assert ent == pytest.approx(pce + 0.1 * entropy_minimization(probs).item(), rel=1e-6)
    ms = build_objective("ms", 3, 3, lambda_ms=0.01, mu=0.1)(logits, batch, 0)["loss"].item()
    expected = pce + 0.01 * mumford_shah(probs, batch["image"]).item() + 0.1 * total_variation(probs).item()
    assert ms == pytest.approx(expected, rel=1e-6)


def test_unknown_objective_and_parameter():
    with pytest.raises(ValueError, match="loss 'cv' is not known"):
        build_objective("cv", 3, 3)
    with pytest.raises(ValueError, match="loss 'pce'.*lambda_cv"):
        build_objective("pce", 3, 3, lambda_cv=1.0)
