"""`pscv study`: a tiny study on the phantom store, run for real (``pscv train`` and ``pscv evaluate``
subprocesses, an MLflow sqlite store), resumed, refused where it must be, and its report's numbers
checked against a computation from the evaluation files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from pscv_dist.cli import main as cli_main
from pscv_dist.errors import ConfigError
from pscv_dist.study import RunOptions, load_study, run_study, write_report
from pscv_dist.study.plan import fingerprint
from pscv_dist.study.folder import eval_path, record_path

ITERS = 4


def study_file(tmp: Path, store: Path, **extra) -> Path:
    raw = {"name": "tiny", "config": "cpu_quick",
           "overrides": {"data.store": str(store), "data.batch_size": 4, "data.num_workers": 0, "model.base_width": 2,
                         "augment.backend": "none", "train.val_every": 2, "train.ckpt_every": 2, "train.log_every": 2,
                         "train.progress": False},
           "train_split": "fold0/train", "eval_split": "fold0/val", "seeds": [0, 1], "budgets": [ITERS],
           "reference": "pce", "upper": "fullsup",
           "methods": {"pce": {"loss.name": "pce"}, "pscv": {"loss.name": "pscv", "loss.lambda_cv": 0.01},
                       "fullsup": {"loss.name": "fullsup"}},
           "paper": {"pce": {"dsc": 0.722}}, "comparisons": [["fullsup", "pscv"], ["fullsup", ["pce", "pscv"]]]}
    if "methods" in extra:  # the pair names the default methods
        del raw["comparisons"]
    raw.update(extra)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(phantom_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    os.environ["OMP_NUM_THREADS"] = "1"
    path = study_file(tmp, phantom_store)
    out = tmp / "out"
    res = run_study(load_study(path), RunOptions(out=out, parallel=2))
    return path, out, res


def test_every_run_trains_and_is_scored_in_both_conventions(finished):
    path, out, res = finished
    study = load_study(path)
    assert res["failed"] == [] and res["done"] == 6
    for run in study.runs():
        rec = json.loads(record_path(run, out).read_text())
        assert rec["status"] == "done" and rec["train_s"] > 0 and rec["eval_s"] > 0
        assert rec["fingerprint"] == fingerprint(rec["overrides"])
        summary = json.loads((run.folder(out) / "summary.json").read_text())
        assert summary["step"] == ITERS and rec["train_s"] == summary["train_s"]  # the trainer's own count
        for conv in ("strict", "literature"):
            ev = json.loads(eval_path(run, out, conv).read_text())
            assert ev["convention"] == conv and sorted(ev["per_class"]) == sorted(ev["per_class"])
    # one MLflow store for the study, one run per (method, seed)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("study-tiny")
    names = sorted(r.info.run_name for r in client.search_runs([exp.experiment_id]))
    assert names == sorted(run.key for run in study.runs())


def test_a_finished_study_is_not_run_again_and_a_lost_evaluation_is_redone(finished):
    path, out, _ = finished
    study = load_study(path)
    run = study.runs()[0]
    mtimes = {r.key: (r.folder(out) / "summary.json").stat().st_mtime for r in study.runs()}
    lost = eval_path(run, out, "literature")
    kept = lost.read_text()
    lost.unlink()
    res = run_study(study, RunOptions(out=out))
    assert res["failed"] == [] and lost.is_file() and json.loads(lost.read_text()) == json.loads(kept)
    # nothing was trained again
    assert mtimes == {r.key: (r.folder(out) / "summary.json").stat().st_mtime for r in study.runs()}


def test_a_changed_method_is_refused_not_overwritten(finished, tmp_path):
    path, out, _ = finished
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["pscv"]["loss.lambda_cv"] = 0.5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw))
    before = sorted(p.name for p in (out / "runs" / "pscv").iterdir())
    with pytest.raises(ConfigError, match=r"runs/pscv/b4_s0: holds run pscv/b4_s0 with other settings"):
        run_study(load_study(changed), RunOptions(out=out))
    assert sorted(p.name for p in (out / "runs" / "pscv").iterdir()) == before


def _retrain_state(run_folder: Path, **changes) -> None:
    """Rewrite the config the run's checkpoint saved, as an older pscv-dist would have saved it:
    ``{"optim.momentum": 0.5}`` sets a value, ``None`` drops the key (an option added since)."""
    import torch

    from pscv_dist.checkpoint import latest_checkpoint

    path = latest_checkpoint(run_folder / "checkpoints") / "train_state.pt"
    state = torch.load(path, weights_only=True)
    for key, value in changes.items():
        section, name = key.split(".")
        if value is None:
            del state["config"][section][name]
        else:
            state["config"][section][name] = value
    torch.save(state, path)


def test_a_run_trained_under_other_defaults_is_refused_and_left_out_of_the_report(finished, tmp_path):
    """The fingerprint covers the study's overrides; a default that changed under a finished run (a
    newer pscv-dist, an edited preset) is found in the config its checkpoint saved."""
    import shutil

    from pscv_dist.study.report import collect

    path, out, _ = finished
    study = load_study(path)
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    # what does not change what a run learns is not a change: a loss key its objective ignores
    # (pCE and loss.lambda_ms), bookkeeping, an option the run predates
    _retrain_state(study.runs(["pce"], None, [0])[0].folder(copy),
                   **{"loss.lambda_ms": 0.123, "train.log_every": 99, "loss.cv_pool": None})
    _retrain_state(study.runs(["pscv"], None, [0])[0].folder(copy), **{"loss.lambda_ms": 0.123})
    assert run_study(study, RunOptions(out=copy))["failed"] == []
    assert len(collect(study, copy)) == 6
    # what does: a learning-rate schedule, a loss key PSCV reads
    _retrain_state(study.runs(["pce"], None, [1])[0].folder(copy), **{"optim.momentum": 0.5})
    _retrain_state(study.runs(["pscv"], None, [1])[0].folder(copy), **{"loss.mu": 0.5})
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"runs/pce/b4_s1: trained with optim.momentum=0.5 \(now 0.9\) "
                                          r"\(and 1 more run\(s\)\): the study's config, its preset or pscv-dist's defaults"):
        run_study(study, RunOptions(out=copy))
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == before
    left_out = []
    assert sorted(row["run"].key for row in collect(study, copy, left_out)) == ["fullsup/b4_s0", "fullsup/b4_s1",
                                                                               "pce/b4_s0", "pscv/b4_s0"]
    assert left_out == ["`pce/b4_s1`: trained with optim.momentum=0.5 (now 0.9)",
                        "`pscv/b4_s1`: trained with loss.mu=0.5 (now 1e-05)"]


def test_a_finished_run_without_checkpoints_is_checked_by_its_record_or_refused(finished, tmp_path):
    """Checkpoints deleted to save space: the record keeps the config the run was trained with; a
    finished run with neither cannot be vouched for and is refused, not reported."""
    import shutil

    from pscv_dist.study.report import collect

    path, out, _ = finished
    study = load_study(path)
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    run = study.runs(["pce"], None, [0])[0]
    record = record_path(run, copy)
    shutil.rmtree(run.folder(copy) / "checkpoints")
    assert json.loads(record.read_text())["config"]["optim.momentum"] == 0.9
    assert run_study(study, RunOptions(out=copy))["failed"] == [] and len(collect(study, copy)) == 6
    rec = json.loads(record.read_text())
    rec["config"]["optim.momentum"] = 0.5
    record.write_text(json.dumps(rec))
    with pytest.raises(ConfigError, match=r"runs/pce/b4_s0: trained with optim.momentum=0.5 \(now 0.9\)"):
        run_study(study, RunOptions(out=copy))
    del rec["config"]
    record.write_text(json.dumps(rec))
    with pytest.raises(ConfigError, match=r"runs/pce/b4_s0: finished, but neither a checkpoint nor its record "
                                          r"b4_s0.json says which config"):
        run_study(study, RunOptions(out=copy))
    left_out = []
    assert len(collect(study, copy, left_out)) == 5 and left_out[0].startswith("`pce/b4_s0`: ")


def test_the_report_agrees_with_the_evaluation_files(finished):
    path, out, _ = finished
    study = load_study(path)
    rep = write_report(study, out)
    text = Path(rep["report"]).read_text()
    assert rep["finished"] == rep["total"] == 6
    assert {Path(f).name for f in rep["figures"]} == {"curves.png", "overlays.png"}
    dsc = {(r.method, r.seed): json.loads(eval_path(r, out, "strict").read_text())["mean_dsc"] for r in study.runs()}
    # independent: mean ± sample std of pscv, the paired difference against pce and its t interval
    p = [dsc["pscv", s] for s in (0, 1)]
    d = [dsc["pscv", s] - dsc["pce", s] for s in (0, 1)]
    half = 12.706204736174707 * np.std(d, ddof=1) / math.sqrt(2)  # t(0.975, 1) from a table
    row = next(line for line in text.splitlines() if line.startswith("| `pscv` |") and "strict" not in line)
    assert f"{np.mean(p):.3f} ± {np.std(p, ddof=1):.3f}" in row
    assert f"{np.mean(d):+.3f} [{np.mean(d) - half:+.3f}, {np.mean(d) + half:+.3f}]" in row
    full = np.mean([dsc["fullsup", s] for s in (0, 1)])
    pce = np.mean([dsc["pce", s] for s in (0, 1)])
    if full != pce:
        assert f"{(np.mean(p) - pce) / (full - pce):+.0%}" in row
    assert "| `pce` |" in text and "0.722" in text  # the paper's number beside ours
    # the comparison the study file names, fullsup − pscv, paired the same way
    d2 = [dsc["fullsup", s] - dsc["pscv", s] for s in (0, 1)]
    half2 = 12.706204736174707 * np.std(d2, ddof=1) / math.sqrt(2)
    pair = next(line for line in text.splitlines() if line.startswith("| `fullsup` − `pscv` | 4 | 2 |"))
    assert f"| {np.mean(d2):+.3f} [{np.mean(d2) - half2:+.3f}, {np.mean(d2) + half2:+.3f}] |" in pair
    # against a pooled side: each seed's mean of pce and pscv
    d3 = [dsc["fullsup", s] - (dsc["pce", s] + dsc["pscv", s]) / 2 for s in (0, 1)]
    half3 = 12.706204736174707 * np.std(d3, ddof=1) / math.sqrt(2)
    pooled = next(line for line in text.splitlines() if line.startswith("| `fullsup` − mean(`pce`, `pscv`) | 4 | 2 |"))
    assert f"| {np.mean(d3):+.3f} [{np.mean(d3) - half3:+.3f}, {np.mean(d3) + half3:+.3f}] |" in pooled
    assert "### 4 iterations, `literature` convention" in text
    # runs.csv: one line per run and convention, the evaluation files' numbers
    import csv

    lines = list(csv.DictReader(Path(rep["runs"]).open()))
    assert len(lines) == 6 * 2
    for line in lines:
        run = next(r for r in study.runs() if (r.method, r.seed) == (line["method"], int(line["seed"])))
        ev = json.loads(eval_path(run, out, line["convention"]).read_text())
        for got, want in [(line["mean_dsc"], ev["mean_dsc"]),
                          *[(line[f"dsc_{c}"], v["dsc"]) for c, v in ev["per_class"].items()]]:
            assert (got == "") if want is None else float(got) == pytest.approx(want, abs=5e-5)
        assert line["fingerprint"] == json.loads(record_path(run, out).read_text())["fingerprint"]
    # the same tables from runs.csv alone, in a new folder: every run read back, the file unchanged
    again = write_report(study, out.parent / "from_csv", from_csv=Path(rep["runs"]))
    assert again["finished"] == 6 and again["left_out"] == [] and again["figures"] == []
    assert Path(again["runs"]).read_text() == Path(rep["runs"]).read_text()
    assert pair in Path(again["report"]).read_text()


@pytest.mark.parametrize("edit, message", [
    ({"methods": {"pce": {"loss.nope": 1}}, "upper": None}, "methods.pce: unknown config key loss.nope"),
    ({"methods": {"pce": {"train.seed": 3}}, "upper": None}, "train.seed is set by the study"),
    ({"eval_split": "fold7/val"}, "split 'fold7/val' not found"),
    ({"reference": "ms"}, "reference: 'ms' is not a method"),
    ({"budgets": [0]}, "budgets: expected a non-empty list of integers >= 1"),
    ({"methods": {"pce": {"loss.name": "pce"}, "pscv": {"loss.name": "pscv", "search": "nope"}}, "upper": None},
     "search 'nope' is not in searches"),
    ({"searches": {"cv": {"space": "tune/spaces/pscv.yaml", "train_split": "fold0/train", "val_split": "fold0/val"}},
      "methods": {"pce": {"loss.name": "pce"}, "pscv": {"loss.name": "pscv", "search": "cv"}}, "upper": None},
     "a search must never see the patients it is scored on"),
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"comparisons": [["pscv", "nope"]]}, "comparisons[0]: 'nope' is not a method"),
    ({"comparisons": [["pce", "pce"]]}, "comparisons[0]: expected [a, b] with no method on both sides, found ['pce', 'pce']"),
    ({"comparisons": "pscv - pce"}, "comparisons: expected a list of [a, b] method pairs"),
    ({"comparisons": [[["pscv"], "pce"]]}, "comparisons[0]: expected [a, b], each a method or a list of two or more"),
    ({"comparisons": [["pscv", ["pce", "pce"]]]}, "comparisons[0]: expected [a, b], each a method or a list of two"),
    ({"comparisons": [["pscv", ["pce", "nope"]]]}, "comparisons[0]: 'nope' is not a method"),
    ({"comparisons": [["pscv", ["pce", "pscv"]]]}, "comparisons[0]: expected [a, b] with no method on both sides, "
                                                  "found ['pscv', ['pce', 'pscv']] (both have ['pscv'])"),
    ({"comparisons": {}}, "comparisons: expected a list of [a, b] method pairs, found {}"),
    ({"comparisons": [["pscv", "pce", "ms"]]}, "comparisons[0]: expected [a, b], a pair of two sides, found"),
])
def test_bad_study_files_are_refused_in_one_line_before_anything_runs(phantom_store, tmp_path, capsys, edit, message):
    path = study_file(tmp_path, phantom_store, **edit)
    rc = cli_main(["study", "run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_runs_and_writes_nothing(phantom_store, tmp_path, capsys):
    path = study_file(tmp_path, phantom_store)
    assert cli_main(["study", "run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--methods", "pce"]) == 0
    out = capsys.readouterr().out
    assert "run    pce/b4_s0" in out and "run    pce/b4_s1" in out and "pscv/" not in out
    assert not (tmp_path / "out").exists()


def test_a_subset_needs_only_its_own_stores_but_every_method_is_still_checked(phantom_store, tmp_path, capsys):
    """--methods pce runs without the store of a method it leaves out; selecting that method, or a
    bad key in any method, is still refused in one line before anything is written."""
    missing = tmp_path / "not_prepared.zarr"
    methods = {"pce": {"loss.name": "pce"}, "pce_other": {"loss.name": "pce", "data.store": str(missing)}}
    path = study_file(tmp_path, phantom_store, methods=methods, upper=None)
    out = tmp_path / "out"
    assert cli_main(["study", "run", str(path), "--out", str(out), "--dry-run", "--methods", "pce"]) == 0
    assert "run    pce/b4_s0" in capsys.readouterr().out
    assert cli_main(["study", "run", str(path), "--out", str(out), "--dry-run", "--methods", "pce_other"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no pscv store found" in err and len(err.strip().splitlines()) == 1, err
    methods["pce_other"]["loss.nope"] = 1
    path = study_file(tmp_path, phantom_store, methods=methods, upper=None)
    assert cli_main(["study", "run", str(path), "--out", str(out), "--dry-run", "--methods", "pce"]) == 2
    assert "methods.pce_other: unknown config key loss.nope" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_runs_go_to_a_real_local_ray_as_tasks(phantom_store, tmp_path):
    """--address: each run is a Ray task (here a fresh local Ray, 2 CPUs); same records, same files."""
    import subprocess
    import sys

    path = study_file(tmp_path, phantom_store, seeds=[0], methods={"pce": {"loss.name": "pce"}}, upper=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "pscv_dist.cli", "study", "run", str(path), "--out", str(tmp_path / "out"),
                           "--address", "local", "--cpus-per-run", "1", "--no-overlays"],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = load_study(path).runs()[0]
    rec = json.loads(record_path(run, tmp_path / "out").read_text())
    assert rec["status"] == "done" and eval_path(run, tmp_path / "out", "literature").is_file()
    assert "1 of 1 runs finished" in proc.stdout


@pytest.mark.slow
def test_a_searched_method_trains_with_the_best_trials_values(phantom_store, tmp_path):
    """A real Ray Tune search on the inner split (2 trials), then the run with its best value; an
    edited space file afterwards is refused, not silently reused."""
    space = tmp_path / "lr.yaml"
    space.write_text("optim.lr: {type: grid, values: [0.1, 1.0e-7]}\n")
    path = study_file(tmp_path, phantom_store, seeds=[0], upper=None, methods={
        "pce": {"loss.name": "pce"}, "pce_lr": {"loss.name": "pce", "search": "lr"}},
        searches={"lr": {"space": str(space), "train_split": "fold0/train&fold1/train", "val_split": "fold1/val",
                         "overrides": {"train.iterations": 4},
                         "args": ["--num-samples", "1", "--scheduler", "none", "--num-cpus", "2"]}})
    os.environ.update({"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    study = load_study(path)
    res = run_study(study, RunOptions(out=tmp_path / "out", parallel=2))
    assert res["failed"] == [], res
    best = yaml.safe_load((tmp_path / "out" / "searches" / "lr" / "best_config.yaml").read_text())["optim"]["lr"]
    run = next(r for r in study.runs() if r.method == "pce_lr")
    rec = json.loads(record_path(run, tmp_path / "out").read_text())
    assert f"optim.lr={best}" in rec["overrides"] and rec["status"] == "done"
    space.write_text("optim.lr: {type: grid, values: [0.1, 0.01]}\n")
    with pytest.raises(ConfigError, match="holds search lr with other settings"):
        run_study(load_study(path), RunOptions(out=tmp_path / "out"))


def _best_config(config: str, overrides: list[str], space: Path, folder: Path, values: dict) -> dict:
    """The best trial's config exactly as ``pscv tune`` writes it (its plan, then its best_config)."""
    from pscv_dist.tune.results import best_config
    from pscv_dist.tune.search import TuneOptions, prepare

    plan = prepare(TuneOptions(out=str(folder), config=config, space=str(space), overrides=overrides))
    return best_config(plan, values)


