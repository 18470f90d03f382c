"""Every kind of bad input: a clear message naming the file, a non-zero exit, no store written."""
import contextlib
import gzip
import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from pscv_dist.cli import main
from pscv_dist.data import SliceStore

from .fixtures import blob_volume, save_nifti, write_nifti_dataset


def _run(src: Path, out: Path, capsys, layout="nifti", extra=()):
    rc = main(["prepare", str(src), str(out), "--layout", layout, "--size", "16", *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not out.exists(), "a half-written store was left behind"
    if out.parent.is_dir():
        assert not list(out.parent.glob(f".{out.name}.*")), "staging folder or lock file left behind"
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1 and errors[0].startswith("pscv prepare: error: "), err
    return err


def _dataset(tmp_path, n=2):
    return write_nifti_dataset(tmp_path / "src", n=n)


def test_image_without_label(tmp_path, capsys):
    src = _dataset(tmp_path)
    (src / "labelsTr" / "case1.nii.gz").unlink()
    err = _run(src, tmp_path / "o.zarr", capsys)
    assert "case1_0000.nii.gz: no label found" in err and "labelsTr/case1.nii.gz" in err


def test_label_without_image(tmp_path, capsys):
    src = _dataset(tmp_path)
    (src / "imagesTr" / "case1_0000.nii.gz").unlink()
    assert "case1.nii.gz: label without an image" in _run(src, tmp_path / "o.zarr", capsys)


def test_shape_mismatch(tmp_path, capsys):
    src = _dataset(tmp_path)
    save_nifti(src / "labelsTr" / "case1.nii.gz", np.zeros((24, 20, 3), np.uint8))
    err = _run(src, tmp_path / "o.zarr", capsys)
    assert "case1.nii.gz: label shape (3, 20, 24) does not match image shape (4, 20, 24)" in err


def test_label_value_out_of_range(tmp_path, capsys):
    src = _dataset(tmp_path)
    _, lab = blob_volume(np.random.default_rng(0))
    lab[0, 0, 0] = 7
    save_nifti(src / "labelsTr" / "case0.nii.gz", lab)
    assert "case0.nii.gz: label values must be in 0..3, found [7]" in _run(src, tmp_path / "o.zarr", capsys)


def test_non_integer_label(tmp_path, capsys):
    src = _dataset(tmp_path)
    save_nifti(src / "labelsTr" / "case0.nii.gz", np.full((24, 20, 4), 0.5, np.float32))
    assert "case0.nii.gz: label values must be integers" in _run(src, tmp_path / "o.zarr", capsys)


def test_nan_in_image(tmp_path, capsys):
    src = _dataset(tmp_path)
    img, _ = blob_volume(np.random.default_rng(0))
    img[3, 3, 1] = np.nan
    img[4, 3, 1] = np.inf
    save_nifti(src / "imagesTr" / "case1_0000.nii.gz", img)
    assert "case1_0000.nii.gz: 2 voxel(s) are NaN or inf" in _run(src, tmp_path / "o.zarr", capsys)


def test_empty_volume(tmp_path, capsys):
    src = _dataset(tmp_path)
    save_nifti(src / "imagesTr" / "case0_0000.nii.gz", np.zeros((24, 20, 0), np.float32))
    save_nifti(src / "labelsTr" / "case0.nii.gz", np.zeros((24, 20, 0), np.uint8))
    assert "case0_0000.nii.gz: empty volume" in _run(src, tmp_path / "o.zarr", capsys)


def test_wrong_dtype(tmp_path, capsys):
    src = _dataset(tmp_path)
    save_nifti(src / "imagesTr" / "case0_0000.nii.gz", np.ones((24, 20, 4), np.complex64))
    assert "case0_0000.nii.gz: expected a numeric image dtype, found complex64" in _run(src, tmp_path / "o.zarr", capsys)


def test_wrong_dimensionality(tmp_path, capsys):
    src = _dataset(tmp_path)
    save_nifti(src / "imagesTr" / "case0_0000.nii.gz", np.ones((24, 20, 4, 2), np.float32), (1.0, 1.0, 2.0, 1.0))
    assert "case0_0000.nii.gz: expected a 3D volume, found shape (24, 20, 4, 2)" in _run(src, tmp_path / "o.zarr", capsys)


def test_spacing_mismatch(tmp_path, capsys):
    src = _dataset(tmp_path)
    _, lab = blob_volume(np.random.default_rng(0))
    save_nifti(src / "labelsTr" / "case0.nii.gz", lab, spacing=(1.0, 1.0, 3.0))
    err = _run(src, tmp_path / "o.zarr", capsys)
    assert "case0.nii.gz: spacing (3.0, 1.0, 1.0) does not match the image's (2.0, 1.0, 1.0)" in err


def test_affine_mismatch(tmp_path, capsys):
    src = _dataset(tmp_path)
    _, lab = blob_volume(np.random.default_rng(0))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[0, 3] = 5.0  # same spacing, shifted origin
    save_nifti(src / "labelsTr" / "case0.nii.gz", lab, affine=affine)
    assert "case0.nii.gz: affine differs from the image's" in _run(src, tmp_path / "o.zarr", capsys)


def test_truncated_file(tmp_path, capsys):
    src = _dataset(tmp_path)
    path = src / "imagesTr" / "case1_0000.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    err = _run(src, tmp_path / "o.zarr", capsys, extra=("--workers", "2"))
    assert "case1_0000.nii.gz" in err and ("truncated" in err or "not a readable NIfTI" in err)


def test_unsafe_case_id(tmp_path, capsys):
    src = _dataset(tmp_path, n=1)
    (src / "imagesTr" / "case0_0000.nii.gz").rename(src / "imagesTr" / "a..b_0000.nii.gz")
    (src / "labelsTr" / "case0.nii.gz").rename(src / "labelsTr" / "a..b.nii.gz")
    assert "case id 'a..b' is not a safe name" in _run(src, tmp_path / "o.zarr", capsys)


def test_unknown_case_requested(tmp_path, capsys):
    src = _dataset(tmp_path)
    assert "--cases ['nope'] not found" in _run(src, tmp_path / "o.zarr", capsys, extra=("--cases", "nope"))


def test_missing_class_names(tmp_path, capsys):
    src = _dataset(tmp_path)
    (src / "dataset.json").unlink()
    assert "class names unknown" in _run(src, tmp_path / "o.zarr", capsys)


def test_bad_dataset_json(tmp_path, capsys):
    src = _dataset(tmp_path)
    (src / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "2": "x"}}))
    assert "dataset.json: label values must be 0..K-1, found [0, 2]" in _run(src, tmp_path / "o.zarr", capsys)


