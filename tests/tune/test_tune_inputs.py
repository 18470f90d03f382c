"""`pscv tune` refuses what cannot work before Ray starts: one line, exit 2, nothing created."""
from __future__ import annotations

from pathlib import Path

import pytest

from pscv_dist.cli import main
from pscv_dist.tune.space import load_space, parse_space


def _base(store: Path) -> list[str]:
    return [f"data.store={store}", "data.train_split=fold0/train", "data.val_split=fold0/val", "data.batch_size=4",
            "data.num_workers=0", "model.base_width=2", "train.iterations=4", "train.val_every=2"]


def _refused(capsys, args: list[str]) -> str:
    import ray

    rc = main(["tune", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pscv tune: error: ") and "Traceback" not in err, err
    assert not ray.is_initialized()
    return lines[0]


def _space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("space, expected", [
    ("loss.lambda_cvv: {type: loguniform, low: 1.0e-4, high: 1.0}", "unknown config key loss.lambda_cvv; loss has"),
    ("optimizer.lr: {type: uniform, low: 0.1, high: 0.2}", "unknown config section 'optimizer' in optimizer.lr"),
    ("loss.tau: {type: uniform, low: 0.0, high: 0.3}",
     "loss.tau low=0.0 is outside what the config accepts (loss.tau=0.0 is out of range; expected > 0)"),
    ("model.depth: {type: randint, low: 2, high: 9}",
     "model.depth high=9 is outside what the config accepts (model.depth=9 is out of range; expected >= 1 and <= 7)"),
    ("loss.cv_classes: {type: choice, values: [all, background]}",
     "loss.cv_classes value='background' is outside what the config accepts"),
    ("loss.lambda_cv: {type: loguniform, low: 0, high: 1}", "loss.lambda_cv loguniform needs low > 0, found low=0"),
    ("loss.name: {type: uniform, low: 0, high: 1}", "loss.name is str in the config; uniform needs a number key"),
    ("train.out_dir: {type: choice, values: [a, b]}", "train.out_dir is set by pscv tune for every trial"),
    ("loss.tau: {type: normal, mu: 0.1}", "loss.tau must be a mapping with type one of"),
])
def test_bad_space_is_refused_before_ray_starts(phantom_store, tmp_path, capsys, space, expected):
    out = tmp_path / "search"
    msg = _refused(capsys, ["--config", "cpu_quick", "--out", str(out), "--space", str(_space(tmp_path, space)),
                            *_base(phantom_store)])
    assert expected in msg and str(tmp_path / "space.yaml") in msg, msg
    assert not out.exists()


@pytest.mark.parametrize("extra, overrides, expected", [
    (["--workers-per-trial", "0"], [], "--workers-per-trial=0: expected an integer >= 1"),
    (["--workers-per-trial", "3", "--num-cpus", "4"], [], "data.batch_size=4 cannot be split exactly over --workers-per-trial=3"),
    (["--workers-per-trial", "2", "--cpus-per-worker", "1", "--num-cpus", "1"], [],
     "needs 2 CPUs per trial; this machine has 1"),
    (["--num-samples", "0"], [], "--num-samples=0: expected an integer >= 1"),
    ([], ["data.val_split=null"], "data.val_split is not set; a search ranks trials by validation DSC"),
    ([], ["train.val_every=0"], "train.val_every=0 validates only at the end; ASHA needs validations"),
    ([], ["loss.tau=-1"], "loss.tau=-1.0 is out of range"),
    (["--search", "optuna", "--space", "GRID"], [], "grid values need --search random"),
])
def test_bad_options_are_refused_before_ray_starts(phantom_store, tmp_path, capsys, extra, overrides, expected):
    out = tmp_path / "search"
    if "GRID" in extra:
        extra[extra.index("GRID")] = str(_space(tmp_path, "optim.lr: {type: grid, values: [0.1, 0.01]}"))
    msg = _refused(capsys, ["--config", "cpu_quick", "--out", str(out), *extra, *_base(phantom_store), *overrides])
    assert expected in msg, msg
    assert not out.exists()


def test_resume_of_nothing_and_a_second_search_in_the_same_folder(phantom_store, tmp_path, capsys):
    out = tmp_path / "search"
    assert "holds no search to resume" in _refused(capsys, ["--out", str(out), "--resume"])
    (out / "ray").mkdir(parents=True)
    msg = _refused(capsys, ["--config", "cpu_quick", "--out", str(out), *_base(phantom_store)])
    assert "holds a search already; pass --resume" in msg


def test_default_space_and_its_tune_domains():
    space = load_space(None, {})
    assert space.describe() == {"loss.lambda_cv": "loguniform[0.0001, 1.0]", "loss.tau": "uniform[0.03, 0.3]"}
    from ray.tune.search.sample import Float

    domains = space.to_tune()
    assert isinstance(domains["loss.lambda_cv"], Float) and domains["loss.tau"].lower == 0.03
    ints = parse_space({"model.depth": {"type": "randint", "low": 2, "high": 4}}, {}, "x")
    assert ints.to_tune()["model.depth"].upper == 5  # both bounds included


def test_a_relative_store_is_made_absolute_for_the_trials(phantom_store, tmp_path, monkeypatch):
    """Ray runs each trial in its own folder (maybe on another node): a store given relative to the
    folder `pscv tune` starts in must reach the trials as that folder's store, not the trial's."""
    from pscv_dist.tune.search import TuneOptions, prepare

    monkeypatch.chdir(phantom_store.parent)
    overrides = [f"data.store={phantom_store.name}", *_base(phantom_store)[1:]]
    plan = prepare(TuneOptions(config="cpu_quick", out=str(tmp_path / "search"), overrides=overrides))
    assert plan.raw["data"]["store"] == str(phantom_store.resolve())
    monkeypatch.chdir(tmp_path)  # a resumed search keeps the store it started with
    plan = prepare(TuneOptions(out=str(tmp_path / "search"), resume=True))
    assert plan.raw["data"]["store"] == str(phantom_store.resolve())
    from pscv_dist.tune.search import _absolute_store

    assert _absolute_store({"data": {"store": "memory://x.zarr"}}) == {"data": {"store": "memory://x.zarr"}}
    from pscv_dist.tracking.search import search_tracking

    uri, artifacts = search_tracking(tmp_path / "search", "sqlite:///runs/mlflow.db", "runs/art")
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" and artifacts == (tmp_path / "runs" / "art").as_uri()
    assert search_tracking(tmp_path, "sqlite:////abs/m.db", "s3://b/a") == ("sqlite:////abs/m.db", "s3://b/a")


@pytest.mark.parametrize("search, scheduler, at_once, repeats", [
    ("random", "asha", 1, True),     # one trial at a time: the sampled order
    ("random", "asha", 2, False),    # ASHA's cuts depend on who reaches a rung first
    ("random", "none", 8, True),     # every trial to the end: no decision depends on order
    ("optuna", "none", 1, True),
    ("optuna", "none", 2, False),    # TPE suggests from the trials finished so far
    ("optuna", "asha", 3, False),
])
def test_when_the_answer_of_a_search_repeats(search, scheduler, at_once, repeats):
    from pscv_dist.tune.search import TuneOptions, order_dependence

    note = order_dependence(TuneOptions(out="x", search=search, scheduler=scheduler), at_once)
    assert (note is None) == repeats
    if not repeats:
        assert note.startswith(f"up to {at_once} trials run at once") and note.endswith(
            "(--max-concurrent 1 gives a search that repeats)")
        assert ("ASHA" in note) == (scheduler == "asha") and ("Optuna" in note) == (search == "optuna")


@pytest.mark.parametrize("opts, have, expected", [
    ({}, {"CPU": 2.0}, 2),                                               # 1-CPU trials on 2 CPUs
    ({"max_concurrent": 1}, {"CPU": 2.0}, 1),
    ({"max_concurrent": 4}, {"CPU": 1.0}, 1),                            # the resources bind first
    ({"num_samples": 1}, {"CPU": 16.0}, 1),                              # never more than the trials
    ({"workers_per_trial": 2, "gpus_per_worker": 1.0}, {"CPU": 16.0, "GPU": 2.0}, 1),  # GPUs bind
    ({"cpus_per_worker": 4.0}, {"CPU": 16.0, "GPU": 2.0}, 4),
    ({"address": "auto"}, {"CPU": 1.0}, 8),                              # a cluster may grow: all 8
    ({"address": "auto", "max_concurrent": 2}, {"CPU": 1.0}, 2),
])
def test_how_many_trials_can_run_at_once(monkeypatch, opts, have, expected):
    import types

    import ray

    from pscv_dist.tune.search import Plan, TuneOptions, trials_at_once

    monkeypatch.setattr(ray, "cluster_resources", lambda: have)  # a cluster's resources cannot exist here
    o = TuneOptions(out="x", **{"num_samples": 8, **opts})
    plan = Plan(o, {}, types.SimpleNamespace(params=[]), iterations=8, val_every=4, out=Path("x"))
    assert trials_at_once(plan) == expected
