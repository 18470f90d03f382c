"""The GPU check: one command, under 8 minutes on one H100/H200, a table at the end.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--store STORE] [--size 256] [--batch 12]

Without a GPU it says so and exits 0 having measured nothing (``--device cpu`` runs the same code
on the CPU at toy sizes: that is how CI keeps it working). On a GPU it measures:

1. The PSCV training step (UNet 16-256, batch 12, 256²) in images/s and peak memory: fp32 and bf16
   autocast, channels_last, with and without ``torch.compile``, against a bare loop of the same
   UNet and objective (no trainer, no data path) in the same settings.
2. The input stall: the share of a training step the trainer waits for its batch, with Kornia and
   DALI augmentation on the GPU (the trainer's own ``InputPipeline``: workers read, the GPU augments).
3. A short DeepSpeed bf16 run through a validation (``pscv train``: the bf16 dtype path of
   DeepSpeed's forward at validation).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fixed_batch(device, size, batch):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (batch, size, size), generator=g)
    points = torch.full_like(label, 4)
    points[:, size // 2, size // 2] = label[:, size // 2, size // 2]
    return {"image": torch.rand(batch, 1, size, size, generator=g).to(device), "label": label.to(device),
            "points": points.to(device), "present": torch.ones(batch, 4, dtype=torch.bool, device=device)}


def timed(fn, device, steps):
    """Seconds per call of ``fn`` (after 3 warm-up calls) and peak MiB allocated."""
    for i in range(3):
        fn(i)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i + 3)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t0) / steps, peak


def bare_step(device, store, size, batch, steps, precision, compile_):
    """A plain loop: the same UNet, PSCV objective and SGD on one batch already on the device."""
    from pscv_dist.config import load_config
    from pscv_dist.losses import build_objective
    from pscv_dist.model import UNet

    torch.manual_seed(0)
    cfg = load_config(None, ["loss.name=pscv"])
    model = UNet(1, 4).to(device).to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile_ else model
    obj = build_objective(cfg.loss, 4, 4, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    b = fixed_batch(device, size, batch)
    x = b["image"].contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def one(step):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = fwd(x)
        obj(logits.float(), b, step)["loss"].backward()
        opt.step()
    return timed(one, device, steps)


def our_step(device, store, size, batch, steps, precision, compile_):
    """``Trainer.train_step`` (engine, autocast, the NaN guard) on the same batch, repeated."""
    from pscv_dist.config import load_config
    from pscv_dist.distributed import DistState
    from pscv_dist.trainer import Trainer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"data.store={store}", "data.train_split=all", "data.val_split=null",
                                 f"data.batch_size={batch}", "loss.name=pscv", "tracking.enabled=false",
                                 f"train.out_dir={tmp}", "train.iterations=1000000", "train.progress=false",
                                 f"train.precision={precision}", f"model.compile={str(compile_).lower()}",
                                 "model.channels_last=true"])
        trainer = Trainer(cfg, DistState(device=device))
        b = fixed_batch(device, size, batch)
        return timed(lambda i: trainer.train_step(itertools.repeat(b)), device, steps)


def stall(store, device, backend, batch, steps, workers):
    """Share of step time the trainer spends waiting for the next batch (augmentation included
    on the device, as the trainer does)."""
    from pscv_dist.config import load_config
    from pscv_dist.distributed import DistState
    from pscv_dist.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"data.store={store}", "data.train_split=all", "data.val_split=null",
                                 f"data.batch_size={batch}", f"data.num_workers={workers}", f"augment.backend={backend}",
                                 "tracking.enabled=false", f"train.out_dir={tmp}", "train.iterations=1000000",
                                 "train.progress=false"])
        state = DistState(device=device)
        trainer = Trainer(cfg, state)
        it = iter(trainer.batches())
        wait = total = 0.0
        for i in range(steps + 3):
            sync(device)
            t0 = time.perf_counter()
            batch_ = next(it)
            sync(device)
            t1 = time.perf_counter()
            trainer.train_step(iter([batch_]))
            sync(device)
            t2 = time.perf_counter()
            if i >= 3:
                wait, total = wait + (t1 - t0), total + (t2 - t0)
        return wait / total, steps * batch / total


def deepspeed_bf16(store, workdir):
    """A 20-iteration DeepSpeed bf16 run with a validation at 10 and 20: exit code and its last line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "pscv_dist.train",
           f"data.store={store}", "data.train_split=all", "data.val_split=fold0/val", "data.batch_size=4",
           "data.num_workers=0", "train.iterations=20", "train.val_every=10", "train.ckpt_every=10",
           f"train.out_dir={workdir}/ds", "train.progress=false", "train.engine=deepspeed", "train.zero_stage=1",
           "train.precision=bf16", "tracking.enabled=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    summary = Path(workdir) / "ds" / "summary.json"
    ok = proc.returncode == 0 and summary.is_file()
    return {"ok": ok, "rc": proc.returncode,
            "val_mean_dsc": json.loads(summary.read_text()).get("val_mean_dsc") if ok else None,
            "tail": (proc.stdout + proc.stderr)[-1500:] if not ok else ""}


