"""Round trip: annotate phantoms with `pscv annotate` (one click per class present on every slice,
through the API the page uses) -> `pscv prepare --clicks CLICKS_DIR` imports exactly those voxels
-> `pscv train` runs on them and registers the model -> `pscv annotate --model-uri
models:/NAME@latest` overlays that model's prediction, the labels `pscv predict --model-uri` gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pscv_dist.cli import main as cli_main
from pscv_dist.data import SliceStore
from pscv_dist.data.synthetic import write_phantoms
from pscv_dist.data.volume_io import read_nifti

from .helpers import clicks_from_label, label_of, start, stop

pytestmark = pytest.mark.slow


def test_annotate_prepare_train_and_overlay_the_model(tmp_path):
    src = write_phantoms(tmp_path / "src", 6, seed=7, shape=(6, 48, 48))
    clicks = tmp_path / "clicks"
    srv = start([str(src), "--layout", "nifti"], clicks, tmp_path / "annotate.log")
    posted = {}
    try:
        rng = np.random.default_rng(0)
        for row in srv.get("/api/cases")["cases"]:
            case = row["case"]
            points = clicks_from_label(label_of(src, case), rng)
            status, answer = srv.json("POST", f"/api/cases/{case}/clicks", {"set": points})
            assert status == 200 and answer["progress"]["done"] == answer["progress"]["total"] == 6
            posted[case] = np.array(sorted((p["class"], p["z"], p["y"], p["x"]) for p in points), dtype=np.int32)
        listing = srv.get("/api/cases")
        assert listing["done"] == listing["total"] == 36 and listing["clicks"] == sum(map(len, posted.values()))
    finally:
        assert stop(srv) == 0
    assert sorted(p.name for p in clicks.iterdir()) == [f"phantom_{i:03d}.mrk.json" for i in range(6)]

    store = tmp_path / "store.zarr"
    assert cli_main(["prepare", str(src), str(store), "--layout", "nifti", "--size", "32", "--folds", "2",
                     "--clicks", str(clicks)]) == 0
    s = SliceStore(str(store))
    for case, points in posted.items():
        np.testing.assert_array_equal(s.volume(case)["clicks"], points)
        assert s.meta.cases[case].annotation["format"] == "slicer"
        assert s.meta.cases[case].annotation["disagree_with_label"] == 0

    run = tmp_path / "run"
    args = [f"data.store={store}", "data.train_split=fold0/train", "data.val_split=fold0/val", "data.batch_size=8",
            "data.num_workers=0", "model.base_width=8", "train.iterations=20", "train.val_every=20",
            "train.ckpt_every=20", "train.log_every=10", f"train.out_dir={run}", "train.progress=false",
            "loss.name=pscv", "tracking.register_model=pscv-annotate"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    done = subprocess.run([sys.executable, "-m", "pscv_dist.cli", "train", *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["step"] == 20 and np.isfinite(summary["val_mean_dsc"])

    # the model that run registered, as the overlay of a new annotation session
    uri = summary["tracking_uri"]
    srv = start([str(src), "--layout", "nifti", "--model-uri", "models:/pscv-annotate@latest", "--tracking-uri", uri],
                clicks, tmp_path / "annotate2.log")
    try:
        assert srv.get("/api/info")["model"] == "model models:/pscv-annotate@latest"
        assert srv.get("/api/cases")["clicks"] == sum(map(len, posted.values()))  # the saved clicks, loaded
        from pscv_dist.tracking import load_registered_model

        image, _ = read_nifti(src / "imagesTr" / "phantom_003_0000.nii.gz")
        expected = load_registered_model("models:/pscv-annotate@latest", uri).predict(image.astype(np.float32))
        for z in (0, 3):
            rgba = srv.png(f"/api/cases/phantom_003/slices/{z}/prediction.png")
            np.testing.assert_array_equal(rgba[..., 3] > 0, expected[z] > 0)
    finally:
        assert stop(srv) == 0
