"""`pscv annotate` on the real data (skipped with a reason when ../shared/data is absent): the
prostate NIfTI, whose affine is oblique, and the WSL4MIS ACDC .h5 volumes, which have no geometry.
Clicks written by the server are imported by `pscv prepare --clicks` to the voxels clicked."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pscv_dist.cli import main as cli_main
from pscv_dist.data import SliceStore
from pscv_dist.data.sources import ACDC_CLASSES

from .helpers import clicks_from_label, start, stop

pytestmark = pytest.mark.slow


def test_prostate_oblique_affine(prostate_dir, tmp_path):
    src = tmp_path / "src"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    (src / "imagesTr/Prostatex_0000.nii.gz").symlink_to(prostate_dir / "Prostatex_0000.nii.gz")
    (src / "labelsTr/Prostatex.nii.gz").symlink_to(prostate_dir / "Prostatex_0000_lab.nii.gz")
    affine = nib.load(prostate_dir / "Prostatex_0000.nii.gz").affine
    assert np.abs(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))).max() > 1e-3  # oblique indeed
    lab = np.transpose(np.asarray(nib.load(prostate_dir / "Prostatex_0000_lab.nii.gz").dataobj), (2, 1, 0))
    k = int(lab.max()) + 1
    classes = ",".join(["background"] + [f"c{i}" for i in range(1, k)])
    srv = start([str(src), "--layout", "nifti", "--classes", classes], tmp_path / "clicks", tmp_path / "log.txt")
    try:
        detail = srv.get("/api/cases/Prostatex")
        assert detail["shape"] == list(lab.shape)
        points = clicks_from_label(lab.astype(np.int64), np.random.default_rng(0))
        status, answer = srv.json("POST", "/api/cases/Prostatex/clicks", {"set": points})
        assert status == 200 and answer["progress"]["done"] == lab.shape[0]
        assert srv.png("/api/cases/Prostatex/slices/10/image.png").shape == lab.shape[1:]
    finally:
        assert stop(srv) == 0
    out = tmp_path / "p.zarr"
    assert cli_main(["prepare", str(src), str(out), "--layout", "nifti", "--size", "64", "--classes", classes,
                     "--clicks", str(tmp_path / "clicks")]) == 0
    expected = np.array(sorted((p["class"], p["z"], p["y"], p["x"]) for p in points), dtype=np.int32)
    np.testing.assert_array_equal(SliceStore(str(out)).volume("Prostatex")["clicks"], expected)


def test_acdc_h5_without_geometry(acdc_h5_dir, tmp_path):
    srv = start([str(acdc_h5_dir), "--layout", "wsl4mis-h5"], tmp_path / "clicks", tmp_path / "log.txt")
    case = "patient001_frame01"
    try:
        info = srv.get("/api/info")
        assert [c["name"] for c in info["classes"]] == ACDC_CLASSES and info["cases"] >= 100
        detail = srv.get(f"/api/cases/{case}")
        assert detail["spacing"] is None and detail["labelled"]
        status, answer = srv.json("POST", f"/api/cases/{case}/clicks", {"set": [
            {"id": "c3z4", "class": "LV", "z": 4, "y": 100, "x": 120}, {"id": "c1z0", "class": 1, "z": 0, "y": 5, "x": 7}]})
        assert status == 200
    finally:
        assert stop(srv) == 0
    doc = json.loads((tmp_path / "clicks" / f"{case}.mrk.json").read_text())
    # no geometry: "millimetres" are voxel indices (i, j, k), written in LPS
    assert [p["position"] for p in doc["markups"][0]["controlPoints"]] == [[-7.0, -5.0, 0.0], [-120.0, -100.0, 4.0]]
    from pscv_dist.data.annotations import import_annotations
    from pscv_dist.data.clicks import case_grid
    from pscv_dist.data.sources import discover

    sources = [s for s in discover(acdc_h5_dir, "wsl4mis-h5").cases if s.case == case]
    anns = import_annotations(tmp_path / "clicks", "slicer", {case: case_grid(sources[0])}, ACDC_CLASSES)
    assert anns[case].points.tolist() == [[1, 0, 5, 7], [3, 4, 100, 120]]