def make_store(tmp, size):
    from pscv_dist.data.prepare import PrepareConfig, prepare
    from pscv_dist.data.synthetic import write_phantoms

    src = write_phantoms(Path(tmp) / "ph", 8, seed=0, shape=(12, size, size))
    out = str(Path(tmp) / "s.zarr")
    prepare(PrepareConfig(str(src), out, "nifti", size=size, progress=False))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the same code at toy sizes)")
    ap.add_argument("--store", help="a store to read for the stall test (default: phantoms made here)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: compile, dali, deepspeed")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no GPU here (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a machine with an NVIDIA GPU; `--device cpu` exercises the code only.")
        return 0
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"gpu_check on {name}, torch {torch.__version__}, {a.size}x{a.size}, batch {a.batch}", flush=True)
    res = {"device": name, "torch": torch.__version__, "size": a.size, "batch": a.batch, "steps": {}, "stall": {}}
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        store = a.store or make_store(tmp, a.size)
        for precision in precisions:
            for compile_ in ([False] if "compile" in skip else [False, True]):
                for kind, fn in (("bare", bare_step), ("ours", our_step)):
                    key = f"{precision} channels_last {'compiled' if compile_ else 'eager'} {kind}"
                    sec, peak = fn(device, store, a.size, a.batch, a.steps, precision, compile_)
                    res["steps"][key] = {"images_per_s": a.batch / sec, "peak_mib": peak}
                    print(f"  step {key:<40} {a.batch / sec:8.1f} img/s  peak {peak:8.0f} MiB", flush=True)
        for backend in ["kornia"] + ([] if "dali" in skip else ["dali"]):
            try:
                frac, ips = stall(store, device, backend, a.batch, a.steps, a.workers)
                res["stall"][backend] = {"waiting_share": frac, "images_per_s": ips}
                print(f"  input stall {backend:<7} {frac:6.1%} of the step waiting, {ips:8.1f} img/s", flush=True)
            except Exception as exc:  # DALI absent or failing: reported, the rest goes on
                res["stall"][backend] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                print(f"  input stall {backend:<7} failed: {res['stall'][backend]['error']}", flush=True)
        if "deepspeed" not in skip and device.type == "cuda":
            res["deepspeed_bf16"] = deepspeed_bf16(store, tmp)
            print(f"  deepspeed bf16 through validation: {'ok' if res['deepspeed_bf16']['ok'] else 'FAILED'} "
                  f"(val DSC {res['deepspeed_bf16']['val_mean_dsc']})", flush=True)
    print("\n| step | img/s | peak MiB | ours / bare |\n|---|---|---|---|")
    for key, v in res["steps"].items():
        if key.endswith("ours"):
            bare = res["steps"][key[:-4] + "bare"]["images_per_s"]
            print(f"| {key[:-5]} | {v['images_per_s']:.1f} | {v['peak_mib']:.0f} | {v['images_per_s'] / bare:.2f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
