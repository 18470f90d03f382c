"""Shared fixtures: paths to the real data in ../shared (skipped with a reason when absent), the
phantom source and store, and a process that holds a run lock."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("PSCV_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ACDC_H5 = SHARED / "data" / "acdc_wsl4mis" / "ACDC_training_volumes"
PROSTATE = SHARED / "data" / "prostatex"


@pytest.fixture(scope="session")
def acdc_h5_dir() -> Path:
    if not ACDC_H5.is_dir():
        pytest.skip(f"real ACDC volumes not found at {ACDC_H5} (set PSCV_SHARED to the shared folder)")
    return ACDC_H5


@pytest.fixture(scope="session")
def prostate_dir() -> Path:
    if not (PROSTATE / "Prostatex_0000.nii.gz").exists():
        pytest.skip(f"real prostate NIfTI not found at {PROSTATE} (set PSCV_SHARED to the shared folder)")
    return PROSTATE


@pytest.fixture(scope="session")
def phantom_src(tmp_path_factory) -> Path:
    """Six small phantoms in the nifti layout, written once per session."""
    from pscv_dist.data.synthetic import write_phantoms

    return write_phantoms(tmp_path_factory.mktemp("phantoms"), 6, seed=1, shape=(5, 40, 48))


@pytest.fixture(scope="session")
def phantom_store(phantom_src, tmp_path_factory) -> Path:
    from pscv_dist.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("stores") / "phantoms.zarr"
    prepare(PrepareConfig(src=str(phantom_src), out=str(out), layout="nifti", size=32, seed=3, progress=False))
    return out


@pytest.fixture
def hold_lock():
    """``hold_lock(path)`` starts a process holding an exclusive ``flock`` on ``path`` with its pid
    written in it, as a live run holds its lock; each one is killed when the test ends."""
    procs: list[subprocess.Popen] = []

    def start(lock: Path) -> subprocess.Popen:
        code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
                "time.sleep(120)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdout.close()