def test_h5_missing_key(tmp_path, capsys):
    src = tmp_path / "h5"
    src.mkdir()
    with h5py.File(src / "patient001_frame01.h5", "w") as f:
        f["image"] = np.zeros((2, 8, 8), np.float32)
    err = _run(src, tmp_path / "o.zarr", capsys, layout="wsl4mis-h5")
    assert "patient001_frame01.h5: missing key(s) ['label']" in err


def test_prenormalised_layout_out_of_range(tmp_path, capsys):
    src = tmp_path / "h5"
    src.mkdir()
    with h5py.File(src / "patient001_frame01.h5", "w") as f:
        f["image"] = np.full((2, 8, 8), 255, np.float32)
        f["label"] = np.zeros((2, 8, 8), np.uint8)
    err = _run(src, tmp_path / "o.zarr", capsys, layout="wsl4mis-h5")
    assert "expected intensities in [0, 1], found [255, 255]" in err


def test_missing_source_and_unknown_layout(tmp_path, capsys):
    assert "source folder not found" in _run(tmp_path / "nope", tmp_path / "o.zarr", capsys)
    assert "expected the imagesTr folder" in _run(tmp_path, tmp_path / "o.zarr", capsys)


def test_interrupted_run_can_be_rerun(tmp_path, capsys):
    src = _dataset(tmp_path)
    out = tmp_path / "o.zarr"
    stale = [tmp_path / ".o.zarr.partial", tmp_path / ".o.zarr.partial-4194999-0badcafe"]  # old and new names
    for folder in stale:
        (folder / "volumes").mkdir(parents=True)  # what a killed run leaves
    assert main(["prepare", str(src), str(out), "--layout", "nifti", "--size", "16"]) == 0
    assert not any(f.exists() for f in stale) and len(SliceStore(str(out))) == 8