def _finished_search(study, name: str, out: Path, values: dict, **changes) -> Path:
    """A search folder as ``pscv study run`` leaves it: its record, and its best trial's config as
    ``pscv tune`` writes it, with ``changes`` as an older pscv-dist would have run it."""
    from pscv_dist.study.folder import SEARCH_RECORD
    from pscv_dist.study.runner import _portable, search_overrides

    search = study.searches[name]
    folder = search.folder(out)
    config, overrides = _portable(study.config, search_overrides(study, search))  # as search_command passes them
    cfg = _best_config(config, overrides, Path(search.space), folder, values)
    for key, value in changes.items():
        section, key = key.split(".")
        cfg[section][key] = value
    (folder / SEARCH_RECORD).write_text(json.dumps({"search": name, "fingerprint": search.fingerprint(study.overrides)}))
    (folder / "best_config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def test_a_search_made_under_other_defaults_is_refused_and_its_runs_left_out(finished, tmp_path):
    """A finished search hands its values to runs only if the config its best trial ran with is the
    one the study resolves for it now (the check runs get, on the best trial's config)."""
    import shutil

    from pscv_dist.study.runner import searched_values

    path, out, _ = finished
    space = tmp_path / "lr.yaml"
    space.write_text("optim.lr: {type: grid, values: [0.1, 0.01]}\n")
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["pce_lr"] = {"loss.name": "pce", "search": "lr"}
    raw["searches"] = {"lr": {"space": str(space), "train_split": "fold0/train&fold1/train", "val_split": "fold1/val",
                              "overrides": {"train.iterations": 4}, "args": ["--num-samples", "1"]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    study = load_study(path)
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    # the same setting: a searched value, a loss key pCE ignores and bookkeeping are no change
    folder = _finished_search(study, "lr", copy, {"optim.lr": 0.01},
                              **{"loss.lambda_ms": 0.5, "train.log_every": 7, "train.out_dir": "elsewhere"})
    assert searched_values(study, study.searches["lr"], copy) == {"optim.lr": 0.01}
    assert run_study(study, RunOptions(out=copy, methods=["pce_lr"], dry_run=True))["todo"] == 2
    # a finished run of the searched method, as the study would have left it
    run = study.runs(["pce_lr"], None, [0])[0]
    record_path(run, copy).parent.mkdir(parents=True)
    record_path(run, copy).write_text(json.dumps({"status": "done", "fingerprint": "f", "config": {}}))
    for conv in ("strict", "literature"):
        shutil.copy(eval_path(study.runs(["pce"], None, [0])[0], copy, conv), eval_path(run, copy, conv))
    # another momentum under the same space and overrides (same fingerprint): refused, nothing written
    shutil.rmtree(folder)
    _finished_search(study, "lr", copy, {"optim.lr": 0.01}, **{"optim.momentum": 0.5})
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"searches/lr: searched with optim.momentum=0.5 \(now 0.9\): the study's "
                                          r"config, its preset or pscv-dist's defaults changed since"):
        run_study(study, RunOptions(out=copy, methods=["pce_lr"]))
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == before
    # the report leaves the search and its run out and says why; the other runs stay
    res = write_report(study, copy, overlays=False)
    text = Path(res["report"]).read_text()
    assert res["finished"] == 6 and "- search `lr`: left out, " in text
    assert "- `pce_lr/b4_s0`: " in text and text.count("optim.momentum=0.5 (now 0.9)") == 2


def test_a_search_on_a_store_named_relatively_is_no_drift(phantom_store, tmp_path, monkeypatch):
    """``pscv tune`` writes the store absolutely; the config that names it relatively (a preset, a
    study's YAML run from its folder) still matches, and another store does not."""
    from pscv_dist.study.provenance import search_drift

    monkeypatch.chdir(phantom_store.parent)
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"data": {"store": phantom_store.name}, "model": {"base_width": 2}}))
    space = tmp_path / "lr.yaml"
    space.write_text("optim.lr: {type: grid, values: [0.1, 0.01]}\n")
    overrides = ["train.iterations=4", "data.train_split=fold0/train", "data.val_split=fold1/val"]
    best = tmp_path / "best_config.yaml"
    cfg = _best_config(str(config), overrides, space, tmp_path / "search", {"optim.lr": 0.01})
    assert cfg["data"]["store"] == str(phantom_store.resolve())
    best.write_text(yaml.safe_dump(cfg))
    assert search_drift(best, str(config), [*overrides, "optim.lr=0.01"]) == {}
    config.write_text(yaml.safe_dump({"data": {"store": "other.zarr"}, "model": {"base_width": 2}}))
    assert search_drift(best, str(config), [*overrides, "optim.lr=0.01"]) == {
        "data.store": (str(phantom_store.resolve()), "other.zarr")}


