"""The real ACDC volumes and the real prostate NIfTI from ../shared/data (skipped when absent)."""
import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from pscv_dist.data import SliceStore
from pscv_dist.data.prepare import PrepareConfig, prepare

from .fixtures import nearest_index

pytestmark = pytest.mark.slow
ACDC_CASES = ["patient001_frame01", "patient001_frame12", "patient017_frame01", "patient042_frame16"]


@pytest.fixture(scope="module")
def acdc_store(acdc_h5_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("acdc") / "acdc.zarr"
    prepare(PrepareConfig(str(acdc_h5_dir), str(out), "wsl4mis-h5", size=256, seed=0, workers=2,
                          cases=ACDC_CASES, folds=2, progress=False))
    return SliceStore(str(out))


def test_acdc_native_round_trip(acdc_store, acdc_h5_dir):
    for case in ACDC_CASES:
        with h5py.File(acdc_h5_dir / f"{case}.h5") as f:
            vol = acdc_store.volume(case)
            np.testing.assert_array_equal(vol["image"], f["image"][()])
            np.testing.assert_array_equal(vol["label"], f["label"][()])
        assert vol["spacing"] is None


def test_acdc_points_and_resized_labels(acdc_store):
    n_checked = 0
    for case in ACDC_CASES:
        native = acdc_store.volume(case)["label"]
        h, w = native.shape[1:]
        iy, ix = nearest_index(h, 256), nearest_index(w, 256)
        for idx in acdc_store.slice_indices([case]):
            item = acdc_store[int(idx)]
            label, points = item["label"].numpy(), item["points"].numpy()
            np.testing.assert_array_equal(label, native[item["z"]][iy][:, ix])
            for k in range(4):
                assert (points == k).sum() == int((label == k).any())
                assert (label[points == k] == k).all()
            n_checked += 1
    assert n_checked == sum(acdc_store.meta.cases[c].n_slices for c in ACDC_CASES)


def test_acdc_frames_of_a_patient_share_a_fold(acdc_store):
    for f in range(2):
        val = acdc_store.split(f"fold{f}/val")
        patients = {c.split("_")[0] for c in val}
        assert all(c.split("_")[0] in patients for c in val)
        assert ("patient001_frame01" in val) == ("patient001_frame12" in val)


def test_prostate_nifti_keeps_affine_and_spacing(prostate_dir, tmp_path):
    src = tmp_path / "prostate"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    (src / "imagesTr" / "Prostatex_0000_0000.nii.gz").symlink_to(prostate_dir / "Prostatex_0000.nii.gz")
    (src / "labelsTr" / "Prostatex_0000.nii.gz").symlink_to(prostate_dir / "Prostatex_0000_lab.nii.gz")
    (src / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "zone1", "2": "zone2"}}))
    store = SliceStore(prepare(PrepareConfig(str(src), str(tmp_path / "p.zarr"), "nifti", size=128, progress=False)))
    ref = nib.load(prostate_dir / "Prostatex_0000.nii.gz")
    vol = store.volume("Prostatex_0000")
    np.testing.assert_allclose(vol["affine"], ref.affine)
    zooms = ref.header.get_zooms()
    assert vol["spacing"] == pytest.approx((zooms[2], zooms[1], zooms[0]))
    lab = np.asanyarray(nib.load(prostate_dir / "Prostatex_0000_lab.nii.gz").dataobj)
    np.testing.assert_array_equal(vol["label"], lab.transpose(2, 1, 0))
    assert vol["image"].shape == (19, 384, 384) and 0 <= vol["image"].min() and vol["image"].max() <= 1
    assert len(store) == 19
