"""Real annotations in a store (`pscv prepare --clicks`, `pscv clicks export`): every annotated
voxel is kept as the record and lands on the training slices, the metadata says where they came
from and how they compare with the dense labels, clicks-only cases train under torchrun and are
never validated on, exports round-trip, and bad input leaves nothing written."""
import csv

import h5py
import nibabel as nib
import numpy as np
import pytest

from pscv_dist.cli import main as cli_main
from pscv_dist.data import SliceStore
from pscv_dist.data.clicks import training_points
from pscv_dist.data.prepare import PrepareConfig, prepare
from pscv_dist.data.synthetic import write_phantoms

ACDC_CASES = ["patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame12"]


def _native_points(scribble: np.ndarray, ignore: int) -> np.ndarray:
    """Independent reference: every voxel != ignore as (class, z, y, x), sorted."""
    z, y, x = np.nonzero(scribble != ignore)
    rows = np.stack([scribble[z, y, x], z, y, x], axis=1).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def acdc_scribble_store(acdc_h5_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scr") / "scr.zarr"
    prepare(PrepareConfig(str(acdc_h5_dir), str(out), "wsl4mis-h5", size=64, folds=2, cases=ACDC_CASES,
                          clicks="scribble", clicks_format="h5-key", progress=False))
    return out


def test_acdc_h5_scribbles_keep_every_voxel(acdc_scribble_store, acdc_h5_dir):
    store = SliceStore(str(acdc_scribble_store))
    for case in ACDC_CASES:
        with h5py.File(acdc_h5_dir / f"{case}.h5", "r") as f:
            scribble, label = f["scribble"][()], f["label"][()]
        ref = _native_points(scribble, 4)
        vol = store.volume(case)
        np.testing.assert_array_equal(vol["clicks"], ref)
        meta = store.meta.cases[case].annotation
        assert meta["kind"] == "imported" and meta["format"] == "h5-key" and meta["key"] == "scribble"
        assert meta["per_class"] == [int((scribble == k).sum()) for k in range(4)]
        assert meta["disagree_with_label"] == int((label[ref[:, 1], ref[:, 2], ref[:, 3]] != ref[:, 0]).sum())
        # the training slices carry the resized scribble: each native voxel's pixel holds its class
        first = store.meta.cases[case].first_slice
        z_n, h, w = scribble.shape
        maps = store.points(np.arange(first, first + z_n))
        for cls, z, y, x in ref[:: max(1, len(ref) // 200)]:
            ty, tx = int((y + 0.5) * 64 / h), int((x + 0.5) * 64 / w)
            assert maps[z, ty, tx] == cls
    fp = store.fingerprint["annotations"]
    assert fp["imported_cases"] == 4 and fp["simulated_cases"] == 0


def test_training_points_merge_one_class_and_drop_two_class_pixels():
    pts = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [2, 0, 3, 3], [3, 0, 3, 2]])  # (class, z, y, x) on 4x4 -> 2x2
    maps, conflicts = training_points(pts, (1, 4, 4), 2, 4)
    assert maps[0].tolist() == [[1, 4], [4, 4]] and conflicts == 1  # (1,1) claimed by classes 2 and 3


@pytest.fixture(scope="module")
def prostate_src(prostate_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("prostate")
    (root / "src/imagesTr").mkdir(parents=True)
    (root / "src/labelsTr").mkdir()
    (root / "clicks").mkdir()
    (root / "src/imagesTr/Prostatex_0000.nii.gz").symlink_to(prostate_dir / "Prostatex_0000.nii.gz")
    (root / "src/labelsTr/Prostatex.nii.gz").symlink_to(prostate_dir / "Prostatex_0000_lab.nii.gz")
    (root / "clicks/Prostatex.nii.gz").symlink_to(prostate_dir / "Prostatex_0000_scribble.nii.gz")
    return root


def test_prostate_scribble_nifti_round_trips_through_export(prostate_src, prostate_dir, tmp_path):
    lab = np.asarray(nib.load(prostate_dir / "Prostatex_0000_lab.nii.gz").dataobj)
    k = int(lab.max()) + 1
    classes = ",".join(["background"] + [f"c{i}" for i in range(1, k)])
    out = tmp_path / "p.zarr"
    assert cli_main(["prepare", str(prostate_src / "src"), str(out), "--layout", "nifti", "--size", "64",
                     "--classes", classes, "--clicks", str(prostate_src / "clicks")]) == 0
    scribble = np.transpose(np.asarray(nib.load(prostate_dir / "Prostatex_0000_scribble.nii.gz").dataobj), (2, 1, 0))
    ref = _native_points(scribble, 255)
    store = SliceStore(str(out))
    np.testing.assert_array_equal(store.volume("Prostatex")["clicks"], ref)
    assert store.meta.cases["Prostatex"].annotation["format"] == "nifti"
    # export in every format, import it again: the same annotation of record
    for fmt in ("slicer", "csv", "nifti"):
        exported = tmp_path / f"exp_{fmt}"
        assert cli_main(["clicks", "export", str(out), str(exported), "--format", fmt]) == 0
        clicks = exported / "clicks.csv" if fmt == "csv" else exported
        again = tmp_path / f"again_{fmt}.zarr"
        assert cli_main(["prepare", str(prostate_src / "src"), str(again), "--layout", "nifti", "--size", "64",
                         "--classes", classes, "--clicks", str(clicks)]) == 0
        np.testing.assert_array_equal(SliceStore(str(again)).volume("Prostatex")["clicks"], ref)
        assert cli_main(["clicks", "export", str(out), str(exported), "--format", fmt]) == 2  # never overwrites
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for inside in (out, out / "volumes"):  # OUT = the store, or a folder in it: refused, nothing written
        assert cli_main(["clicks", "export", str(out), str(inside), "--format", "nifti"]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.fixture(scope="module")
def clicks_only_src(tmp_path_factory):
    """12 phantoms; 8 of them lose their dense label and keep one CSV click per class per slice."""
    root = tmp_path_factory.mktemp("clicksonly")
    src = write_phantoms(root / "src", 12, seed=5, shape=(6, 48, 48))
    rng = np.random.default_rng(0)
    rows = []
    for i, path in enumerate(sorted((src / "labelsTr").glob("*.nii.gz"))):
        case = path.name[: -len(".nii.gz")]
        lab = np.asarray(nib.load(path).dataobj)  # (i, j, k)
        for k_ in range(lab.shape[2]):
            for cls in np.unique(lab[:, :, k_]):
                ii, jj = np.nonzero(lab[:, :, k_] == cls)
                pick = rng.integers(len(ii))
                rows.append([case, int(cls), int(ii[pick]), int(jj[pick]), k_])
        if i < 8:
            path.unlink()
    with open(root / "clicks.csv", "w", newline="") as f:
        csv.writer(f).writerows([["case", "class", "i", "j", "k"], *rows])
    return root


def test_clicks_only_cases_are_stored_unlabelled_and_never_validated(clicks_only_src, tmp_path):
    out = tmp_path / "c.zarr"
    prepare(PrepareConfig(str(clicks_only_src / "src"), str(out), "nifti", size=32, folds=2,
                          clicks=str(clicks_only_src / "clicks.csv"), progress=False))
    store = SliceStore(str(out))
    unlabelled = {c for c in store.cases if not store.meta.cases[c].labelled}
    assert len(unlabelled) == 8 and set(store.split("labelled")) == set(store.cases) - unlabelled
    for f in (0, 1):
        assert not unlabelled & set(store.split(f"fold{f}/val"))
        assert unlabelled <= set(store.split(f"fold{f}/train"))
    case = sorted(unlabelled)[0]
    assert (store.volume(case)["label"] == store.num_classes).all()  # K: no dense label
    assert store.fingerprint["annotations"]["unlabelled_cases"] == 8


@pytest.mark.slow
def test_a_store_of_clicks_alone_trains_under_torchrun(clicks_only_src, tmp_path):
    from tests.training.test_trainer import finish, summary_of, torchrun

    out = tmp_path / "c.zarr"
    prepare(PrepareConfig(str(clicks_only_src / "src"), str(out), "nifti", size=32, folds=2,
                          clicks=str(clicks_only_src / "clicks.csv"), progress=False))
    run = tmp_path / "run"
    args = [f"data.store={out}", "data.train_split=fold0/train", "data.val_split=fold0/val", "data.batch_size=8",
            "data.num_workers=1", "model.base_width=8", "train.iterations=20", "train.val_every=20",
            "train.ckpt_every=20", "train.log_every=5", f"train.out_dir={run}", "train.progress=false",
            "tracking.enabled=false", "loss.name=pscv"]
    rc, stdout, err = finish(torchrun(args))
    assert rc == 0, err[-2000:]
    summary = summary_of(stdout)
    assert summary["step"] == 20 and np.isfinite(summary["val_mean_dsc"])
    rc, _, err = finish(torchrun(args[:-1] + [f"train.out_dir={tmp_path / 'v'}", "data.val_split=fold0/train"]))
    assert rc != 0 and "without a dense label" in err


def test_bad_click_inputs_write_nothing(clicks_only_src, tmp_path, capsys):
    src = str(clicks_only_src / "src")
    out = tmp_path / "o.zarr"
    part = tmp_path / "part.csv"
    lines = (clicks_only_src / "clicks.csv").read_text().splitlines()
    part.write_text("\n".join([lines[0]] + [l for l in lines[1:] if not l.startswith("phantom_000,")]) + "\n")
    cases = [
        (["--clicks", str(part)], "phantom_000"),  # a case without annotations and without a label
        (["--clicks-format", "csv"], "need --clicks"),
        (["--clicks", str(tmp_path / "nope.csv")], "nope.csv"),
    ]
    for extra, needle in cases:
        assert cli_main(["prepare", src, str(out), "--layout", "nifti", "--size", "32", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not out.exists() and not list(tmp_path.glob(".o.zarr.partial*"))
