"""The trainer refuses what cannot work before it creates anything, resumes exactly what it saved
(including the validation count), reports damaged checkpoints by name, and writes summary.json.
One-process runs in this process (no process group), on the session's phantom store."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pscv_dist.train import main as train_main


def _args(store: Path, out: Path, iterations: int = 2, **extra) -> list[str]:
    base = {"data.store": store, "data.train_split": "all", "data.val_split": "null", "data.batch_size": 4,
            "data.num_workers": 0, "model.base_width": 2, "train.iterations": iterations, "train.val_every": 0,
            "train.ckpt_every": iterations, "train.log_every": 1, "train.out_dir": out, "train.progress": "false",
            "tracking.enabled": "false", "augment.backend": "none"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _fails(capsys, args: list[str]) -> str:
    rc = train_main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("pscv train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_batch_larger_than_training_split_is_refused_before_anything_exists(phantom_store, tmp_path, capsys):
    out = tmp_path / "run"
    msg = _fails(capsys, _args(phantom_store, out, **{"data.train_split": "fold0/val", "data.batch_size": 64}))
    assert "data.batch_size=64 is larger than the training split 'fold0/val'" in msg and "slices)" in msg
    assert not out.exists()


def test_depth_the_slices_cannot_carry_and_bad_dropout_leave_no_run_folder(phantom_store, tmp_path, capsys):
    out = tmp_path / "run"
    msg = _fails(capsys, _args(phantom_store, out, **{"model.depth": 6}))
    assert "model.depth=6 needs slices divisible by 64" in msg and "32x32" in msg
    msg = _fails(capsys, _args(phantom_store, out, **{"model.dropout": "[0.1,0.2]"}))
    assert "model.dropout=[0.1, 0.2] has 2 values; model.depth=4 needs depth+1 = 5" in msg
    assert not out.exists()


def test_depth_five_trains_with_its_default_dropout(phantom_store, tmp_path, capsys):
    assert train_main(_args(phantom_store, tmp_path / "run", **{"model.depth": 5})) == 0, capsys.readouterr().err


def test_output_folder_that_is_a_file_or_read_only(phantom_store, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    msg = _fails(capsys, _args(phantom_store, tmp_path / "file" / "run"))
    assert f"train.out_dir={tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, expected a folder" in msg
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the file case above still ran")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert "is not writable" in _fails(capsys, _args(phantom_store, ro / "run"))


def test_truncated_train_state_on_resume_is_one_line(phantom_store, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(_args(phantom_store, out)) == 0
    state = out / "checkpoints" / "step_00000002" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    msg = _fails(capsys, _args(phantom_store, out, iterations=4))
    assert f"{state}: truncated or modified since it was saved" in msg


def test_summary_json_is_what_the_run_printed(phantom_store, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(_args(phantom_store, out)) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((out / "summary.json").read_text()) == printed
    assert printed["step"] == 2 and printed["val_mean_dsc"] is None and printed["mlflow_run_id"] is None


def _overlay_steps(out: Path) -> set[str]:
    return {p.name for p in out.glob("mlartifacts/*/artifacts/overlays/step_*")}


@pytest.mark.slow  # three runs that each log a model to MLflow (~15 s apiece)
def test_validation_count_survives_resume_so_overlay_cadence_holds(phantom_store, tmp_path, capsys):
    """Overlays every 3rd validation (tracking.image_every=3) and at the last one. A run stopped after
    2 of 4 validations and resumed must log the 3rd validation's overlays, like the straight run."""
    common = {"data.val_split": "fold0/val", "train.val_every": 1, "train.ckpt_every": 1,
              "tracking.enabled": "true", "tracking.image_every": 3}
    straight = tmp_path / "straight"
    assert train_main(_args(phantom_store, straight, iterations=4, **common)) == 0
    assert _overlay_steps(straight) == {"step_00000003", "step_00000004"}
    resumed = tmp_path / "resumed"
    assert train_main(_args(phantom_store, resumed, iterations=2, **common)) == 0
    assert train_main(_args(phantom_store, resumed, iterations=4, **common)) == 0
    assert "step_00000003" in _overlay_steps(resumed)
    last = torch.load(resumed / "checkpoints" / "step_00000004" / "train_state.pt", weights_only=True)
    assert last["n_val"] == 4


def test_resume_drops_the_log_records_after_the_checkpoint(tmp_path):
    """A run killed after validating step 8 but before committing checkpoint 8 redoes steps 5..8 on
    resume from 4; their first records must not stay in the log beside the new ones."""
    import json

    from pscv_dist.trainer import _truncate_log

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 9)) + '{"step": 9, "lo')
    _truncate_log(log, 4)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    _truncate_log(tmp_path / "absent.jsonl", 4)  # a run resumed before it logged anything
    assert not (tmp_path / "absent.jsonl").exists()


def test_train_seconds_of_a_resumed_run_count_the_attempts_before_its_checkpoint(phantom_store, tmp_path):
    """The study reports a run's training time from its summary; a run resumed from a checkpoint saved
    after 1000 s of training reports 1000 s plus its own attempt, not its own attempt alone."""
    import hashlib
    import time

    out = tmp_path / "run"
    assert train_main(_args(phantom_store, out, iterations=2)) == 0
    first = json.loads((out / "summary.json").read_text())["train_s"]
    ckpt = out / "checkpoints" / "step_00000002"
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    assert 0 < state["train_s"] <= first
    state["train_s"] = 1000.0  # as if the first attempt had taken 1000 s; COMMIT re-hashed to match
    torch.save(state, ckpt / "train_state.pt")
    commit = json.loads((ckpt / "COMMIT").read_text())
    commit["files"]["train_state.pt"] = hashlib.sha256((ckpt / "train_state.pt").read_bytes()).hexdigest()
    (ckpt / "COMMIT").write_text(json.dumps(commit))
    t0 = time.perf_counter()
    assert train_main(_args(phantom_store, out, iterations=4, **{"train.ckpt_every": 2})) == 0
    wall = time.perf_counter() - t0
    resumed = json.loads((out / "summary.json").read_text())["train_s"]
    assert 1000.0 < resumed <= 1000.0 + wall
    last = torch.load(out / "checkpoints" / "step_00000004" / "train_state.pt", weights_only=True)
    assert 1000.0 < last["train_s"] <= resumed
