"""The launch/ scripts run as written (2 CPU processes, gloo) on a tiny phantom store.

SLURM itself cannot exist here: `srun` and `scontrol` are emulated by two small scripts on PATH
(srun runs its command once, as on a one-node allocation); the sbatch script is otherwise real.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nothing listens on now (fixed ports collide on a shared machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pscv_dist.data.prepare import PrepareConfig, prepare
    from pscv_dist.data.synthetic import write_phantoms

    root = tmp_path_factory.mktemp("launch")
    src = write_phantoms(root / "ph", 4, seed=5, shape=(4, 32, 32))
    prepare(PrepareConfig(str(src), str(root / "s.zarr"), "nifti", size=32, progress=False))
    cfg = {"data": {"store": str(root / "s.zarr"), "batch_size": 4, "num_workers": 0},
           "model": {"base_width": 4}, "train": {"iterations": 3, "ckpt_every": 3, "log_every": 1, "progress": False},
           "tracking": {"enabled": False}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return root


def run(cmd, root, env_extra=None, out="run"):
    env = {**os.environ, "NPROC": "2", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env_extra or {})}
    proc = subprocess.run([*cmd, str(root / "tiny.yaml"), f"train.out_dir={root / out}"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads(line) for line in (root / out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]
    return proc


def test_torchrun_single(tiny):
    run(["bash", "launch/torchrun_single.sh"], tiny, out="single")


def test_torchrun_multi_one_node(tiny):
    run(["bash", "launch/torchrun_multi.sh"], tiny, {"NNODES": "1", "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}", "JOB_ID": "t1"},
        out="multi")


def test_slurm_script(tiny, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (fake / "scontrol").write_text('#!/usr/bin/env bash\necho localhost\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "RDZV_PORT": str(free_port())}
    run(["bash", "launch/slurm.sbatch"], tiny, env, out="slurm")


def test_deepspeed_launcher(tiny):
    pytest.importorskip("deepspeed")
    run(["bash", "launch/deepspeed.sh"], tiny, {"MASTER_PORT": str(free_port())}, out="ds")
