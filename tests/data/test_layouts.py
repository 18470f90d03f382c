"""Each supported on-disk layout, on small fixtures the tests write."""
import h5py
import nibabel as nib
import numpy as np

from pscv_dist.data import SliceStore
from pscv_dist.data.prepare import PrepareConfig, prepare
from pscv_dist.data.sources import BTCV_REMAP, SYNAPSE_CLASSES

from .fixtures import write_acdc_raw, write_btcv, write_transunet


def _prep(src, out, layout, **kw):
    return SliceStore(prepare(PrepareConfig(str(src), str(out), layout, size=16, progress=False, **kw)))


def test_acdc_raw_layout_groups_frames_by_patient(tmp_path):
    src = write_acdc_raw(tmp_path / "acdc")
    store = _prep(src, tmp_path / "acdc.zarr", "acdc", folds=3)
    assert store.cases == [f"patient{p:03d}_frame{f:02d}" for p in (1, 2, 3) for f in (1, 12)]
    assert store.classes == ["background", "RV", "Myo", "LV"]
    for f in range(3):
        val = store.split(f"fold{f}/val")
        assert len(val) == 2 and val[0].split("_")[0] == val[1].split("_")[0]
    vol = store.volume("patient002_frame12")
    raw = np.asanyarray(nib.load(src / "patient002" / "patient002_frame12_gt.nii.gz").dataobj)
    np.testing.assert_array_equal(vol["label"], raw.transpose(2, 1, 0))
    assert vol["spacing"] == (10.0, 1.5, 1.5)


def test_btcv_layout_remaps_to_eight_organs_and_windows_ct(tmp_path):
    src = write_btcv(tmp_path / "btcv")
    store = _prep(src, tmp_path / "btcv.zarr", "btcv")
    assert store.classes == SYNAPSE_CLASSES
    assert store.split("test") == ["case0001", "case0008"] and store.split("train") == ["case0005"]
    raw_lab = np.asanyarray(nib.load(src / "label" / "label0005.nii.gz").dataobj).transpose(2, 1, 0)
    raw_img = np.asanyarray(nib.load(src / "img" / "img0005.nii.gz").dataobj).transpose(2, 1, 0)
    vol = store.volume("case0005")
    expected = np.zeros_like(raw_lab)
    for raw, new in BTCV_REMAP.items():
        expected[raw_lab == raw] = new
    np.testing.assert_array_equal(vol["label"], expected)
    assert set(np.unique(raw_lab[vol["label"] == 0])) == {0, 5, 9, 10, 12, 13}
    clipped = np.clip(raw_img.astype(np.float64), -125, 275)
    np.testing.assert_allclose(vol["image"], (clipped - clipped.min()) / (clipped.max() - clipped.min()), atol=1e-6)


def test_transunet_layout_stacks_npz_slices_and_reads_h5(tmp_path):
    src = write_transunet(tmp_path / "tu")
    store = _prep(src, tmp_path / "tu.zarr", "transunet")
    assert store.cases == ["case0005", "case0001"]
    assert store.split("train") == ["case0005"] and store.split("test") == ["case0001"]
    train = store.volume("case0005")
    for s in range(3):
        with np.load(src / "train_npz" / f"case0005_slice{s:03d}.npz") as f:
            np.testing.assert_array_equal(train["image"][s], f["image"])
            np.testing.assert_array_equal(train["label"][s], f["label"])
    with h5py.File(src / "test_vol_h5" / "case0001.npy.h5") as f:
        np.testing.assert_array_equal(store.volume("case0001")["image"], f["image"][()])
        np.testing.assert_array_equal(store.volume("case0001")["label"], f["label"][()].astype(np.int64))
