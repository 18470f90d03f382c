"""The segmenter in the MLflow registry, on a real sqlite store: what a finished run logs (a pyfunc
with an explicit signature and pscv metadata, a copy of the weights), `pscv register` by run, by
best metric and by version (alias promotion), loading by alias, and every refusal as one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow import pyfunc as mlflow_pyfunc
from mlflow.exceptions import MlflowException

from pscv_dist.cli import main as cli_main
from pscv_dist.data.volume_io import read_nifti
from pscv_dist.errors import ConfigError, DataError
from pscv_dist.eval.predict import segment
from pscv_dist.model.bundle import load_model
from pscv_dist.tracking import best_run, load_registered_model, promote, register_run
from pscv_dist.tracking.pyfunc import INTERFACE, InvalidVolume

from .registry_fixtures import CLASSES, mlflow_store, volume  # noqa: F401  (a fixture)


def checkpoint_labels(store, label: str, image: np.ndarray) -> np.ndarray:
    model, meta = load_model(store.checkpoints[label])
    return segment(model, meta, image)


def version_of(store, name: str, alias: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(store.uri)
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)


def test_logged_model_is_a_pyfunc_segmenter_and_a_copy(mlflow_store):
    import mlflow

    net, before = mlflow_store.live["A"]
    assert net.training and all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "the live module was changed"
    mlflow.set_tracking_uri(mlflow_store.uri)
    run_id = mlflow_store.runs["A"]
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert "python_function" in info.flavors
    (spec_in,), (spec_out,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert spec_in.name is None and spec_in.type == np.dtype(np.float32) and spec_in.shape == (-1, -1, -1)
    assert spec_out.name is None and spec_out.type == np.dtype(np.uint8) and spec_out.shape == (-1, -1, -1)
    pscv = info.metadata["pscv"]
    assert pscv["interface"] == INTERFACE and pscv["classes"] == CLASSES and pscv["size"] == 16
    assert pscv["normalization"] == {"mode": "mr"} and pscv["pscv_version"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "checkpoint")}
    assert arts == {"checkpoint/model.pt"}, "the raw bundle stays beside the pyfunc"
    model, _ = load_model(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/checkpoint/model.pt"))
    assert torch.equal(model.state_dict()["head.weight"], before["head.weight"].float())


def test_register_load_by_alias_predicts_as_the_checkpoint(mlflow_store, phantom_src, tmp_path, capsys):
    run_a = mlflow_store.runs["A"]
    assert cli_main(["register", "--run", run_a, "--name", "seg", "--tracking-uri", mlflow_store.uri]) == 0
    assert f"models:/seg@champion -> seg version 1 (run {run_a})" in capsys.readouterr().out
    image = volume()
    served = load_registered_model("models:/seg@champion", mlflow_store.uri)
    got = served.predict(image)
    want = checkpoint_labels(mlflow_store, "A", image)
    assert got.dtype == np.uint8 and got.shape == image.shape and len(np.unique(want)) > 1
    np.testing.assert_array_equal(got, want)
    # the CLI on a NIfTI volume: --model-uri and --checkpoint write the same labels, same geometry
    src = sorted((phantom_src / "imagesTr").glob("*.nii.gz"))[0]
    outs = {}
    for how, args in (("uri", ["--model-uri", "models:/seg@champion", "--tracking-uri", mlflow_store.uri]),
                      ("ckpt", ["--checkpoint", str(mlflow_store.checkpoints["A"])])):
        outs[how] = tmp_path / f"{how}.nii.gz"
        assert cli_main(["predict", *args, str(src), str(outs[how])]) == 0
    import nibabel as nib

    a, b = nib.load(outs["uri"]), nib.load(outs["ckpt"])
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, nib.load(src).affine)
    labels, _ = read_nifti(outs["uri"])
    np.testing.assert_array_equal(labels, checkpoint_labels(mlflow_store, "A", read_nifti(src)[0]))


def test_alias_promotion_moves_the_alias_to_an_existing_version(mlflow_store, capsys):
    uri = mlflow_store.uri
    first = register_run(mlflow_store.runs["A"], "promo", "champion", uri)
    second = register_run(mlflow_store.runs["B"], "promo", "champion", uri)
    assert (first.version, second.version) == ("1", "2") and version_of(mlflow_store, "promo", "champion") == "2"
    image = volume(seed=3)
    assert cli_main(["register", "--name", "promo", "--alias", "champion", "--version", "1",
                     "--tracking-uri", uri]) == 0
    assert "models:/promo@champion -> promo version 1" in capsys.readouterr().out
    assert version_of(mlflow_store, "promo", "champion") == "1"
    np.testing.assert_array_equal(load_registered_model("models:/promo@champion", uri).predict(image),
                                  checkpoint_labels(mlflow_store, "A", image))
    # another alias on the other version; MLflow's own @latest still means the newest version
    assert promote("promo", 2, "challenger", uri).version == "2"
    assert version_of(mlflow_store, "promo", "challenger") == "2"
    np.testing.assert_array_equal(load_registered_model("models:/promo@latest", uri).predict(image),
                                  checkpoint_labels(mlflow_store, "B", image))


def test_best_of_picks_the_best_finished_run_with_a_model(mlflow_store, capsys):
    uri, runs = mlflow_store.uri, mlflow_store.runs
    # C (0.9) has no model and F (0.99) failed: B (0.8) is the best run that can be registered
    assert best_run("train", tracking_uri=uri) == (runs["B"], pytest.approx(0.8))
    assert best_run("train", minimize=True, tracking_uri=uri) == (runs["A"], pytest.approx(0.6))
    assert cli_main(["register", "--best-of", "train", "--name", "best", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"best run of train: {runs['B']} (val_mean_dsc = 0.8)" in out
    assert f"models:/best@champion -> best version 1 (run {runs['B']})" in out


def test_a_pyfunc_request_of_the_wrong_shape_or_dtype_is_invalid(mlflow_store):
    served = load_registered_model(f"runs:/{mlflow_store.runs['A']}/model", mlflow_store.uri)
    image = volume()
    nan = image.copy()
    nan[0, 1, 2] = np.nan
    for bad, says in ((image[0], "does not match expected shape"), (image[None], "does not match expected shape"),
                      (image.astype(np.float64), "dtype of input float64 does not match"),
                      (image.astype(np.int32), "dtype of input int32 does not match"),
                      (np.zeros((0, 8, 8), np.float32), "with Z, H, W >= 1, found shape (0, 8, 8)"),
                      (nan, "1 voxel(s) are NaN or inf")):
        with pytest.raises(MlflowException) as err:
            served.predict(bad)
        assert says in err.value.message and err.value.get_http_status_code() == 400, err.value.message
    # the model's own check, without pyfunc's signature enforcement in front of it
    segmenter = served.unwrap_python_model()
    for bad, says in ((image[0], "found 2 dimension(s)"), (image.astype(np.float64), "found dtype float64"),
                      ([[[1.0]]], "found a list")):
        with pytest.raises(InvalidVolume) as err:
            segmenter.predict(None, bad)
        assert says in str(err.value) and isinstance(err.value, DataError)
        assert err.value.get_http_status_code() == 400


BAD_REGISTER = [
    # (arguments, the one line printed)
    (["--run", "{C}", "--name", "x"], "--run {C}: the run logged no pscv segmenter model"),
    (["--run", "0123456789abcdef", "--name", "x"], "--run 0123456789abcdef: no such run in the MLflow store"),
    (["--best-of", "nope", "--name", "x"], "--best-of nope: no such experiment"),
    (["--best-of", "failed-only", "--name", "x"], "--best-of failed-only: the experiment has no finished run"),
    (["--best-of", "no-metric", "--name", "x"], "--best-of no-metric: none of its 1 finished run(s) logged the "
                                                "metric 'val_mean_dsc'"),
    (["--best-of", "train", "--metric", "val_mean_hd95", "--name", "x"], "none of its 3 finished run(s) logged"),
    (["--name", "nobody", "--version", "1"], "--name nobody: no registered model of that name"),
    (["--name", "seg2", "--version", "7"], "--version 7: model seg2 has no such version (found [1])"),
    (["--run", "{A}", "--name", "x", "--alias", "latest"], "--alias latest: 'latest' is reserved by MLflow"),
    (["--name", "seg2", "--version", "1", "--alias", "v2"], "--alias v2: names of the form v<number> are reserved"),
    (["--name", "seg2", "--version", "1", "--alias", "a b"], "--alias 'a b': expected letters, digits"),
    (["--name", "x"], "give exactly one of --run RUN_ID, --best-of EXPERIMENT or --version V, found none"),
    (["--run", "{A}", "--best-of", "train", "--name", "x"], "found --run and --best-of"),
]


@pytest.fixture(scope="module")
def seg2(mlflow_store):
    """A registered model with exactly one version."""
    return register_run(mlflow_store.runs["A"], "seg2", "champion", mlflow_store.uri)


@pytest.mark.parametrize("args, says", BAD_REGISTER, ids=[str(i) for i in range(len(BAD_REGISTER))])
def test_register_refuses_bad_input_in_one_line(mlflow_store, seg2, capsys, args, says):
    fill = {"{A}": mlflow_store.runs["A"], "{C}": mlflow_store.runs["C"]}
    args = [fill.get(a, a) for a in args]
    says = says.replace("{C}", mlflow_store.runs["C"])
    assert cli_main(["register", *args, "--tracking-uri", mlflow_store.uri]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_registry_commands_never_create_a_store_and_need_a_uri(mlflow_store, tmp_path, capsys, monkeypatch,
                                                               phantom_src):
    db = tmp_path / "nope" / "mlflow.db"
    for args in (["--run", "abc", "--name", "x"], ["--best-of", "train", "--name", "x"],
                 ["--name", "x", "--version", "1"]):
        assert cli_main(["register", *args, "--tracking-uri", f"sqlite:///{db}"]) == 2
        err = capsys.readouterr().err
        assert f"no MLflow database at {db}" in err and "Traceback" not in err
    assert not db.exists() and not db.parent.exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="--run abc: no tracking URI; pass --tracking-uri"):
        register_run("abc", "x")
    # predict: an alias that is not set is a one-line error, and nothing is written
    image = sorted((phantom_src / "imagesTr").glob("*.nii.gz"))[0]
    out = tmp_path / "p.nii.gz"
    assert cli_main(["predict", "--model-uri", "models:/seg-none@champion", "--tracking-uri", mlflow_store.uri,
                     str(image), str(out)]) == 2
    err = capsys.readouterr().err
    assert "models:/seg-none@champion: model not found in the MLflow registry" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(DataError, match="model not found"):
        load_registered_model(f"runs:/{mlflow_store.runs['C']}/model", mlflow_store.uri)


def test_scoring_protocol_turns_every_bad_volume_into_a_400(mlflow_store):
    """MLflow's scoring-server handler, in process (the real server: test_serving.py)."""
    from mlflow.pyfunc import scoring_server

    served = load_registered_model(f"runs:/{mlflow_store.runs['A']}/model", mlflow_store.uri)
    schema = served.metadata.get_input_schema()
    ok = scoring_server.invocations('{"inputs": [[[1, 2], [3, 4]]]}', "application/json", served, schema)
    assert ok.status == 200 and json.loads(ok.response)["predictions"] == \
        served.predict(np.array([[[1, 2], [3, 4]]], np.float32)).tolist()
    for body, says in (('{"inputs": [[1, 2], [3, 4]]}', "Shape of input (2, 2) does not match expected shape"),
                       ('{"inputs": [[[NaN, 2], [3, 4]]]}', "1 voxel(s) are NaN or inf"),
                       ('{"inputs": [[[]]]}', "with Z, H, W >= 1, found shape (1, 1, 0)"),
                       ('{"inputs": [[["a"]]]}', "could not convert string to float"),
                       ('{"volume": [[[1]]]}', "inputs")):
        with pytest.raises(MlflowException) as err:
            scoring_server.invocations(body, "application/json", served, schema)
        assert err.value.get_http_status_code() == 400 and says in err.value.message, err.value.message[-500:]


class NotASegmenter(mlflow_pyfunc.PythonModel):
    _skip_type_hint_validation = True

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_pyfunc_that_is_not_a_pscv_segmenter_is_refused(mlflow_store, capsys):
    import mlflow

    mlflow.set_tracking_uri(mlflow_store.uri)
    mlflow.create_experiment("other", artifact_location=(mlflow_store.root / "other").as_uri())  # not ./mlruns
    mlflow.set_experiment("other")
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=NotASegmenter(), pip_requirements=[],
                                registered_model_name="foreign")
    assert cli_main(["register", "--run", run.info.run_id, "--name", "x", "--tracking-uri", mlflow_store.uri]) == 2
    assert f"--run {run.info.run_id}: the run logged no pscv segmenter model" in capsys.readouterr().err
    with pytest.raises(DataError, match="models:/foreign/1: not a pscv segmenter"):
        load_registered_model("models:/foreign/1", mlflow_store.uri)
