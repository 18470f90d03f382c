"""``pscv demo``: the whole system end to end on CPU in a few minutes.

synthetic phantoms -> store -> 2-rank gloo training under torchrun -> evaluation of the best
checkpoint on held-out phantoms -> all of it in one MLflow run (local sqlite store).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .config import PRESETS_DIR, read_yaml_config
from .errors import PscvError

PRESET = PRESETS_DIR / "demo.yaml"  # the packaged preset: the one copy of the demo's config (not cwd-dependent)
N_PHANTOMS, SIZE = 20, 64


def run_demo(out: str = "demo_out", workers: int = 2, iterations: int | None = None) -> dict:
    from .data.prepare import PrepareConfig, prepare
    from .data.synthetic import write_phantoms
    from .eval.run import run_evaluation
    from .trainer import SUMMARY
    from .tracking import attach_run

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[1/4] writing {N_PHANTOMS} synthetic phantoms (NIfTI) to {out_dir / 'phantoms'}")
    src = write_phantoms(out_dir / "phantoms", N_PHANTOMS, seed=0)
    store = out_dir / "store.zarr"
    print(f"[2/4] converting them to a Zarr v3 store with one click per organ per slice: {store}")
    prepare(PrepareConfig(str(src), str(store), "nifti", size=SIZE, seed=0, workers=workers, overwrite=True))

    cfg = read_yaml_config(PRESET)
    cfg["data"]["store"] = str(store)
    cfg["train"]["out_dir"] = str(out_dir / "run")
    if iterations is not None:
        cfg["train"]["iterations"] = iterations
        cfg["train"]["val_every"] = cfg["train"]["ckpt_every"] = max(1, iterations // 3)
    cfg_path = out_dir / "demo_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"[3/4] training PSCV on {workers} CPU ranks (gloo) under torchrun, config {cfg_path}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
           "-m", "pscv_dist.train", "--config", str(cfg_path)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PscvError(f"training failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    summary = json.loads((Path(cfg["train"]["out_dir"]) / SUMMARY).read_text())

    print(f"[4/4] evaluating the best checkpoint on the held-out phantoms ({cfg['data']['val_split']})")
    with attach_run(summary["tracking_uri"], summary["mlflow_run_id"]):
        results = run_evaluation(str(out_dir / "run" / "best"), str(store), cfg["data"]["val_split"],
                                 out=str(out_dir / "results.json"), plots=str(out_dir / "eval"))
    print(f"\ndone in {time.time() - t0:.0f} s. Look at:\n"
          f"  results      {out_dir / 'results.json'} (mean DSC {results['mean_dsc']:.3f})\n"
          f"  plots        {out_dir / 'eval'}\n"
          f"  MLflow       mlflow ui --backend-store-uri {summary['tracking_uri']}\n"
          f"  predict      pscv predict --checkpoint {out_dir / 'run' / 'best'} {src / 'imagesTr'} {out_dir / 'pred'}")
    return {"train": summary, "eval": results}