def test_an_out_folder_it_did_not_make_is_refused_untouched(phantom_store, tmp_path, capsys):
    """OUT = the folder holding the study file (and the user's own study.yaml, report/): refused."""
    path = study_file(tmp_path, phantom_store)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "results.md").write_text("mine")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for action in ("run", "report"):
        rc = cli_main(["study", action, str(path), "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2 and "exists and is not a study folder" in err, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "report" / "results.md").read_text() == "mine"


def test_a_second_study_run_on_the_same_folder_is_refused_while_the_first_works(finished, capsys, hold_lock):
    """Two `pscv study run` on one --out would race on every record and run folder: the second is
    refused in one line, changes nothing, and runs once the first is gone."""
    path, out, _ = finished
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    holder = hold_lock(out / ".pscv_study.lock")
    rc = cli_main(["study", "run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"another `pscv study run` (pid {holder.pid}) is writing" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".pscv_study.lock"} == {
        p: t for p, t in before.items() if p.name != ".pscv_study.lock"}
    holder.kill()
    holder.wait()
    assert cli_main(["study", "run", str(path), "--out", str(out)]) == 0  # every run is done: nothing to redo
    assert not (out / ".pscv_study.lock").exists()


def test_a_command_runs_with_the_interpreter_of_the_process_that_runs_it(phantom_store, tmp_path):
    """A Ray node's Python may live elsewhere than the driver's: the commands carry a placeholder and
    `execute` (the task) starts them with its own interpreter. Here the task runs under another path
    to Python (a link), as on another node."""
    import subprocess
    import sys

    from pscv_dist.study.runner import PYTHON, run_commands

    study = load_study(study_file(tmp_path, phantom_store))
    run = study.runs(["pce"], None, [0])[0]
    cmds = run_commands(study, run, tmp_path / "out", study.run_overrides(run, tmp_path / "out", {}))
    assert cmds and all(c[0] == PYTHON for c in cmds) and not any(sys.executable in c for c in cmds)
    node_python = tmp_path / "node" / "bin" / "python3"
    node_python.parent.mkdir(parents=True)
    node_python.symlink_to(sys.executable)
    log = tmp_path / "task.log"
    code = ("import sys; from pscv_dist.study.runner import PYTHON, execute; "
            "r = execute([[PYTHON, '-m', 'pscv_dist.cli', 'evaluate', '--help']], sys.argv[1], 1); sys.exit(r['rc'])")
    import site

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *site.getsitepackages()])}
    subprocess.run([str(node_python), "-c", code, str(log)], check=True, env=env)
    first = log.read_text().splitlines()[0]
    assert first.startswith(f"$ {node_python} -m pscv_dist.cli evaluate"), first


