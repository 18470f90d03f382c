"""Checkpoints: complete-or-absent, pruned, verified on resume; RNG states round-trip; model bundles
load safely and say what is wrong with one that does not."""
import copy
import json
import random

import numpy as np
import pytest
import torch

from pscv_dist import checkpoint as ckpt
from pscv_dist.config import load_config
from pscv_dist.distributed import DistState
from pscv_dist.engine import DDPEngine
from pscv_dist.errors import CheckpointError
from pscv_dist.model import UNet
from pscv_dist.model.bundle import load_model, model_meta, save_model


def _write(directory, step, keep=2):
    tmp = ckpt.staging_dir(directory, step)
    tmp.mkdir(parents=True)
    ckpt.save_atomic({"step": step}, tmp / "train_state.pt")
    return ckpt.commit(directory, step, keep)


def test_commit_prune_and_incomplete_ignored(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_00000020", "step_00000030"]
    # a crash mid-write leaves a .tmp folder and a folder without COMMIT: neither counts
    ckpt.staging_dir(tmp_path, 40).mkdir()
    (tmp_path / "step_00000050").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000030"
    _write(tmp_path, 60)
    assert not ckpt.staging_dir(tmp_path, 40).exists()  # stale staging cleaned on the next commit
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000060"


def test_rng_state_round_trip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_atomic(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# --- the manager, with a real (one-process) DDP engine -----------------------------------------------
def _engine(seed=0, **model):
    cfg = load_config(None, ["model.base_width=2", "model.depth=2", "train.iterations=10",
                             *[f"model.{k}={v}" for k, v in model.items()]])
    torch.manual_seed(seed)
    net = UNet(1, 3, cfg.model.base_width, cfg.model.depth, None, cfg.model.upsample)
    return DDPEngine(net, cfg, DistState()), cfg


def _train_one_step(engine):
    loss = engine.forward(torch.randn(2, 1, 8, 8)).square().mean()
    engine.backward(loss, True)
    assert engine.step(loss.detach())


def _saved(tmp_path, n_val=3):
    engine, cfg = _engine()
    _train_one_step(engine)
    manager = ckpt.CheckpointManager(tmp_path / "ck", DistState(), keep_last=2)
    meta = model_meta(engine.module, ["bg", "a", "b"], 8, {"mode": "none"}, 3, cfg.to_dict())
    path = manager.save(1, engine, meta, {"config": cfg.to_dict(), "best": {"dsc": 0.5, "step": 1}, "n_val": n_val,
                                          "mlflow_run_id": None})
    return engine, cfg, manager, path


def test_manager_round_trip_restores_weights_optimizer_and_train_state(tmp_path):
    engine, cfg, manager, path = _saved(tmp_path)
    assert sorted(json.loads((path / "COMMIT").read_text())["files"]) == ["model.pt", "optim.pt", "rng_rank0.pt",
                                                                           "train_state.pt"]
    fresh, _ = _engine(seed=1)
    ts = manager.load(fresh, cfg.to_dict())
    assert ts["step"] == 1 and ts["n_val"] == 3 and ts["best"] == {"dsc": 0.5, "step": 1}
    assert all(torch.equal(a, b) for a, b in zip(engine.module.state_dict().values(),
                                                  fresh.module.state_dict().values()))
    assert fresh.optimizer.state_dict()["state"].keys() == engine.optimizer.state_dict()["state"].keys()
    assert fresh.lr == engine.lr


@pytest.mark.parametrize("name", ["train_state.pt", "rng_rank0.pt", "model.pt", "optim.pt"])
def test_truncated_checkpoint_file_is_named_not_unpickled(tmp_path, name):
    _, cfg, manager, path = _saved(tmp_path)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        manager.load(_engine()[0], cfg.to_dict())
    assert str(err.value).startswith(str(path / name)) and "truncated or modified" in str(err.value)
    assert f"remove {path} to resume from the previous checkpoint" in str(err.value)


def test_tampered_rng_file_with_valid_pickle_is_refused(tmp_path):
    _, cfg, manager, path = _saved(tmp_path)
    ckpt.save_atomic({"not": "an rng state"}, path / "rng_rank0.pt")  # a valid file, wrong content...
    manifest = json.loads((path / "COMMIT").read_text())
    manifest["files"]["rng_rank0.pt"] = ckpt._sha256(path / "rng_rank0.pt")  # ...even with a matching hash
    (path / "COMMIT").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"rng_rank0.pt: not a pscv RNG state"):
        manager.load(_engine()[0], cfg.to_dict())


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    _, cfg, manager, path = _saved(tmp_path)
    other, other_cfg = _engine(upsample="bilinear")
    with pytest.raises(CheckpointError, match=r"checkpoint has model.upsample='transpose', config has 'bilinear'"):
        manager.load(other, other_cfg.to_dict())


# --- the portable model bundle ------------------------------------------------------------------------
def test_load_model_refuses_foreign_and_broken_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a pscv model bundle \(expected keys \['meta', 'model_state'\], found \['state_dict'\]\)"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nothing")
    net = UNet(1, 3, 2, 2)
    meta = model_meta(net, ["bg", "a", "b"], 8, {"mode": "none"}, 3)
    torch.save({"meta": {"classes": []}, "model_state": {}}, tmp_path / "nometa.pt")
    with pytest.raises(CheckpointError, match=r"meta lacks \['model', 'size', 'normalization', 'ignore_index'\]"):
        load_model(tmp_path / "nometa.pt")
    wrong = copy.deepcopy(meta)
    wrong["model"]["num_classes"] = 5
    torch.save({"meta": wrong, "model_state": net.state_dict()}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="the weights do not fit the architecture it describes"):
        load_model(tmp_path / "wrong.pt")
    save_model(tmp_path / "good.pt", net, meta)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cut.pt: not a loadable checkpoint, truncated or corrupt"):
        load_model(tmp_path / "cut.pt")


def test_save_model_leaves_the_live_module_alone_and_writes_float32(tmp_path):
    net = UNet(1, 3, 2, 2).to(torch.bfloat16).train()  # as DeepSpeed's bf16 mode leaves the module
    before = {k: v.clone() for k, v in net.state_dict().items()}
    save_model(tmp_path / "m.pt", net, model_meta(net, ["bg", "a", "b"], 8, {"mode": "none"}, 3))
    assert net.training and all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    model, _ = load_model(tmp_path / "m.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.state_dict()["head.weight"], before["head.weight"].float())
