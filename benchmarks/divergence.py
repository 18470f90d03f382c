"""How far a tiny change to the gradient moves a training: pCE against arms that add a term at a
given weight (by default 1e-8, 1e-3 and 0.1 x the entropy, and 0 as the control), same seed, same
data order, same augmentation.

    python benchmarks/divergence.py STORE [--config cpu_quick] [--steps 60] [--every 20] [--seed 0]
        [--arm NAME=key=value,key=value ...] [--set key=value ...] [--val-split fold0/val] [--out NEW_DIR]

Every arm is a real ``pscv train`` (the users' code path, one process, ``--set`` overrides on
all). At each checkpoint step it prints, per arm, the weights' relative distance to pCE's,
``||theta_arm - theta_pce|| / ||theta_pce||`` over the floating-point tensors of the model state, and
the share of pixels of the first 64 validation slices whose predicted class differs from pCE's
model. A term at weight 0 must give 0 and 0 (the paths are the same); if a 1e-8 term moves a run
as far as a weight that matters, training is chaotic at this scale and two methods run with the same
seed are two draws of the trajectory: the study's ``pce_nudged`` arm measures what that costs.
"""
from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

DEFAULT_ARMS = ["entmini_0=loss.name=entmini,loss.lambda_ent=0", "entmini_1e-8=loss.name=entmini,loss.lambda_ent=1e-8",
                "entmini_1e-3=loss.name=entmini,loss.lambda_ent=1e-3", "entmini_0.1=loss.name=entmini,loss.lambda_ent=0.1"]


def train(store: str, config: str, out: Path, steps: int, every: int, seed: int, extra: list[str]) -> None:
    args = ["train", "--config", config, f"data.store={store}", f"train.out_dir={out}", f"train.iterations={steps}",
            f"train.ckpt_every={every}", f"train.keep_last={steps // every + 1}", f"train.val_every={10 * steps}",
            f"train.seed={seed}", "train.progress=false", "tracking.enabled=false", "data.num_workers=0", *extra]
    proc = subprocess.run([sys.executable, "-m", "pscv_dist.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"pscv train {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def load(run: Path, step: int, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The floating-point tensors of a checkpoint's model state, and its predicted classes on ``images``."""
    from pscv_dist.model.bundle import load_model

    model, _ = load_model(run / "checkpoints" / f"step_{step:08d}")
    with torch.no_grad():
        pred = model(images).argmax(1)
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}, pred


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a|| over every floating-point tensor, in float64."""
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    return math.sqrt(num / sum(float((a[k].double() ** 2).sum()) for k in a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--config", default="cpu_quick")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arm", action="append", default=None, metavar="NAME=key=value,...",
                    help="an arm against pCE (repeatable); default: entropy at 0, 1e-8, 1e-3, 0.1")
    ap.add_argument("--set", action="append", default=[], metavar="key=value", help="an override for every arm")
    ap.add_argument("--val-split", default="fold0/val")
    ap.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    a = ap.parse_args()
    if a.every < 1 or a.steps < a.every or a.steps % a.every:
        sys.exit(f"--steps {a.steps}, --every {a.every}: expected --every >= 1 and --steps a multiple of it")
    arms = {}
    for spec in a.arm or DEFAULT_ARMS:
        name, _, sets = spec.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", name) or not sets:
            sys.exit(f"--arm {spec!r}: expected NAME=key=value[,key=value] with NAME a plain folder name")
        if name == "pce" or name in arms:
            sys.exit(f"--arm {spec!r}: the name {name!r} is {'the reference' if name == 'pce' else 'given twice'}")
        arms[name] = sets.split(",")
    if a.out and Path(a.out).exists() and (not Path(a.out).is_dir() or any(Path(a.out).iterdir())):
        sys.exit(f"--out {a.out}: exists and is not an empty folder; choose a new one (runs there would resume)")

    from pscv_dist.data import SliceStore
    from pscv_dist.errors import PscvError

    try:
        store = SliceStore(a.store)
        idx = store.slice_indices(store.split(a.val_split))[:64]
    except PscvError as exc:
        sys.exit(f"divergence: {exc}")
    images = torch.from_numpy(np.concatenate([store.read_slices(int(i), int(i) + 1)[0] for i in idx]))[:, None]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out or tmp)
        runs = {"pce": ["loss.name=pce"], **arms}
        for n, (name, sets) in enumerate(runs.items(), 1):
            print(f"[{n}/{len(runs)}] training {name} for {a.steps} steps", file=sys.stderr, flush=True)
            train(a.store, a.config, root / name, a.steps, a.every, a.seed, [*a.set, *sets])
        print(f"{a.store}, {a.config}, seed {a.seed}: distance to pCE's weights and share of "
              f"{len(idx)} {a.val_split} slices' pixels predicted differently\n")
        print(f"{'arm':<16} {'step':>6} {'|dtheta|/|theta|':>17} {'pixels differ':>14}")
        for step in range(a.every, a.steps + 1, a.every):
            ref, ref_pred = load(root / "pce", step, images)
            for name in arms:
                state, pred = load(root / name, step, images)
                d, diff = distance(ref, state), float((pred != ref_pred).float().mean())
                print(f"{name:<16} {step:>6} {d:>17.4g} {diff:>14.4f}")


if __name__ == "__main__":
    main()