def test_commands_name_the_store_and_config_absolutely_for_other_folders(phantom_store, tmp_path, monkeypatch):
    """A Ray task runs in its own folder (maybe on another node): a store or config the study file
    gives relative to where `pscv study run` started must reach the commands as absolute paths,
    while the run's fingerprint keeps the study file's own words."""
    from pscv_dist.study.runner import run_commands

    monkeypatch.chdir(phantom_store.parent)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {base_width: 2}\n")
    path = study_file(tmp_path, Path(phantom_store.name), config=os.path.relpath(cfg))
    study = load_study(path)
    run = study.runs(["pce"], None, [0])[0]
    overrides = study.run_overrides(run, tmp_path / "out", {})
    assert f"data.store={phantom_store.name}" in overrides
    train, *evals = run_commands(study, run, tmp_path / "out", overrides)
    assert train[train.index("--config") + 1] == str(cfg)
    assert f"data.store={phantom_store.resolve()}" in train and f"data.store={phantom_store.name}" not in train
    assert all(e[e.index("--store") + 1] == str(phantom_store.resolve()) for e in evals) and len(evals) == 2


def test_the_overlays_show_every_method_at_one_seed_the_lowest(finished):
    """The figure compares methods on the same slices: one seed for all (seed 1 finished last for
    every method here, and must not be the one shown)."""
    from pscv_dist.study.report import collect, overlay_runs

    path, out, _ = finished
    study = load_study(path)
    runs = overlay_runs(study, collect(study, out))
    assert sorted(runs) == sorted(study.methods) and {r.seed for r in runs.values()} == {0}
    assert {r.budget for r in runs.values()} == {ITERS}


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_study_files_resolve_every_run(path, monkeypatch, tmp_path):
    """Every method of a study file in studies/ builds a valid config with today's keys, and its
    search spaces exist (the store is the user's to prepare; check_study opens it at run time)."""
    from pscv_dist.config import load_config

    monkeypatch.chdir(path.parents[1])  # the study file names its spaces from the repository root
    study = load_study(path)
    for run in study.runs(seeds=[study.seeds[0]], budgets=[study.budgets[0]]):
        cfg = load_config(study.config, study.run_overrides(run, tmp_path, {}))  # searched values: the defaults
        assert cfg.train.iterations == run.budget and cfg.data.val_split == study.eval_split
    for search in study.searches.values():
        assert Path(search.space).is_file(), search.space


