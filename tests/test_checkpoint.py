"""Checkpoint folders: complete-or-absent, pruned, RNG states round-trip, bundles load safely."""
import random

import numpy as np
import pytest
import torch

from pscv_dist import checkpoint as ckpt


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


def test_load_model_refuses_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pscv model bundle"):
        ckpt.load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt.load_model(tmp_path / "nothing")