def test_reader_refuses_incomplete_and_foreign_stores(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "half.zarr"), mode="w")
    with pytest.raises(ValueError, match="not a complete pscv store"):
        SliceStore(str(tmp_path / "half.zarr"))
    with pytest.raises(ValueError, match="no pscv store found"):
        SliceStore(str(tmp_path / "missing.zarr"))


def test_all_zero_image_is_refused(tmp_path, capsys):
    src = _dataset(tmp_path)
    _, lab = blob_volume(np.random.default_rng(0))
    save_nifti(src / "imagesTr" / "case1_0000.nii.gz", np.zeros(lab.shape, np.float32))
    err = _run(src, tmp_path / "o.zarr", capsys)
    assert "case1_0000.nii.gz: image of case 'case1' is all zero" in err and "--skip-empty" in err


def test_all_background_label_is_refused(tmp_path, capsys):
    src = _dataset(tmp_path)
    save_nifti(src / "labelsTr" / "case0.nii.gz", np.zeros((24, 20, 4), np.uint8))
    err = _run(src, tmp_path / "o.zarr", capsys, extra=("--workers", "2"))
    assert "case0.nii.gz: label of case 'case0' is all background" in err


def test_skip_empty_warns_and_skips(tmp_path, capsys, caplog):
    src = _dataset(tmp_path, n=3)
    save_nifti(src / "labelsTr" / "case1.nii.gz", np.zeros((24, 20, 4), np.uint8))
    out = tmp_path / "o.zarr"
    assert main(["prepare", str(src), str(out), "--layout", "nifti", "--size", "16", "--skip-empty"]) == 0
    store = SliceStore(str(out))
    assert store.cases == ["case0", "case2"] and "case1" not in sum(store.splits.values(), [])
    assert any("skipping case case1" in r.getMessage() and "all background" in r.getMessage() for r in caplog.records)


def test_skip_empty_with_nothing_left(tmp_path, capsys):
    src = _dataset(tmp_path, n=1)
    save_nifti(src / "labelsTr" / "case0.nii.gz", np.zeros((24, 20, 4), np.uint8))
    assert "every selected case was empty" in _run(src, tmp_path / "o.zarr", capsys, extra=("--skip-empty",))


def test_self_looping_symlink_as_source(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert "loop: symlink loop" in _run(loop, tmp_path / "o.zarr", capsys)


def test_self_looping_symlink_as_case_file(tmp_path, capsys):
    src = _dataset(tmp_path)
    case = src / "imagesTr" / "case1_0000.nii.gz"
    case.unlink()
    case.symlink_to(case)
    assert "case1_0000.nii.gz: symlink loop" in _run(src, tmp_path / "o.zarr", capsys)


def test_self_looping_symlink_in_h5_layout(tmp_path, capsys):
    src = tmp_path / "h5"
    src.mkdir()
    (src / "patient001_frame01.h5").symlink_to(src / "patient001_frame01.h5")
    assert "patient001_frame01.h5: symlink loop" in _run(src, tmp_path / "o.zarr", capsys, layout="wsl4mis-h5")


def test_output_parent_is_a_file(tmp_path, capsys):
    src = _dataset(tmp_path)
    (tmp_path / "afile").write_text("mine")
    err = _run(src, tmp_path / "afile" / "o.zarr", capsys)
    assert "afile: is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "mine"


@contextlib.contextmanager
def _read_only_folder(path: Path):
    """A folder nobody can write into: chmod for a normal user; for root (who ignores modes) a
    read-only tmpfs mounted on it, or a skip where mounting is not allowed."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(path)], capture_output=True)
    if mount.returncode:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_output_parent_read_only(tmp_path, capsys):
    src = _dataset(tmp_path)
    with _read_only_folder(tmp_path / "ro") as parent:
        assert "the output's folder is not writable" in _run(src, parent / "o.zarr", capsys)
        assert "cannot create the output's folder" in _run(src, parent / "sub" / "o.zarr", capsys)
