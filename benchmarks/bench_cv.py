"""CV-term benchmark on CPU: time and peak memory vs its floor, share of a UNet training step, and
the bytes the cross-rank gather moves.

    python benchmarks/bench_cv.py [--batch 12] [--classes 4] [--size 256] [--repeats 15]

Floor = what any implementation must do: one elementwise pass over the B·K·D maps and the
(BK×D)·(D×BK) similarity GEMM, forward and backward. Memory: the bytes autograd saves between forward
and backward (unique storages, inputs included), which is what grows a training step's peak.
"""
from __future__ import annotations

import argparse
import json

import torch
from timing import median_time, median_times  # benchmarks/timing.py (the script's own folder)


def inputs(b, k, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, s, s, generator=g)
    images = torch.rand(b, 1, s, s, generator=g)
    present = torch.rand(b, k, generator=g) < 0.8
    present[:, 0] = True
    return logits, images, present


def run_cv(b, k, s, compile=False):
    from pscv_dist.losses import ContrastiveVarianceLoss

    logits, images, present = inputs(b, k, s)
    probs = logits.softmax(1).requires_grad_(True)
    loss_fn = ContrastiveVarianceLoss(compile=compile)

    def fn():
        probs.grad = None
        loss_fn(probs, images, present, 0).backward()
    return fn


def run_cv_compiled(b, k, s):
    return run_cv(b, k, s, compile=True)


def run_floor(b, k, s):
    logits, _, _ = inputs(b, k, s)
    x = logits.softmax(1).requires_grad_(True)

    def fn():
        x.grad = None
        z = (x * x).reshape(b * k, s * s)  # one elementwise pass over B·K·D
        (z @ z.T).sum().backward()  # the similarity GEMM, forward and backward
    return fn


def run_step(b, k, s, objective):
    from pscv_dist.config import LossConfig
    from pscv_dist.losses import build_objective
    from pscv_dist.model import UNet

    torch.manual_seed(0)
    model = UNet(num_classes=k)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    logits, images, present = inputs(b, k, s)
    label = logits.argmax(1)
    points = torch.full_like(label, k)
    for n in range(b):
        for c in range(k):
            where = (label[n] == c).nonzero()
            if present[n, c] and len(where):
                points[n, where[0, 0], where[0, 1]] = c
    batch = {"image": images, "points": points, "label": label, "present": present}
    obj = build_objective(LossConfig(name=objective), k, k, seed=0)

    def fn():
        opt.zero_grad(set_to_none=True)
        obj(model(images), batch, 0)["loss"].backward()
        opt.step()
    return fn


def saved_mib(kind, b, k, s):
    """Memory autograd keeps between forward and backward (unique storages saved for backward):
    the part of a step's peak that grows with the loss's intermediates."""
    fn = globals()[kind](b, k, s)
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type == "cpu" and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    b, k, s = a.batch, a.classes, a.size
    turns = median_times({"cv": run_cv(b, k, s), "cvc": run_cv_compiled(b, k, s), "floor": run_floor(b, k, s)},
                         a.repeats)  # in turns: their ratios are what this table is for
    t_cv, t_cvc, t_floor = turns["cv"], turns["cvc"], turns["floor"]
    t_pce = median_time(run_step(b, k, s, "pce"), max(2, a.repeats // 2))
    t_pscv = median_time(run_step(b, k, s, "pscv"), max(2, a.repeats // 2))
    m_cv, m_floor = saved_mib("run_cv", b, k, s), saved_mib("run_floor", b, k, s)
    rows = [
        ("CV term fwd+bwd, eager", f"{t_cv * 1e3:.1f} ms", f"{m_cv:.0f} MiB"),
        ("CV term fwd+bwd, compile=True", f"{t_cvc * 1e3:.1f} ms", f"{saved_mib('run_cv_compiled', b, k, s):.0f} MiB"),
        ("floor (elementwise pass + similarity GEMM) fwd+bwd", f"{t_floor * 1e3:.1f} ms", f"{m_floor:.0f} MiB"),
        ("ratio eager CV / floor (goal <= 1.5)", f"{t_cv / t_floor:.2f}x", f"{m_cv / max(m_floor, 1e-9):.2f}x"),
        ("ratio compiled CV / floor (goal <= 1.5)", f"{t_cvc / t_floor:.2f}x",
         f"{saved_mib('run_cv_compiled', b, k, s) / max(m_floor, 1e-9):.2f}x"),
        ("UNet training step, pCE only", f"{t_pce * 1e3:.0f} ms", ""),
        ("UNet training step, PSCV (pCE + CV + TV)", f"{t_pscv * 1e3:.0f} ms", ""),
        ("CV share of the PSCV step (goal <= 10%)", f"{100 * t_cv / t_pscv:.1f} %", ""),
    ]
    d = s * s
    gather = []
    for w in (2, 8, 64):
        for name, nbytes in (("float32", 4), ("bfloat16", 2)):
            recv = (w - 1) * b * k * d * nbytes  # forward all-gather: the maps of the other ranks
            gather.append((f"W={w:<3} {name:<9}", f"{recv / 2**20:,.1f} MiB received", f"{w * b * k * d * nbytes / 2**20:,.1f} MiB gathered tensor"))
    if a.json:
        print(json.dumps({"rows": rows, "gather": gather}))
        return
    print(f"B={b} K={k} {s}x{s}, CPU, {torch.get_num_threads()} threads, median of {a.repeats}")
    w0 = max(len(r[0]) for r in rows)
    print(f"{'':<{w0}}  {'time':>10}  {'saved':>10}")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:>10}  {r[2]:>10}")
    print(f"\nbytes per rank per step (b={b} images per rank; backward moves the same again: reduce-scatter on NCCL, all-reduce on gloo)")
    for r in gather:
        print(f"{r[0]}  {r[1]:>24}  {r[2]:>30}")


if __name__ == "__main__":
    main()
