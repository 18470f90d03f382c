"""The distributed semantics of METHOD.md, on W real gloo processes (no ports: a file:// store).

For the CV loss over a global batch split exactly across W ranks (b images each):
  mean of the ranks' losses == the one-process loss on the concatenated W·b batch, and
  (1/W) · a rank's gradient w.r.t. its own probs == the one-process gradient for those images.
"""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pscv_dist.losses import ContrastiveVarianceLoss

pytestmark = pytest.mark.slow
B_PER_RANK, K, H, W_PIX = 3, 4, 6, 5


def scenarios(world):
    """(name, options, probs, images, present) for the GLOBAL batch, identical in every process."""
    g = torch.Generator().manual_seed(world)
    n = world * B_PER_RANK
    probs = torch.randn(n, K, H, W_PIX, generator=g, dtype=torch.float64).softmax(1)
    images = torch.rand(n, 1, H, W_PIX, generator=g, dtype=torch.float64)
    present = torch.rand(n, K, generator=g) < 0.7
    present[:, 0] = True
    present[:, 3] = False
    present[1, 3] = present[2, 3] = True  # class 3 present on rank 0 only
    present[:, 2] = False
    present[n - 1, 2] = True  # class 2 in one image: its anchor has no positive
    out = [("all", {}, probs, images, present),
           ("foreground", {"classes": "foreground"}, probs, images, present),
           ("absent-on-some-rank", {}, probs, images, present & (torch.arange(n)[:, None] < B_PER_RANK + 1)),
           # a bounded pool smaller than one rank's batch, and one spanning ranks unevenly
           ("pool-2", {"pool": 2}, probs, images, present),
           ("pool-4-foreground", {"pool": 4, "classes": "foreground"}, probs, images, present)]
    return out


def _worker(rank, world, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    results = {}
    for name, opts, probs, images, present in scenarios(world):
        rows = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
        for dtype_name, gdt in (("f64", None), ("bf16", torch.bfloat16)):
            local = probs[rows].clone().requires_grad_(True)
            loss = ContrastiveVarianceLoss(tau=0.1, seed=5, gather_dtype=gdt, **opts)(local, images[rows], present[rows], 17)
            loss.backward()
            results[name, dtype_name] = (loss.detach(), local.grad.detach())
    torch.save(results, f"{tmp}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_cv_loss_and_gradient_match_one_process(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name, opts, probs, images, present in scenarios(world):
        full = probs.clone().requires_grad_(True)
        loss = ContrastiveVarianceLoss(tau=0.1, seed=5, **opts)(full, images, present, 17)
        loss.backward()
        assert loss.item() > 0, name
        mean_loss = sum(r[name, "f64"][0] for r in ranks) / world
        torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-6, atol=0)
        for r in range(world):
            rows = slice(r * B_PER_RANK, (r + 1) * B_PER_RANK)
            torch.testing.assert_close(ranks[r][name, "f64"][1] / world, full.grad[rows], rtol=1e-6, atol=1e-12)
            # bf16 transport: same loss to bf16 precision of the maps (8 bits of mantissa)
            torch.testing.assert_close(sum(x[name, "bf16"][0] for x in ranks) / world, loss.detach(), rtol=3e-2, atol=0)
