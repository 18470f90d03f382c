"""pscv predict: geometry kept exactly, the training normalisation applied, clear errors."""
import nibabel as nib
import numpy as np
import pytest

from pscv_dist.model.bundle import load_model
from pscv_dist.cli import main
from pscv_dist.data.volume_io import read_nifti
from pscv_dist.data.volumes import normalize_intensity
from pscv_dist.eval.inference import predict_volume

from .helpers import random_checkpoint


@pytest.mark.slow
def test_prostate_round_trip_keeps_affine_and_header(prostate_dir, tmp_path):
    ckpt = random_checkpoint(tmp_path / "c", num_classes=3, size=64)
    src = prostate_dir / "Prostatex_0000.nii.gz"
    out = tmp_path / "pred.nii.gz"
    assert main(["predict", "--checkpoint", str(ckpt), str(src), str(out)]) == 0
    ref, pred = nib.load(src), nib.load(out)
    np.testing.assert_array_equal(pred.affine, ref.affine)
    np.testing.assert_array_equal(pred.header.get_sform(), ref.header.get_sform())
    np.testing.assert_array_equal(pred.header.get_qform(), ref.header.get_qform())
    assert pred.shape == ref.shape and pred.get_data_dtype() == np.uint8
    assert pred.header.get_zooms() == ref.header.get_zooms()
    # the voxels are the model's prediction after the training normalisation (MR)
    model, meta = load_model(ckpt)
    image, _ = read_nifti(src)
    expected = predict_volume(model, normalize_intensity(image, "mr"), 64)
    np.testing.assert_array_equal(np.asanyarray(pred.dataobj).transpose(2, 1, 0), expected)


def test_folder_in_folder_out(phantom_src, tmp_path):
    ckpt = random_checkpoint(tmp_path / "c", size=32)
    assert main(["predict", "--checkpoint", str(ckpt), str(phantom_src / "imagesTr"), str(tmp_path / "out")]) == 0
    outs = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert len(outs) == 6
    for o in outs:
        ref = nib.load(phantom_src / "imagesTr" / o.name)
        assert nib.load(o).shape == ref.shape
        np.testing.assert_array_equal(nib.load(o).affine, ref.affine)


def test_bad_inputs(tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / "c", size=32)
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")]) == 2
    assert "input not found" in capsys.readouterr().err
    four_d = tmp_path / "4d.nii.gz"
    img = nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4))
    nib.save(img, str(four_d))
    assert main(["predict", "--checkpoint", str(ckpt), str(four_d), str(tmp_path / "o.nii.gz")]) == 2
    assert "expected a 3D volume, found shape (8, 8, 4, 2)" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
    assert main(["predict", str(four_d), str(tmp_path / "o.nii.gz")]) == 2
    assert "exactly one of --checkpoint" in capsys.readouterr().err
