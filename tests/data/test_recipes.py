"""data_prep recipes run as written."""
import os
import subprocess
import sys
from pathlib import Path

from pscv_dist.data import SliceStore

from .fixtures import write_acdc_raw

ROOT = Path(__file__).resolve().parents[2]


def test_acdc_raw_recipe(tmp_path):
    src = write_acdc_raw(tmp_path / "acdc", patients=(1, 2))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SIZE": "16", "WORKERS": "1"}
    proc = subprocess.run(["bash", "data_prep/acdc_raw.sh", str(src), str(tmp_path / "o.zarr")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    store = SliceStore(str(tmp_path / "o.zarr"))
    assert len(store.cases) == 4 and store.size == 16 and "fold1/val" in store.splits


def test_phantoms_script(tmp_path):
    proc = subprocess.run([sys.executable, "data_prep/phantoms.py", str(tmp_path / "ph"), "--n", "2"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "ph" / "imagesTr").glob("*.nii.gz"))) == 2
