import dataclasses
import types

import pytest
import torch

from pscv_dist.config import LossConfig
from pscv_dist.errors import ConfigError
from pscv_dist.losses import (OBJECTIVES, build_objective, entropy_minimization, mumford_shah, objective_names,
                              partial_cross_entropy, total_variation)
from pscv_dist.losses.objectives import PSCV


def _batch(b=4, k=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, k, (b, h, w), generator=g)
    points = torch.full_like(label, k)
    points[:, 2, 3], points[:, 5, 5] = label[:, 2, 3], label[:, 5, 5]
    present = torch.stack([torch.bincount(p[p < k], minlength=k) > 0 for p in points.flatten(1)])
    return {"image": torch.rand(b, 1, h, w, generator=g), "label": label, "points": points, "present": present}


def _build(name, seed=0, **loss):
    return build_objective(LossConfig(name=name, **loss), 3, 3, seed=seed)


def test_registry_is_the_one_list_of_names():
    assert objective_names() == ("pce", "entmini", "ms", "pscv", "fullsup")
    assert set(objective_names()) == set(OBJECTIVES)


@pytest.mark.parametrize("name", objective_names())
def test_every_objective_is_finite_and_backpropagates(name):
    batch = _batch()
    logits = torch.randn(4, 3, 8, 8, requires_grad=True)
    obj = _build(name)
    obj.start_step(0)
    out = obj(logits, batch, step=0)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values()) and logits.grad.abs().sum() > 0


def test_pscv_total_is_the_weighted_sum_of_its_terms():
    batch = _batch()
    logits = torch.randn(4, 3, 8, 8)
    obj = _build("pscv", lambda_cv=0.3, mu=1e-2, tau=0.1)
    out = obj(logits, batch, step=2)
    probs = logits.softmax(1)
    assert set(out) == {"loss", "pce", "cv", "tv"}
    assert out["pce"] == pytest.approx(partial_cross_entropy(logits, batch["points"], 3).item())
    assert out["tv"] == pytest.approx(total_variation(probs).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((out["pce"] + 0.3 * out["cv"] + 1e-2 * out["tv"]).item(), rel=1e-6)


def test_baseline_totals():
    batch = _batch()
    logits = torch.randn(4, 3, 8, 8)
    probs = logits.softmax(1)
    pce = partial_cross_entropy(logits, batch["points"], 3).item()
    ent = _build("entmini")(logits, batch, 0)["loss"].item()
    assert ent == pytest.approx(pce + 0.1 * entropy_minimization(probs).item(), rel=1e-6)
    ent = _build("entmini", lambda_ent=0.5)(logits, batch, 0)["loss"].item()
    assert ent == pytest.approx(pce + 0.5 * entropy_minimization(probs).item(), rel=1e-6)
    ms = _build("ms", lambda_ms=0.01, mu=0.1)(logits, batch, 0)["loss"].item()
    expected = pce + 0.01 * mumford_shah(probs, batch["image"]).item() + 0.1 * total_variation(probs).item()
    assert ms == pytest.approx(expected, rel=1e-6)


def _loss_and_grad(obj):
    logits = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = obj(logits, _batch(), step=0)
    out["loss"].backward()
    return out["loss"].detach(), logits.grad


@pytest.mark.parametrize("name,zero", [("entmini", {"lambda_ent": 0.0}), ("ms", {"lambda_ms": 0.0, "mu": 0.0}),
                                       ("pscv", {"lambda_cv": 0.0, "mu": 0.0})])
def test_a_term_at_zero_weight_is_pce_bit_for_bit(name, zero):
    """The study reads an arm's gap to pCE as its term's doing: at weight 0 nothing else may differ."""
    pce_loss, pce_grad = _loss_and_grad(_build("pce"))
    loss, grad = _loss_and_grad(_build(name, **zero))
    assert torch.equal(loss, pce_loss) and torch.equal(grad, pce_grad)


def test_a_1e_8_entropy_weight_changes_the_gradient():
    """The study's pce_nudged arm (pCE + 1e-8 x entropy) must differ from pCE, if only in the last bits."""
    _, pce_grad = _loss_and_grad(_build("pce"))
    _, nudged = _loss_and_grad(_build("entmini", lambda_ent=1e-8))
    assert not torch.equal(nudged, pce_grad) and torch.allclose(nudged, pce_grad, rtol=0, atol=1e-6)


def test_pscv_reads_every_key_of_its_config():
    cfg = LossConfig(name="pscv", lambda_cv=0.3, lambda_cv_warmup=4, mu=1e-2, tau=0.2, cv_classes="foreground",
                     gather_dtype="bfloat16")
    obj = build_objective(cfg, 3, 3, seed=7, compile=False)
    assert (obj.lambda_cv, obj.lambda_cv_warmup, obj.mu) == (0.3, 4, 1e-2)
    assert (obj.cv.tau, obj.cv.classes, obj.cv.gather_dtype, obj.cv.seed) == (0.2, "foreground", torch.bfloat16, 7)
    assert build_objective(dataclasses.replace(cfg, gather_dtype="float32"), 3, 3, seed=0).cv.gather_dtype is None


@pytest.mark.parametrize("name", objective_names())
def test_each_objective_declares_exactly_the_loss_keys_it_reads(name):
    """``reads`` (what a study compares when a default changes) is what from_config really reads."""
    read = set()

    class Recording:
        def __getattr__(self, key):
            read.add(key)
            return getattr(LossConfig(name=name), key)

    build_objective(Recording(), 3, 3, seed=0)
    assert read - {"name"} == set(OBJECTIVES[name].reads)
    assert set(OBJECTIVES[name].reads) <= {f.name for f in dataclasses.fields(LossConfig)}


def test_lambda_cv_warm_up_is_owned_by_the_objective():
    """λ(t) = λ_cv · min(1, (t+1)/warmup) for optimizer step t, set by start_step; the loss uses it."""
    batch, logits = _batch(), torch.randn(4, 3, 8, 8)
    obj = _build("pscv", lambda_cv=0.3, lambda_cv_warmup=4, mu=0.0)
    for step, expected in ((0, 0.075), (1, 0.15), (2, 0.225), (3, 0.3), (10, 0.3)):
        obj.start_step(step)
        assert obj.current_lambda_cv == pytest.approx(expected)
        out = obj(logits, batch, step=5)  # the stream step seeds the positives only
        assert out["loss"].item() == pytest.approx((out["pce"] + expected * out["cv"]).item(), rel=1e-6)
    flat = _build("pscv", lambda_cv=0.3)
    for step in (0, 5):
        flat.start_step(step)
        assert flat.current_lambda_cv == 0.3
    for name in ("pce", "entmini", "ms", "fullsup"):
        _build(name).start_step(3)  # every objective accepts the call


def test_unknown_objective_and_bad_options():
    # LossConfig refuses these itself; build_objective does too for anything with its fields
    def raw(**kw):
        return types.SimpleNamespace(**{**dataclasses.asdict(LossConfig()), **kw})

    with pytest.raises(ConfigError, match=r"loss.name='cv': expected one of \('pce', 'entmini'"):
        build_objective(raw(name="cv"), 3, 3, seed=0)
    with pytest.raises(ConfigError, match="loss.gather_dtype='float16'"):
        build_objective(raw(gather_dtype="float16"), 3, 3, seed=0)
    with pytest.raises(ValueError, match="lambda_cv_warmup"):
        PSCV(3, 3, lambda_cv_warmup=-1)
