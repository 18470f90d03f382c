"""The writer and the reader together, on phantoms written by the test session."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pscv_dist.cli import main
from pscv_dist.data import SliceStore
from pscv_dist.data.prepare import PrepareConfig, prepare
from pscv_dist.data.synthetic import PHANTOM_CLASSES

from .fixtures import nearest_index


def _source_volume(src, case):
    img = np.asanyarray(nib.load(src / "imagesTr" / f"{case}_0000.nii.gz").dataobj).astype(np.float64)
    lab = np.asanyarray(nib.load(src / "labelsTr" / f"{case}.nii.gz").dataobj)
    return img.transpose(2, 1, 0), lab.transpose(2, 1, 0)


def test_reader_api(phantom_store):
    store = SliceStore(str(phantom_store))
    assert store.classes == PHANTOM_CLASSES and store.ignore_index == 4
    assert len(store) == 6 * 5 and len(store.cases) == 6
    item = store[7]
    assert item["image"].shape == (1, 32, 32) and str(item["image"].dtype) == "torch.float32"
    assert item["label"].shape == (32, 32) and str(item["label"].dtype) == "torch.int64"
    assert item["points"].shape == (32, 32) and str(item["points"].dtype) == "torch.int64"
    assert item["case"] == store.cases[1] and item["z"] == 2
    assert store[-1]["case"] == store.cases[-1]
    with pytest.raises(IndexError):
        store[len(store)]
    with pytest.raises(KeyError, match="split 'nope' not found"):
        store.split("nope")


def test_native_volumes_round_trip_exactly(phantom_src, phantom_store):
    store = SliceStore(str(phantom_store))
    for case in store.cases:
        raw_img, raw_lab = _source_volume(phantom_src, case)
        vol = store.volume(case)
        np.testing.assert_array_equal(vol["label"], raw_lab)
        # independent MR normalisation: clip at the 99th percentile, min-max
        clipped = np.minimum(raw_img, np.percentile(raw_img.astype(np.float32), 99))
        expected = (clipped - clipped.min()) / (clipped.max() - clipped.min())
        np.testing.assert_allclose(vol["image"], expected, atol=1e-6)
        assert vol["spacing"] == (3.0, 1.5, 1.5)
        ref = nib.load(phantom_src / "imagesTr" / f"{case}_0000.nii.gz")
        np.testing.assert_allclose(vol["affine"], ref.affine)


def test_one_point_per_present_class_on_its_class(phantom_store):
    store = SliceStore(str(phantom_store))
    for i in range(len(store)):
        item = store[i]
        label, points = item["label"].numpy(), item["points"].numpy()
        for k in range(store.num_classes):
            n = int((points == k).sum())
            assert n == (1 if (label == k).any() else 0), (i, k)
            if n:
                assert label[points == k][0] == k
        assert set(np.unique(points)) <= set(range(store.num_classes + 1))
        np.testing.assert_array_equal(item["present"].numpy(), [(points == k).any() for k in range(4)])


def test_resized_labels_agree_with_source(phantom_store):
    store = SliceStore(str(phantom_store))
    case = store.cases[2]
    native = store.volume(case)["label"]
    h, w = native.shape[1:]
    iy, ix = nearest_index(h, 32), nearest_index(w, 32)
    for idx in store.slice_indices([case]):
        item = store[int(idx)]
        np.testing.assert_array_equal(item["label"].numpy(), native[item["z"]][iy][:, ix])


def test_workers_and_case_order_do_not_change_content(phantom_src, tmp_path):
    cases = ["phantom_004", "phantom_001"]
    a = prepare(PrepareConfig(str(phantom_src), str(tmp_path / "a.zarr"), "nifti", size=32, seed=3,
                              workers=2, cases=cases, progress=False))
    sa = SliceStore(a)
    b = prepare(PrepareConfig(str(phantom_src), str(tmp_path / "b.zarr"), "nifti", size=32, seed=3,
                              workers=1, progress=False))
    sb = SliceStore(b)
    assert sa.cases == cases
    for case in cases:
        for ia, ib in zip(sa.slice_indices([case]), sb.slice_indices([case])):
            x, y = sa[int(ia)], sb[int(ib)]
            for key in ("image", "label", "points"):
                assert (x[key] == y[key]).all()
    assert sa.meta.cases["phantom_001"].sha256 == sb.meta.cases["phantom_001"].sha256


def test_fingerprint_and_splits(phantom_store):
    store = SliceStore(str(phantom_store))
    fp = store.fingerprint
    assert fp["n_cases"] == 6 and fp["n_slices"] == 30
    total = sum(np.prod(s) for s in fp["shapes"].values())
    assert sum(fp["voxels_per_class"].values()) == total
    assert fp["spacing"]["median"] == [3.0, 1.5, 1.5]
    assert fp["intensity"]["p00_5"] <= fp["intensity"]["p50"] <= fp["intensity"]["p99_5"]
    for f in range(5):
        val, train = set(store.split(f"fold{f}/val")), set(store.split(f"fold{f}/train"))
        assert val and not val & train and val | train == set(store.cases)
    held = [c for f in range(5) for c in store.split(f"fold{f}/val")]
    assert sorted(held) == sorted(store.cases)  # every case validated exactly once
    assert store.verify() == []


def test_fsspec_url_output(phantom_src):
    url = "memory://pscv-tests/phantoms.zarr"
    prepare(PrepareConfig(str(phantom_src), url, "nifti", size=16, cases=["phantom_000"], progress=False))
    store = SliceStore(url)
    assert store.cases == ["phantom_000"] and store[0]["image"].shape == (1, 16, 16)


def test_cli_prepare_and_inspect(phantom_src, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["prepare", str(phantom_src), str(out), "--layout", "nifti", "--size", "16",
                 "--cases", "phantom_002,phantom_003", "--seed", "9"]) == 0
    assert main(["inspect", str(out), "--json", "--verify"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["n_cases"] == 2 and summary["points"]["seed"] == 9 and summary["verify_failed"] == []
    assert main(["prepare", str(phantom_src), str(out), "--layout", "nifti"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    assert "phantom" not in capsys.readouterr().err


def test_verify_detects_changed_bytes(phantom_src, tmp_path):
    out = prepare(PrepareConfig(str(phantom_src), str(tmp_path / "v.zarr"), "nifti", size=16,
                                cases=["phantom_000"], progress=False))
    shard = tmp_path / "v.zarr" / "volumes" / "phantom_000" / "label" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x5A  # same size: only a re-hash can tell
    shard.write_bytes(bytes(raw))
    assert SliceStore(out).verify() == ["phantom_000"]


def test_synthetic_cli(tmp_path):
    out = tmp_path / "syn.zarr"
    rc = subprocess.run([sys.executable, "-m", "pscv_dist.cli", "prepare", "--synthetic", "2", str(out),
                         "--size", "32"], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert len(SliceStore(str(out)).cases) == 2


def test_overwrite_replaces_the_store(phantom_src, tmp_path):
    out = tmp_path / "o.zarr"
    prepare(PrepareConfig(str(phantom_src), str(out), "nifti", size=16, cases=["phantom_000"], progress=False))
    prepare(PrepareConfig(str(phantom_src), str(out), "nifti", size=16, cases=["phantom_001", "phantom_002"],
                          overwrite=True, progress=False))
    assert SliceStore(str(out)).cases == ["phantom_001", "phantom_002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]  # no staging or old copy left


def test_intensity_sample_is_seeded_by_case_id_not_shape(tmp_path):
    """Two cases of one shape (here even one content) must not share their fingerprint sample, and
    a case's sample must not change between runs."""
    import zarr

    from pscv_dist.data.catalog import CaseResult
    from pscv_dist.data.prepare import SAMPLE_VOXELS, process_case
    from pscv_dist.data.sources import discover

    from .fixtures import blob_volume, save_nifti

    src = tmp_path / "src"
    img, lab = blob_volume(np.random.default_rng(0), shape_xyz=(40, 40, 10))
    assert img.size > SAMPLE_VOXELS  # a real sample, not every voxel
    for case in ("a", "b"):
        save_nifti(src / "imagesTr" / f"{case}_0000.nii.gz", img)
        save_nifti(src / "labelsTr" / f"{case}.nii.gz", lab)
    sources = {s.case: s for s in discover(src, "nifti").cases}
    classes = ["background", "x", "y", "z"]
    cfg = PrepareConfig(str(src), str(tmp_path / "unused.zarr"), "nifti", size=16, progress=False)

    def convert(case: str, staging: str) -> CaseResult:
        group = zarr.open_group(str(tmp_path / staging), mode="w", zarr_format=3)
        group.create_group("volumes")
        (tmp_path / staging / "_parts").mkdir()
        return process_case(sources[case], str(tmp_path / staging), classes, "mr", None, cfg)

    a1, b, a2 = convert("a", "s1"), convert("b", "s2"), convert("a", "s3")
    assert isinstance(a1, CaseResult) and a1.n_slices == 10 and a1.shape == [10, 40, 40]
    np.testing.assert_array_equal(a1.sample, a2.sample)
    np.testing.assert_array_equal(a1.sample_fg, a2.sample_fg)
    assert not np.array_equal(a1.sample, b.sample)
