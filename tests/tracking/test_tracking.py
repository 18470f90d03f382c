"""MLflow on a real local sqlite store: reading a registry never creates one, unknown values are
never logged. (The logged segmenter and the registry: test_registry.py; serving: test_serving.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pscv_dist.cli import main as cli_main
from pscv_dist.errors import ConfigError
from pscv_dist.tracking import check_tracking_uri, load_registered_model
from pscv_dist.tracking.runs import evaluation_metrics, known


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
