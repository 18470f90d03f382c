"""Bad input to ``pscv predict`` and ``pscv evaluate``: exit 2 with one line naming the path, nothing
half-written, nothing of the user's overwritten, and no model run first."""
import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pscv_dist.cli import main
from pscv_dist.data import SliceStore

from .helpers import random_checkpoint


def _fails(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"pscv {argv[0]}: error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks resolved) and the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def images(phantom_src, tmp_path) -> Path:
    """A folder of three phantom images (a copy: the tests may try to destroy them)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted((phantom_src / "imagesTr").glob("*.nii.gz"))[:3]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return random_checkpoint(tmp_path / "ckpt", size=32)


@pytest.fixture
def junk_ckpt(tmp_path) -> Path:
    """A checkpoint that cannot be loaded: an error about anything else proves it came first."""
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    return path


# --- predict: outputs -------------------------------------------------------------------------------

def test_predict_refuses_to_replace_its_input(images, ckpt, tmp_path, capsys):
    a = images / "phantom_000_0000.nii.gz"
    (tmp_path / "link.nii.gz").symlink_to(a)
    (tmp_path / "in_link").symlink_to(images)
    os.link(a, tmp_path / "hard.nii.gz")
    before = _tree(images)
    spellings = [
        [str(a), str(a)],  # the same path
        [str(a), str(images / "." / a.name)],  # another spelling
        [str(a), str(tmp_path / "in" / ".." / "in" / a.name)],
        [str(a), str(tmp_path / "link.nii.gz")],  # a symlink to the input
        [str(a), str(tmp_path / "hard.nii.gz")],  # a hard link
        [str(a), str(images)],  # the folder holding the input: out = in/<same name>
        [str(images), str(images)],  # folder in, same folder out
        [str(images), str(tmp_path / "in_link")],  # ... through a symlink
        [str(tmp_path / "in_link"), str(images / ".")],
    ]
    for io in spellings:
        for extra in ([], ["--overwrite"]):  # --overwrite never allows replacing an input
            err = _fails(["predict", "--checkpoint", str(ckpt), *io, *extra], capsys)
            assert "is the input" in err, (io, err)
    assert _tree(images) == before


def test_predict_refuses_existing_outputs_without_overwrite(images, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "phantom_001_0000.nii.gz"
    mine.write_bytes(b"the user's own file")
    err = _fails(["predict", "--checkpoint", str(ckpt), str(images), str(out)], capsys)
    assert f"{mine}: already exists; pass --overwrite to replace it" in err
    assert sorted(p.name for p in out.iterdir()) == [mine.name]  # not even the first output was written
    assert mine.read_bytes() == b"the user's own file"
    single = tmp_path / "single.nii.gz"
    single.write_bytes(b"another file of the user")
    err = _fails(["predict", "--checkpoint", str(ckpt), str(images / mine.name), str(single)], capsys)
    assert "single.nii.gz: already exists" in err and single.read_bytes() == b"another file of the user"
    # with --overwrite both are replaced by label maps of the input's shape
    assert main(["predict", "--checkpoint", str(ckpt), str(images), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images.iterdir())
    assert nib.load(mine).shape == nib.load(images / mine.name).shape


def test_predict_output_folder_problems_before_the_model_is_loaded(images, junk_ckpt, tmp_path, capsys):
    a = images / "phantom_000_0000.nii.gz"
    afile = tmp_path / "notes.txt"
    afile.write_text("a file, not a folder")
    cases = [
        ([str(a), str(afile / "pred.nii.gz")],
         f"{afile}: is not a folder (a path component of {afile / 'pred.nii.gz'})"),
        ([str(a), str(afile / "sub" / "pred.nii.gz")], f"{afile}: is not a folder"),
        ([str(a), str(afile)], f"{afile}: is not a folder"),  # a non-NIfTI name is taken as a folder
        ([str(images), str(afile)], f"{afile}: the input is a folder, so the output must be a folder"),
        ([str(images), str(afile / "out")], f"{afile}: is not a folder"),
    ]
    (tmp_path / "pred_dir.nii.gz").mkdir()
    cases.append(([str(a), str(tmp_path / "pred_dir.nii.gz" / a.name)], None))  # fine so far: a folder named .nii.gz
    for argv, expected in cases:
        err = _fails(["predict", "--checkpoint", str(junk_ckpt), *argv], capsys)
        if expected is None:
            assert "not a loadable checkpoint" in err  # every path check passed, so the model was the problem
        else:
            assert expected in err and "checkpoint" not in err, (argv, err)
    assert afile.read_text() == "a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only (0o555) folder")
def test_predict_read_only_output_folder(images, junk_ckpt, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = _fails(["predict", "--checkpoint", str(junk_ckpt), str(images), str(ro / "out")], capsys)
        assert f"{ro}: folder is not writable" in err
    finally:
        ro.chmod(0o755)


# --- predict: inputs --------------------------------------------------------------------------------

def _save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


@pytest.mark.parametrize("kind", ["nan", "inf", "complex"])
def test_predict_refuses_non_finite_or_complex_input_before_any_output(images, ckpt, tmp_path, kind, capsys):
    data = np.asarray(nib.load(images / "phantom_000_0000.nii.gz").dataobj).astype(np.float32)
    bad = images / "phantom_001_0000.nii.gz"  # the second of three: the first must not be written either
    if kind == "complex":
        _save(bad, data.astype(np.complex64) + 1j)
    else:
        data[3, 4, 2] = data[5, 6, 1] = np.nan if kind == "nan" else -np.inf
        _save(bad, data)
    out = tmp_path / "out"
    err = _fails(["predict", "--checkpoint", str(ckpt), str(images), str(out)], capsys)
    if kind == "complex":
        assert f"{bad}: voxels are complex (complex64); expected real-valued intensities" in err
    else:
        assert f"{bad}: 2 voxel(s) are NaN or inf; expected finite intensities" in err
    assert not out.exists()
    err = _fails(["predict", "--checkpoint", str(ckpt), str(bad), str(tmp_path / "one.nii.gz")], capsys)
    assert str(bad) in err and not (tmp_path / "one.nii.gz").exists()


# --- checkpoints --------------------------------------------------------------------------------------

def test_truncated_or_garbage_checkpoint_is_one_line(images, phantom_store, ckpt, junk_ckpt, tmp_path, capsys):
    data = (ckpt / "model.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    for bad in (truncated, junk_ckpt):
        err = _fails(["predict", "--checkpoint", str(bad), str(images), str(tmp_path / "out")], capsys)
        assert f"{bad}: not a loadable checkpoint" in err and not (tmp_path / "out").exists()
        err = _fails(["evaluate", "--checkpoint", str(bad), "--store", str(phantom_store), "--split", "all",
                      "--out", str(tmp_path / "r.json")], capsys)
        assert f"{bad}: not a loadable checkpoint" in err and not (tmp_path / "r.json").exists()


# --- evaluate -----------------------------------------------------------------------------------------

def _evaluate(ckpt, store, *extra):
    return ["evaluate", "--checkpoint", str(ckpt), "--store", str(store), "--split", "all", *extra]


def test_evaluate_output_problems_before_the_model_is_loaded(phantom_store, junk_ckpt, ckpt, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("a file")
    folder = tmp_path / "existing"
    folder.mkdir()
    store_before = _tree(phantom_store)
    cases = [
        (["--out", str(afile / "results.json")], f"{afile}: is not a folder (a path component of"),
        (["--out", str(afile / "deeper" / "results.json")], f"{afile}: is not a folder"),
        (["--out", str(folder)], f"{folder}: is a folder, expected an output file path"),
        (["--plots", str(afile)], f"{afile}: is not a folder (it is a file); expected an output folder"),
        (["--plots", str(afile / "plots")], f"{afile}: is not a folder"),
        (["--out", str(phantom_store / "results.json")], "--out is inside the store"),
        (["--plots", str(phantom_store / "plots")], "--plots is inside the store"),
    ]
    for extra, expected in cases:
        err = _fails(_evaluate(junk_ckpt, phantom_store, *extra), capsys)
        assert expected in err and "checkpoint" not in err, (extra, err)
    # --out naming the checkpoint itself (also through the folder's model.pt)
    model_pt = ckpt / "model.pt"
    saved = model_pt.read_bytes()
    err = _fails(_evaluate(ckpt, phantom_store, "--out", str(model_pt)), capsys)
    assert f"--out is the checkpoint {model_pt}" in err and model_pt.read_bytes() == saved
    # ...or any other file of the checkpoint folder (a training checkpoint's train state, COMMIT, ...)
    (ckpt / "train_state.pt").write_bytes(b"state")
    for extra in (["--out", str(ckpt / "train_state.pt")], ["--plots", str(ckpt / "plots")]):
        err = _fails(_evaluate(ckpt, phantom_store, *extra), capsys)
        assert f"is inside the checkpoint folder {ckpt}" in err, (extra, err)
    assert (ckpt / "train_state.pt").read_bytes() == b"state" and not (ckpt / "plots").exists()
    (ckpt / "train_state.pt").unlink()
    assert afile.read_text() == "a file" and list(folder.iterdir()) == [] and _tree(phantom_store) == store_before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only (0o555) folder")
def test_evaluate_read_only_output(phantom_store, junk_ckpt, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = _fails(_evaluate(junk_ckpt, phantom_store, "--out", str(ro / "r.json")), capsys)
        assert f"{ro}: folder is not writable" in err
        err = _fails(_evaluate(junk_ckpt, phantom_store, "--plots", str(ro / "plots")), capsys)
        assert f"{ro}: folder is not writable" in err
    finally:
        ro.chmod(0o755)


def test_edge_filter_negative_or_wider_than_a_case(phantom_store, junk_ckpt, ckpt, tmp_path, capsys):
    store = SliceStore(str(phantom_store))
    width = min(store.meta.cases[c].shape[-1] for c in store.cases)  # 48 for these phantoms
    err = _fails(_evaluate(junk_ckpt, phantom_store, "--edge-filter", "-1"), capsys)
    assert "--edge-filter: expected a number of pixels >= 0, found -1" in err
    for too_wide in (width // 2, width, 10 * width):
        err = _fails(_evaluate(junk_ckpt, phantom_store, "--edge-filter", str(too_wide), "--out",
                               str(tmp_path / "r.json")), capsys)
        assert (f"--edge-filter {too_wide}: would set the whole width of case" in err
                and f"({width} pixels) to background; expected at most {(width - 1) // 2}" in err), err
        assert not (tmp_path / "r.json").exists()
    # the largest allowed value runs
    assert main(_evaluate(ckpt, phantom_store, "--edge-filter", str((width - 1) // 2))) == 0


@pytest.mark.slow
def test_evaluate_under_torchrun_every_rank_stops_on_a_bad_output(phantom_store, junk_ckpt, tmp_path):
    """Rank 0 (the writer) checks the outputs and every rank raises the same error: none is left
    waiting in a collective (the run ends within the timeout, with the message from both ranks)."""
    import subprocess
    import sys

    afile = tmp_path / "notes.txt"
    afile.write_text("a file")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "pscv_dist.cli", *_evaluate(junk_ckpt, phantom_store, "--out", str(afile / "r.json"))],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count(f"pscv evaluate: error: {afile}: is not a folder") == 2, proc.stderr[-2000:]
