"""`pscv tune` end to end on a real local Ray (2 CPUs) and a real MLflow sqlite store.

One search of 4 tiny trials is interrupted (the driver's whole process group SIGKILLed once a trial
has a checkpoint) and resumed with --resume; ASHA stops the weak trials, every trial has exactly
one MLflow child run, a restarted trial continues from its checkpoint, and the best config trains
with `pscv train` as is. One 2-worker trial checks that its CV negatives cross the workers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ITERS, VAL = 8, 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def overrides(store: Path, **extra) -> list[str]:
    base = {"data.store": store, "data.train_split": "fold0/train", "data.val_split": "fold0/val",
            "data.batch_size": 4, "data.num_workers": 0, "model.base_width": 2, "augment.backend": "none",
            "train.iterations": ITERS, "train.val_every": VAL, "train.ckpt_every": VAL, "train.log_every": VAL}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tune_cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pscv_dist.cli", "tune", "--out", str(out), "--num-cpus", "2", *args]


def run(cmd: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def asha_by_hand(out: Path, grace: int, rf: float) -> set[str]:
    """The trials ASHA's rule stops over every result the driver received, in its order (the
    scheduler's log): a trial reaching rung m (grace * rf**k < ITERS) below the (1 - 1/rf) quantile
    of the values recorded at m before it stops; a result at ITERS ends the trial unrecorded."""
    import numpy as np

    events = [json.loads(line) for line in (out / "asha_log.jsonl").read_text().splitlines()]
    rungs = [grace * rf ** k for k in range(8) if grace * rf ** k < ITERS][::-1]
    recorded, stopped = {m: {} for m in rungs}, set()
    for e in events:
        trial, t, v = e["trial"], e["t"], e["value"]
        if e["event"] == "result" and t >= ITERS:
            continue
        m = next((m for m in rungs if t >= m and trial not in recorded[m]), None)
        if m is None:
            continue
        if e["event"] == "result" and recorded[m] and v < np.nanpercentile(list(recorded[m].values()),
                                                                          (1 - 1 / rf) * 100):
            stopped.add(trial)
        recorded[m][trial] = v
    return stopped


def committed(out: Path) -> dict[str, int]:
    """trial id -> newest complete checkpoint step."""
    found = {}
    for commit in (out / "trials").glob("*/checkpoints/step_*/COMMIT"):
        trial = commit.parents[2].name
        found[trial] = max(found.get(trial, 0), int(commit.parent.name.split("_")[1]))
    return found


@pytest.fixture(scope="module")
def search(phantom_store, tmp_path_factory):
    """The interrupted-then-resumed search: (out, results, checkpoints at the kill, stdout of the resume)."""
    root = tmp_path_factory.mktemp("tune")
    out = root / "search"
    space = root / "space.yaml"
    # a good and a weaker learning rate, two that do not learn: ASHA has something to stop
    space.write_text("optim.lr: {type: grid, values: [0.3, 0.1, 1.0e-6, 1.0e-7]}\n"
                     "loss.lambda_cv: {type: loguniform, low: 1.0e-4, high: 1.0e-3}\n")
    args = ["--config", "cpu_quick", "--space", str(space), "--num-samples", "1", "--max-concurrent", "2",
            "--reduction-factor", "2", *overrides(phantom_store)]
    t0 = time.time()
    # started as `pscv study run` starts a search: OMP_NUM_THREADS = the machine's cores, which each
    # trial must not inherit (it has 1 CPU from Ray)
    driver = subprocess.Popen(tune_cmd(out, *args), env={**ENV, "OMP_NUM_THREADS": "2"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    deadline = time.time() + 300
    while not committed(out):
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        assert time.time() < deadline, "no trial checkpoint within 300 s"
        time.sleep(0.1)
    at_kill = committed(out)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-search
    driver.wait()
    resumed = run(tune_cmd(out, "--resume"))
    results = json.loads((out / "results.json").read_text())
    print(f"\nsearch with one kill + resume: {time.time() - t0:.0f} s")
    return out, results, at_kill, resumed.stdout


def test_resumed_search_finishes_every_trial_and_asha_stops_the_weak(search):
    out, results, at_kill, stdout = search
    trials = results["trials"]
    assert len(trials) == 4 and all(t["error"] is None and t["best_dsc"] is not None for t in trials), trials
    assert {t["optim.lr"] for t in trials} == {0.3, 0.1, 1e-6, 1e-7}
    stopped = [t for t in trials if t["stopped"]]
    assert stopped and all(t["steps"] < ITERS for t in stopped)
    # across the kill, ASHA stopped exactly the trials its rule stops over all results in the order
    # they arrived (Ray does not save the rungs: pscv_dist.tune.asha rebuilds them on --resume)
    assert {t["trial_id"] for t in stopped} == asha_by_hand(out, grace=VAL, rf=2)
    assert any(t["steps"] == ITERS for t in trials)
    assert results["best"]["best_dsc"] == max(t["best_dsc"] for t in trials)
    for t in trials:  # the trials started before the kill ran under OMP_NUM_THREADS=2 with 1 CPU each
        reports = [json.loads(line) for line in (out / "ray" / "search" / t["trial_id"] / "result.json").read_text().splitlines()]
        assert reports and all(r["torch_threads"] == 1 for r in reports), (t["trial_id"], reports)
    assert "best trial" in stdout and "best_config.yaml" in stdout
    for name in ("results.csv", "results.md", "best_config.yaml", "dsc_vs_params.png"):
        assert (out / name).is_file(), name
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| trial | optim.lr | loss.lambda_cv | best DSC") and len(md) == 2 + 4 + 2
    # 2 ASHA trials at once: the report says the answer may not repeat, and how to get one that does
    assert results["repeatable"] is False and "--max-concurrent 1" in results["order_note"]
    assert md[-1] == f"The answer may not repeat: {results['order_note']}."
    assert f"the answer may not repeat: {results['order_note']}" in stdout
    for t in trials:
        print(f"trial {t['trial_id']} lr={t['optim.lr']:g}: DSC {t['best_dsc']:.4f}, {t['steps']} steps, "
              f"stopped={t['stopped']}, wall {t['wall_s']:.1f} s, start-up {t['startup_s']:.1f} s")


def test_a_trial_restarted_by_resume_continues_from_its_checkpoint(search):
    out, _, at_kill, _ = search
    for trial, step in at_kill.items():
        log = [json.loads(line) for line in (out / "trials" / trial / "train_log.jsonl").read_text().splitlines()]
        val_steps = [r["step"] for r in log if "val_mean_dsc" in r]
        assert len(val_steps) == len(set(val_steps)), f"{trial} trained steps again: {val_steps}"
        assert step in val_steps


def test_one_mlflow_child_run_per_trial_after_resume(search):
    from pscv_dist.tracking.search import child_runs

    out, results, _, _ = search
    record = json.loads((out / "search_run.json").read_text())
    children = child_runs(record["tracking_uri"], record["experiment_id"], record["run_id"])
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(t["trial_id"] for t in results["trials"])  # exactly one each, no duplicates
    for child in children:
        assert child.data.params["optim.lr"] and child.data.params["train.out_dir"].endswith(child.info.run_name)
        assert "val_mean_dsc" in child.data.metrics
    import mlflow

    parent = mlflow.tracking.MlflowClient(record["tracking_uri"]).get_run(record["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == 4


def test_best_config_trains_with_pscv_train_as_is(search):
    out, results, _, _ = search
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["optim"]["lr"] == results["best"]["optim.lr"]
    proc = run([sys.executable, "-m", "pscv_dist.cli", "train", "--config", str(out / "best_config.yaml")])
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["step"] == ITERS and summary["out_dir"] == str(out / "best_run")


def test_one_trial_at_a_time_the_search_repeats(phantom_store, tmp_path):
    """With --max-concurrent 1, ASHA sees the trials in their sampled order: two searches stop the
    same trials at the same steps and give the same numbers, bit for bit, and say so."""
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {type: grid, values: [0.3, 0.1, 1.0e-6, 1.0e-7]}\n"
                     "loss.lambda_cv: {type: loguniform, low: 1.0e-4, high: 1.0e-3}\n")
    found = []
    for name in ("first", "second"):
        out = tmp_path / name
        proc = run(tune_cmd(out, "--config", "cpu_quick", "--space", str(space), "--num-samples", "1",
                            "--max-concurrent", "1", "--reduction-factor", "2", *overrides(phantom_store)))
        results = json.loads((out / "results.json").read_text())
        assert results["repeatable"] is True and results["order_note"] is None
        assert "may not repeat" not in proc.stdout + (out / "results.md").read_text()
        keep = ("optim.lr", "loss.lambda_cv", "best_dsc", "best_step", "hd95_at_best", "steps", "stopped")
        found.append([{k: t[k] for k in keep} for t in results["trials"]])
        logs = [[json.loads(line)["time"] for line in p.read_text().splitlines()]
                for p in (out / "trials").glob("*/train_log.jsonl")]
        spans = sorted((min(t), max(t)) for t in logs)
        assert len(spans) == 4 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one at a time
        assert {t["trial_id"] for t in results["trials"] if t["stopped"]} == asha_by_hand(out, grace=VAL, rf=2)
    assert found[0] == found[1], found
    assert any(t["stopped"] for t in found[0]) and any(not t["stopped"] for t in found[0])  # ASHA did cut


def test_two_worker_trial_gathers_the_global_batch_across_workers(phantom_store, tmp_path):
    out = tmp_path / "search"
    t0 = time.time()
    run(tune_cmd(out, "--config", "cpu_quick", "--num-samples", "1", "--workers-per-trial", "2",
                 "--scheduler", "none", *overrides(phantom_store)))
    wall = time.time() - t0
    results = json.loads((out / "results.json").read_text())
    (trial,) = results["trials"]
    assert trial["error"] is None and trial["steps"] == ITERS
    reports = [json.loads(line) for line in
               (out / "ray" / "search" / trial["trial_id"] / "result.json").read_text().splitlines()]
    assert [r["step"] for r in reports] == [VAL, ITERS]
    for r in reports:  # rank 0's view of the group Ray built, which the CV term gathers over
        assert r["world_size"] == 2 and r["group_from_ray"] == 1
        assert r["gathered_batch"] == 4 and r["gathered_ranks"] == 2  # the trial's global batch, both workers
    assert (out / "train_runs" / trial["trial_id"]).is_dir()  # the Train run is named by the trial id
    print(f"\n2-worker trial: start-up {trial['startup_s']:.1f} s of {trial['wall_s']:.1f} s "
          f"({trial['startup_s'] / trial['wall_s']:.0%}); whole command {wall:.0f} s")


def test_a_search_stopped_by_a_signal_gives_no_answer_and_resumes(phantom_store, tmp_path):
    """Ctrl-C (SIGINT) mid-search: Ray Tune saves its state and returns. The tables of the trials so
    far are written, but no best_config.yaml (a study would take the best-so-far as the search's
    answer), the exit is 2 with one line saying how to continue, and --resume finishes it."""
    out = tmp_path / "search"
    args = ["--config", "cpu_quick", "--num-samples", "3", "--max-concurrent", "1", "--scheduler", "none",
            *overrides(phantom_store)]
    driver = subprocess.Popen(tune_cmd(out, *args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not committed(out):
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        assert time.time() < deadline, "no trial checkpoint within 300 s"
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    text = driver.communicate(timeout=120)[0]
    assert driver.returncode == 2, text[-3000:]
    assert "the search stopped before its trials finished" in text and "--resume" in text, text[-3000:]
    assert not (out / "best_config.yaml").exists()
    assert json.loads((out / "results.json").read_text())["complete"] is False
    run(tune_cmd(out, "--resume"))
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True and len(results["trials"]) == 3
    assert (out / "best_config.yaml").is_file()
