"""How big each loss term is against pCE: value and gradient norm with respect to the logits, on real
training batches, for a model at initialisation or from a checkpoint.

    python benchmarks/loss_scales.py STORE [--checkpoint DIR_OR_MODEL_PT ...] [--batches 5] [--split fold0/train]

For each term t (pCE, MS, CV, EntMini, TV): the median over batches of the gradient norm with
respect to the logits and to the network's parameters (what the update sees), as a ratio to pCE's,
and λ* = the weight at which λ·‖∂t/∂θ‖ equals pCE's (where the term starts to dominate the
update). A weight far below λ* leaves the term without influence; far above, it drives training.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def term_grads(model, batch, ignore_index, tau=0.07):
    from pscv_dist.losses.contrastive import ContrastiveVarianceLoss
    from pscv_dist.losses.functional import entropy_minimization, mumford_shah, partial_cross_entropy, total_variation

    cv = ContrastiveVarianceLoss(tau=tau)
    terms = {
        "pCE": lambda lg: partial_cross_entropy(lg, batch["points"], ignore_index),
        "MS": lambda lg: mumford_shah(lg.softmax(1), batch["image"]),
        "CV": lambda lg: cv(lg.softmax(1), batch["image"], batch["present"], 0),
        "EntMini": lambda lg: entropy_minimization(lg.softmax(1)),
        "TV": lambda lg: total_variation(lg.softmax(1)),
    }
    out = {}
    params = [p for p in model.parameters() if p.requires_grad]
    for name, fn in terms.items():
        logits = model(batch["image"])
        value = fn(logits)
        grads = torch.autograd.grad(value, [logits, *params])
        g_theta = torch.sqrt(sum((g.double() ** 2).sum() for g in grads[1:]))
        out[name] = (float(value.detach()), float(grads[0].norm()), float(g_theta))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--checkpoint", action="append", default=[], help="a model to measure (repeatable); "
                    "always also the UNet at initialisation")
    ap.add_argument("--split", default="fold0/train")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--batch", type=int, default=12)
    a = ap.parse_args()
    from pscv_dist.data import SliceStore
    from pscv_dist.model import UNet
    from pscv_dist.model.bundle import load_model

    store = SliceStore(a.store)
    items = store.slice_indices(store.split(a.split))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(a.batches):
        idx = np.sort(rng.choice(items, a.batch, replace=False))
        ims, labs = zip(*(store.read_slices(int(i), int(i) + 1) for i in idx))
        batches.append({"image": torch.from_numpy(np.concatenate(ims))[:, None],
                        "points": torch.from_numpy(store.points(idx)).long(),
                        "present": torch.from_numpy(store.present[idx])})
    torch.manual_seed(0)
    models = [("init", UNet(1, store.num_classes))] + [(c, load_model(c)[0]) for c in a.checkpoint]
    print(f"{a.store}, {a.batches} batches of {a.batch} from {a.split}; medians over batches\n")
    print(f"{'model':<34} {'term':<8} {'value':>10} {'|d/dlogits|/pCE':>16} {'|d/dtheta|/pCE':>15} {'lambda*':>10}")
    for name, model in models:
        model.eval()  # the same logits for every term (no dropout draw in between)
        rows = {}
        for b in batches:
            for t, vals in term_grads(model, b, store.ignore_index).items():
                rows.setdefault(t, []).append(vals)
        pce_l, pce_t = (np.median([r[i] for r in rows["pCE"]]) for i in (1, 2))
        for t, vals in rows.items():
            v, gl, gt = (np.median([r[i] for r in vals]) for i in range(3))
            lam = pce_t / gt if gt > 0 else float("inf")
            print(f"{str(name)[-34:]:<34} {t:<8} {v:>10.4g} {gl / pce_l:>16.4g} {gt / pce_t:>15.4g} {lam:>10.3g}")


if __name__ == "__main__":
    main()