def test_runs_of_a_search_that_failed_are_reported_not_run_not_failed(phantom_store, tmp_path, capsys):
    """A search that ends without a best trial (here its ``pscv tune`` refuses an option) leaves its
    runs out: the last lines say they were not run and why, apart from failed runs; exit 1."""
    space = tmp_path / "lr.yaml"
    space.write_text("optim.lr: {type: grid, values: [0.1]}\n")
    path = study_file(tmp_path, phantom_store, seeds=[0], upper=None, methods={
        "pce": {"loss.name": "pce"}, "pce_lr": {"loss.name": "pce", "search": "lr"}},
        searches={"lr": {"space": str(space), "train_split": "fold0/train&fold1/train", "val_split": "fold1/val",
                         "overrides": {"train.iterations": 4}, "args": ["--scheduler", "no-such-scheduler"]}})
    os.environ["OMP_NUM_THREADS"] = "1"
    res = run_study(load_study(path), RunOptions(out=tmp_path / "out"))
    assert res["failed"] == [] and res["skipped"] == ["pce_lr/b4_s0"] and res["done"] == 1
    assert "no-such-scheduler" in (tmp_path / "out" / "logs" / "search_lr.log").read_text()
    capsys.readouterr()
    assert cli_main(["study", "run", str(path), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "1 run(s) not run, their search has no best trial: pce_lr/b4_s0" in out and "failed" not in out


SPLIT = max(1, (os.cpu_count() or 1) // 2)  # the default threads of a run with --parallel 2


@pytest.mark.parametrize("opts, want", [({"parallel": 2, "threads": SPLIT + 1}, SPLIT + 1), ({"parallel": 2}, SPLIT)])
def test_each_local_run_gets_the_threads_asked_for(tmp_path, opts, want):
    """--threads reaches the run's process (OMP_NUM_THREADS, which torch reads); without it the
    cores are split over --parallel. A real subprocess stands for the training command."""
    import sys

    from pscv_dist.study.runner import _Executor

    seen = tmp_path / "threads.txt"
    code = "import os, sys; open(sys.argv[2], 'w').write(os.environ['OMP_NUM_THREADS'] + ' ' + os.environ['MKL_NUM_THREADS'])"
    with _Executor(RunOptions(out=tmp_path, **opts)) as ex:
        (fut, res), = ex.as_completed([ex.submit([[sys.executable, "-c", code, "train", str(seen)]], str(tmp_path / "log"))])
    assert res["rc"] == 0 and seen.read_text() == f"{want} {want}"


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--threads", "2", "--address", "local"], "--threads 2 with --address local: expected --threads only for runs"),
])
def test_bad_thread_options_are_refused_in_one_line(phantom_store, tmp_path, capsys, args, message):
    path = study_file(tmp_path, phantom_store)
    rc = cli_main(["study", "run", str(path), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
