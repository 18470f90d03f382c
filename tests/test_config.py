"""Typed configs: presets load, bad keys and values are refused with the key, value and what is allowed."""
from pathlib import Path

import pytest
import torch

from pscv_dist.config import PRESETS_DIR, ConfigError, load_config, presets
from pscv_dist.losses import objective_names
from pscv_dist.model.unet import DEFAULT_DROPOUT, UNet, default_dropout
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


def test_one_copy_of_each_preset_shipped_in_the_package():
    # the top-level configs/ is the package's folder, not a second copy that can drift
    assert CONFIGS.resolve() == PRESETS_DIR.resolve()
    assert presets() == ["acdc", "cpu_quick", "demo", "synapse"]
    assert load_config("acdc") == load_config(CONFIGS / "acdc.yaml") == load_config("acdc.yaml")


def test_demo_loads_its_preset_not_a_copy():
    import pscv_dist.demo as demo

    assert not hasattr(demo, "DEMO_CONFIG") and demo.PRESET == PRESETS_DIR / "demo.yaml"


def test_a_folder_named_like_a_preset_is_not_a_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acdc").mkdir()  # a folder in the working directory: the preset still loads by name
    assert load_config("acdc").train.iterations == 60000
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="mine: is a folder, expected a YAML config file or a preset name"):
        load_config("mine")


def test_loss_names_come_from_the_objective_registry():
    from pscv_dist.losses.objectives import OBJECTIVES

    assert set(objective_names()) == {"pce", "entmini", "ms", "pscv", "fullsup"}
    with pytest.raises(ConfigError, match="loss.name='probe' is not allowed"):
        load_config(None, ["loss.name=probe"])
    OBJECTIVES["probe"] = OBJECTIVES["pce"]  # a newly registered objective is accepted at once
    try:
        assert load_config(None, ["loss.name=probe"]).loss.name == "probe"
    finally:
        del OBJECTIVES["probe"]


def test_overrides_and_flat_dict():
    cfg = load_config(CONFIGS / "acdc.yaml", ["loss.lambda_cv=0.3", "train.iterations=2000", "model.dropout=[0,0,0,0,0]",
                                              "tracking.run_name=null", "augment.backend=dali"])
    assert cfg.loss.lambda_cv == 0.3 and cfg.train.iterations == 2000 and cfg.model.dropout == [0.0] * 5
    flat = cfg.flat()
    assert flat["loss.lambda_cv"] == 0.3 and flat["augment.backend"] == "dali" and flat["tracking.run_name"] is None


@pytest.mark.parametrize("override,message", [
    ("loss.lambda=1", "unknown config key loss.lambda"),
    ("trian.iterations=5", "unknown config section 'trian'"),
    ("loss.name=dice", "loss.name='dice' is not allowed; expected one of"),
    ("tracking.image_every=-1", "tracking.image_every=-1 is out of range; expected >= 0"),
    ("model.dropout=[0.1,0.1]", "model.dropout=[0.1, 0.1] has 2 values; model.depth=4 needs depth+1 = 5"),
    ("model.dropout=[0,0,0,0,1]", "model.dropout=[0.0, 0.0, 0.0, 0.0, 1.0]: each value must be in [0, 1)"),
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


@pytest.mark.parametrize("text,message", [
    ("- data\n- model\n", "the top level must be a mapping of sections (data:, model:, ...), found a list"),
    ("42\n", "the top level must be a mapping of sections (data:, model:, ...), found a int"),
    ("loss: pscv\n", "section 'loss' must be a mapping of keys, found a str: 'pscv'"),
    ("loss:\n  - name\n", "section 'loss' must be a mapping of keys, found a list"),
    ("train:\n  iterations: -5\n", "train.iterations=-5 is out of range"),
])
def test_config_file_shape_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    for overrides in ([], ["train.seed=1"]):  # with and without overrides: never a TypeError
        with pytest.raises(ConfigError) as err:
            load_config(path, overrides)
        assert str(err.value).startswith(str(path)) and message in str(err.value)


@pytest.mark.parametrize("depth", range(1, 8))
def test_every_allowed_depth_has_a_working_default_dropout(depth):
    cfg = load_config(None, [f"model.depth={depth}"])
    drop = default_dropout(cfg.model.depth)
    assert len(drop) == depth + 1 and drop[-1] == 0.5 and all(0 <= p < 1 for p in drop)
    model = UNet(1, 3, 2, depth)  # the trainer's call: dropout None -> the default
    assert model.dropout == drop
    side = 2 ** (depth + 1)  # the deepest level is 2x2: BatchNorm needs more than one value
    assert model(torch.zeros(1, 1, side, side)).shape == (1, 3, side, side)
    if depth == 4:
        assert drop == DEFAULT_DROPOUT


def test_train_refuses_before_starting(tmp_path, capsys):
    assert train_main(["loss.lambda_cv=abc", f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert "loss.lambda_cv='abc': expected a number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cv_pool_is_global_or_an_image_count(tmp_path):
    from pscv_dist.losses import build_objective

    assert load_config(None, []).loss.cv_pool == "global"
    yaml_int = tmp_path / "c.yaml"
    yaml_int.write_text("loss: {cv_pool: 8}\n")
    assert load_config(str(yaml_int), []).loss.cv_pool == "8"
    cfg = load_config(None, ["loss.cv_pool=12"])
    objective = build_objective(cfg.loss, 4, 4, seed=0)
    assert objective.cv.pool == 12
    assert build_objective(load_config(None, []).loss, 4, 4, seed=0).cv.pool is None
    for bad in ("1", "0", "all", "-3", "2.5"):
        with pytest.raises(ConfigError, match=f"loss.cv_pool='{bad}': expected 'global' or an integer >= 2"):
            load_config(None, [f"loss.cv_pool={bad}"])
