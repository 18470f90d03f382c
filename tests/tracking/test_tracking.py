"""MLflow on a real local sqlite store: the logged model is a copy (the live module is untouched), the
registry round-trips it, reading a registry never creates one, unknown values are never logged."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pscv_dist.cli import main as cli_main
from pscv_dist.config import TrackingConfig
from pscv_dist.errors import ConfigError
from pscv_dist.model import UNet
from pscv_dist.model.bundle import model_meta
from pscv_dist.tracking import Tracker, check_tracking_uri, load_registered_model
from pscv_dist.tracking.runs import evaluation_metrics, known


@pytest.mark.slow  # MLflow's pt2 export of the model takes ~15 s
def test_log_model_registers_a_copy_and_leaves_the_training_module_alone(tmp_path):
    net = UNet(1, 3, 2, 2).to(torch.bfloat16).train()  # what DeepSpeed's bf16 mode trains
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tracker = Tracker(TrackingConfig(experiment="t"), str(tmp_path), True, {"a": 1})
    assert tracker.active, "MLflow on a local sqlite store must start"
    meta = model_meta(net, ["bg", "a", "b"], 16, {"mode": "none"}, 3)
    assert tracker.log_model(net, meta, "pscv-t") is not None
    assert tracker.active, "registering must not have failed (and switched tracking off)"
    tracker.end()
    assert net.training and all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    model, got = load_registered_model("models:/pscv-t@latest", tracker.uri)
    assert got["classes"] == ["bg", "a", "b"] and not model.training
    assert torch.equal(model.state_dict()["head.weight"], before["head.weight"].float())


def test_reading_a_registry_never_creates_one(tmp_path, capsys, phantom_src):
    db = tmp_path / "nope" / "mlflow.db"
    with pytest.raises(ConfigError, match=f"no MLflow database at {db}"):
        load_registered_model("models:/x@latest", f"sqlite:///{db}")
    image = sorted((phantom_src / "imagesTr").glob("*.nii.gz"))[0]
    rc = cli_main(["predict", "--model-uri", "models:/x@latest", "--tracking-uri", f"sqlite:///{db}",
                   str(image), str(tmp_path / "out.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and f"no MLflow database at {db}" in err and "Traceback" not in err
    assert not db.exists() and not db.parent.exists()
    with pytest.raises(ConfigError, match="expected models:/NAME@ALIAS"):
        load_registered_model("pscv-t@latest", f"sqlite:///{db}")
    assert check_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_unknown_values_are_left_out_not_logged_as_zero():
    assert known({"a": None, "b": float("nan"), "c": math.inf, "d": 0.0, "e": np.float32(0.5), "f": True}) == \
        {"d": 0.0, "e": 0.5}
    results = {"mean_dsc": 0.7, "mean_hd95": None,
               "per_class": {"LV": {"dsc": 0.9}, "RV": {"dsc": None}}}
    assert evaluation_metrics(results, "val") == {"val_mean_dsc": 0.7, "val_dsc_LV": 0.9}
