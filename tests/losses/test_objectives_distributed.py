"""Every objective meets METHOD.md's distributed contract on W real gloo processes (W = 2, 3).

With the global batch split exactly over W ranks and every objective built with the default group:
  mean of the ranks' values of each term == that term of one process on the whole batch, and
  (1/W) · a rank's gradient w.r.t. its own logits == the one-process gradient for those images.
pCE is the term this needs work for: its mean is over labelled pixels, and the ranks hold different
numbers of them (rank 1 holds none at all, and must still join the collective without NaN).
"""
import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pscv_dist.config import LossConfig
from pscv_dist.losses import build_objective, objective_names, partial_cross_entropy, soft_dice_loss

pytestmark = pytest.mark.slow
B_PER_RANK, K, H, W_PIX = 2, 3, 6, 5
LOSS = {"lambda_cv": 0.5, "mu": 0.1, "tau": 0.2, "lambda_ms": 0.1, "lambda_ent": 0.3}


def scenarios(world):
    """(name, batch) for the GLOBAL batch, identical in every process. ``uneven``: rank 0 has many
    clicks, rank 1 none, the others one per image; ``unlabelled``: no click anywhere."""
    g = torch.Generator().manual_seed(10 + world)
    n = world * B_PER_RANK
    logits = torch.randn(n, K, H, W_PIX, generator=g, dtype=torch.float64)
    label = torch.randint(0, K, (n, H, W_PIX), generator=g)
    points = torch.full_like(label, K)
    points[0:B_PER_RANK, ::2, ::2] = label[0:B_PER_RANK, ::2, ::2]  # rank 0: 9 clicks per image
    points[2 * B_PER_RANK:, 1, 1] = label[2 * B_PER_RANK:, 1, 1]  # ranks >= 2: one click per image
    if world == 2:
        points[:B_PER_RANK, 4, 4] = K  # so that W = 2 also has a rank with fewer clicks than another
    out = []
    for name, pts in (("uneven", points), ("unlabelled", torch.full_like(points, K))):
        present = torch.stack([torch.bincount(p[p < K], minlength=K) > 0 for p in pts.flatten(1)])
        image = torch.rand(n, 1, H, W_PIX, generator=g, dtype=torch.float64)
        out.append((name, logits, {"image": image, "label": label, "points": pts, "present": present}))
    return out


def _terms(logits, batch):
    """{(objective, term): value} and {(objective, None): logits gradient}, for one process or one rank."""
    res = {}
    for name in objective_names():
        x = logits.clone().requires_grad_(True)
        obj = build_objective(LossConfig(name=name, **LOSS), K, K, seed=5)
        obj.start_step(0)
        out = obj(x, batch, step=3)
        out["loss"].backward()
        res.update({(name, t): v.detach() for t, v in out.items()})
        res[name, None] = x.grad.detach()
    x = logits.clone().requires_grad_(True)
    pce = partial_cross_entropy(x, batch["points"], K)
    pce.backward()
    res["functional_pce", "value"], res["functional_pce", None] = pce.detach(), x.grad.detach()
    x = logits.clone().requires_grad_(True)
    dice = soft_dice_loss(x.softmax(1), batch["label"], [1, 2])
    dice.backward()
    res["functional_dice", "value"], res["functional_dice", None] = dice.detach(), x.grad.detach()
    return res


def _tol(key):
    """float64 everywhere except PSCV, which takes its softmax in float32 (as in training)."""
    return {"rtol": 1e-4, "atol": 1e-7} if key[0] == "pscv" else {"rtol": 1e-9, "atol": 1e-12}


def _worker(rank, world, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # a missed collective fails, not hangs
    rows = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
    results = {name: _terms(logits[rows], {k: v[rows] for k, v in batch.items()})
               for name, logits, batch in scenarios(world)}
    torch.save(results, f"{tmp}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_every_objective_is_split_invariant(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name, logits, batch in scenarios(world):
        n_clicks = [int((batch["points"][r * B_PER_RANK:(r + 1) * B_PER_RANK] != K).sum()) for r in range(world)]
        if name == "uneven":
            assert n_clicks == ([16, 0] if world == 2 else [18, 0, 2])
        full = _terms(logits, batch)
        for key, expected in full.items():
            if key[1] is None:  # gradients: (1/W) · the rank's == the one-process rows
                for r in range(world):
                    rows = slice(r * B_PER_RANK, (r + 1) * B_PER_RANK)
                    got = ranks[r][name][key] / world
                    assert torch.isfinite(got).all(), (name, key, r)
                    torch.testing.assert_close(got, expected[rows], **_tol(key),
                                               msg=lambda m, key=key, r=r: f"{name} {key} rank {r}: {m}")
            else:
                mean = sum(ranks[r][name][key] for r in range(world)) / world
                torch.testing.assert_close(mean, expected, **_tol(key), msg=lambda m, key=key: f"{name} {key}: {m}")
        if name == "unlabelled":
            assert all(ranks[r][name]["pce", "pce"] == 0 for r in range(world))
        else:  # rank 1 has no click: its pCE is 0, but the mean over ranks is still the global pCE
            assert ranks[1][name]["functional_pce", "value"] == 0 and full["functional_pce", "value"] > 0
            # the functional pCE is exact to float64 precision, not only to the float32 of PSCV's softmax
            mean = sum(ranks[r][name]["functional_pce", "value"] for r in range(world)) / world
            torch.testing.assert_close(mean, full["functional_pce", "value"], rtol=1e-12, atol=0)
        # the Dice of every rank is the global Dice (its sums are all-reduced)
        for r in range(world):
            torch.testing.assert_close(ranks[r][name]["functional_dice", "value"], full["functional_dice", "value"],
                                       rtol=1e-12, atol=0)

