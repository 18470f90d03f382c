"""Typed configs: presets load, bad keys and values are refused with the key, value and what is allowed."""
from pathlib import Path

import pytest
import yaml

from pscv_dist.config import ConfigError, load_config
from pscv_dist.demo import DEMO_CONFIG
from pscv_dist.train import main as train_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["acdc", "synapse", "cpu_quick", "demo"])
def test_presets_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.optim.momentum == 0.9 and cfg.loss.tau == pytest.approx(0.07)


def test_paper_protocols():
    acdc, syn = load_config(CONFIGS / "acdc.yaml"), load_config(CONFIGS / "synapse.yaml")
    assert (acdc.optim.lr, acdc.train.iterations, acdc.loss.lambda_cv, acdc.data.batch_size) == (0.01, 60000, 1e-3, 12)
    assert (syn.optim.lr, syn.train.iterations, syn.loss.lambda_cv) == (0.001, 100000, 0.3)


def test_demo_yaml_is_the_embedded_demo_config():
    assert yaml.safe_load((CONFIGS / "demo.yaml").read_text()) == DEMO_CONFIG


def test_overrides_and_flat_dict():
    cfg = load_config(CONFIGS / "acdc.yaml", ["loss.lambda_cv=0.3", "train.iterations=2000", "model.dropout=[0,0,0,0,0]",
                                              "tracking.run_name=null", "augment.backend=dali"])
    assert cfg.loss.lambda_cv == 0.3 and cfg.train.iterations == 2000 and cfg.model.dropout == [0.0] * 5
    flat = cfg.flat()
    assert flat["loss.lambda_cv"] == 0.3 and flat["augment.backend"] == "dali" and flat["tracking.run_name"] is None


@pytest.mark.parametrize("override,message", [
    ("loss.lambda=1", "unknown config key loss.lambda"),
    ("trian.iterations=5", "unknown config section 'trian'"),
    ("loss.name=dice", "loss.name='dice' is not allowed; expected one of ['pce', 'entmini', 'ms', 'pscv', 'fullsup']"),
    ("train.zero_stage=3", "train.zero_stage=3 is not allowed; expected one of [0, 1, 2]"),
    ("data.batch_size=0", "data.batch_size=0 is out of range; expected >= 1"),
    ("optim.lr=-1", "optim.lr=-1.0 is out of range; expected > 0"),
    ("loss.tau=0", "loss.tau=0.0 is out of range; expected > 0"),
    ("train.iterations=many", "train.iterations='many': expected an integer"),
    ("train.iterations=2.5", "train.iterations=2.5: expected an integer"),
    ("augment.backend=opencv", "augment.backend='opencv' is not allowed"),
    ("loss.gather_dtype=float16", "loss.gather_dtype='float16' is not allowed"),
    ("lossname=pce", "must look like section.key=value"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("loss: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_train_refuses_before_starting(tmp_path, capsys):
    assert train_main(["loss.lambda_cv=abc", f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert "loss.lambda_cv='abc': expected a number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
