"""``pscv study run``: the searches, then every run not finished yet, then the report.

Each run is a normal ``pscv train`` (a subprocess, tracked in the study's MLflow store) followed by
``pscv evaluate`` of its final checkpoint on the eval split in both conventions. What a run
did is recorded beside its folder, ``runs/<method>/b<budget>_s<seed>.json``:
``{"status": "submitted"|"done"|"failed", "fingerprint", "overrides", "train_s", "eval_s", ...}``
(``train_s``: the trainer's own count, which spans the attempts of a resumed run).

- A finished run (record ``done`` with the same fingerprint) is skipped; an interrupted one is
  started again and the trainer resumes it from its last checkpoint; an evaluation that is
  missing is redone.
- A folder holding a run of other settings is refused, never replaced: the study file changed
  (its fingerprint), or the preset or pscv-dist's defaults did (the config its checkpoint saved,
  :mod:`.provenance`). Move it away or use another ``--out``. The folder's layout and who may write
  there: :mod:`.folder`.
- Runs go ``--parallel`` at a time on this machine (each with ``--threads``, by default
  ``cpus // parallel`` threads), or,
  with ``--address``, as Ray tasks on a cluster (``--cpus-per-run``/``--gpus-per-run``); ``--out``
  must then be on storage every node sees.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, PscvError
from ..files import RunLock, absolute_local, write_json_atomic
from .folder import (CONVENTIONS, LOCK, SEARCH_RECORD, check_owned, check_search_folder, check_study_folder,
                     claim_study_folder, eval_path, read_record, record_path)
from .plan import Run, Search, Study, as_overrides, check_study, fingerprint
from .provenance import config_drift, describe_drift, search_drift, trained_config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunOptions:
    out: Path
    methods: list[str] | None = None
    budgets: list[int] | None = None
    seeds: list[int] | None = None
    parallel: int = 1
    threads: int | None = None  # per local run; None: the cores split evenly over --parallel
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    dry_run: bool = False


def searched_values(study: Study, search: Search, out: Path) -> dict[str, Any] | None:
    """The searched keys' values in the best trial's config, or None before the search is done."""
    best = search.folder(out) / "best_config.yaml"
    if not best.is_file():
        return None
    check_search_folder(study, search, out)
    cfg = yaml.safe_load(best.read_text())
    space = yaml.safe_load(Path(search.space).read_text())
    values = {}
    for key in space:
        section, name = key.split(".", 1)
        values[key] = cfg[section][name]
    drift = search_drift(best, study.config, [*search_overrides(study, search), *as_overrides(values)])
    if drift:
        raise ConfigError(f"{search.folder(out)}: searched with {describe_drift(drift)}: the study's config, its "
                          "preset or pscv-dist's defaults changed since; move the search folder away to search "
                          "again, or choose another --out")
    return values


class SearchedValues:
    """Each search's :func:`searched_values`, read once: one command's view of the study folder.

    Reading a search resolves its best trial's config (~50 ms); a study command asks per run. A
    search refused for drift raises its :class:`ConfigError` on every ask."""

    def __init__(self, study: Study, out: Path):
        self.study, self.out = study, out
        self._memo: dict[str, dict[str, Any] | None | PscvError] = {}

    def __call__(self, name: str) -> dict[str, Any] | None:
        if name not in self._memo:
            try:
                self._memo[name] = searched_values(self.study, self.study.searches[name], self.out)
            except PscvError as exc:
                self._memo[name] = exc
        found = self._memo[name]
        if isinstance(found, PscvError):
            raise found
        return found


def search_overrides(study: Study, search: Search) -> list[str]:
    """The overrides a search's trials run with, on top of the study's config."""
    return [*study.overrides, *search.overrides, f"data.train_split={search.train_split}",
            f"data.val_split={search.val_split}"]


PYTHON = "{python}"  # in a command: the interpreter of the process that runs it (a Ray node's own)


def _python() -> list[str]:
    return [PYTHON, "-m", "pscv_dist.cli"]


def resolve(cmd: list[str]) -> list[str]:
    """The command as the process running it starts it: its own ``sys.executable`` for ``PYTHON``,
    so a Ray node whose Python lives elsewhere than the driver's still runs it."""
    return [sys.executable if a == PYTHON else a for a in cmd]


def _resumable(folder: Path) -> bool:
    """An interrupted search Ray Tune can restore (its state was saved), not one killed before."""
    if not (folder / "search.json").is_file():
        return False
    from ray import tune

    from ..tune.search import EXPERIMENT, RAY_DIR

    return tune.Tuner.can_restore(str(folder / RAY_DIR / EXPERIMENT))


def search_command(study: Study, search: Search, out: Path) -> list[str]:
    folder = search.folder(out)
    resume = _resumable(folder)
    if not resume and (folder / "search.json").is_file():
        raise ConfigError(f"{folder}: holds a search that stopped before Ray Tune saved any state; "
                          "it cannot be resumed: move it away and run the study again")
    cmd = [*_python(), "tune", "--out", str(folder)]
    if resume:
        return [*cmd, "--resume", *search.args]
    config, overrides = _portable(study.config, search_overrides(study, search))
    return [*cmd, "--config", config, "--space", absolute_local(search.space), *search.args, *overrides]


def _portable(config: str, overrides: list[str]) -> tuple[str, list[str]]:
    """The config file and the store as absolute paths, for commands that run in another folder or
    on another node (Ray); a preset name and URLs stay as they are. The run's fingerprint is taken
    from the overrides as the study file gives them, not from these."""
    if Path(config).is_file():
        config = absolute_local(config)
    return config, [f"data.store={absolute_local(o.split('=', 1)[1])}" if o.startswith("data.store=") else o
                    for o in overrides]


def run_commands(study: Study, run: Run, out: Path, overrides: list[str]) -> list[list[str]]:
    """``pscv train`` (it resumes from its own checkpoint) and one ``pscv evaluate`` per convention
    that is still missing."""
    cmds = []
    folder = run.folder(out)
    config, overrides = _portable(study.config, overrides)
    summary = read_record(folder / "summary.json")
    if not (summary and summary.get("step") == run.budget):
        cmds.append([*_python(), "train", "--config", config, *overrides])
    from ..config import load_config

    store = load_config(config, overrides).data.store
    for conv in CONVENTIONS:
        if cmds or not eval_path(run, out, conv).is_file():
            cmds.append([*_python(), "evaluate", "--checkpoint", str(folder / "checkpoints" / f"step_{run.budget:08d}"),
                         "--store", store, "--split", study.eval_split, "--convention", conv,
                         "--out", str(eval_path(run, out, conv))])
    return cmds


def execute(cmds: list[list[str]], log_file: str, threads: int) -> dict[str, Any]:
    """Run the commands in order (stop at the first failure); the wall time of each kind. Runs in
    this process or as a Ray task on any node."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    times: dict[str, float] = {}
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        for cmd in map(resolve, cmds):
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            t0 = time.time()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
            kind = "train_s" if cmd[3] == "train" else "eval_s"
            times[kind] = times.get(kind, 0.0) + time.time() - t0
            if rc:
                return {"rc": rc, "failed": " ".join(cmd[3:5]), **times}
    return {"rc": 0, **times}


def plan_runs(study: Study, opts: RunOptions) -> tuple[list[tuple[Run, list[str]]], list[Run], list[Search]]:
    """(runs to do with their overrides, runs done, searches still to run)."""
    runs = study.runs(opts.methods, opts.budgets, opts.seeds)
    needed = {r.search for r in runs if r.search}
    for name in sorted(needed):
        check_search_folder(study, study.searches[name], opts.out)
    values = SearchedValues(study, opts.out)
    todo_searches = [study.searches[s] for s in sorted(needed) if values(s) is None]
    todo, done, drifted = [], [], []
    for run in runs:
        searched = values(run.search) if run.search else {}
        overrides = study.run_overrides(run, opts.out, searched)
        if run.search and searched is None:
            todo.append((run, overrides))  # its overrides are known once the search is done
            continue
        fp = fingerprint(overrides)
        check_owned(run.folder(opts.out), record_path(run, opts.out), fp, "run", run.key)
        rec = read_record(record_path(run, opts.out))
        drift = config_drift(run.folder(opts.out), rec, study.config, overrides)
        if drift:
            drifted.append(f"{run.folder(opts.out)}: trained with {describe_drift(drift)}")
        finished = rec is not None and rec.get("status") == "done" and all(
            eval_path(run, opts.out, c).is_file() for c in CONVENTIONS)
        (done if finished else todo).append(run if finished else (run, overrides))
    if drifted:
        more = f" (and {len(drifted) - 1} more run(s))" if len(drifted) > 1 else ""
        raise ConfigError(f"{drifted[0]}{more}: the study's config, its preset or pscv-dist's defaults changed "
                          "since; move the run folder and its record (<folder>.json) away to train it again, "
                          "or choose another --out")
    return todo, done, todo_searches


def run_study(study: Study, opts: RunOptions) -> dict[str, Any]:
    for name, values in (("--methods", opts.methods), ("--budgets", opts.budgets), ("--seeds", opts.seeds)):
        allowed = {"--methods": list(study.methods), "--budgets": list(study.budgets), "--seeds": list(study.seeds)}[name]
        bad = [v for v in values or [] if v not in allowed]
        if bad:
            raise ConfigError(f"{name}: {bad} not in the study file {study.source} ({allowed})")
    if opts.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {opts.parallel}")
    if opts.threads is not None and opts.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {opts.threads}")
    if opts.threads is not None and opts.address:
        raise ConfigError(f"--threads {opts.threads} with --address {opts.address}: expected --threads only for runs "
                          "on this machine; on Ray each run gets --cpus-per-run threads")
    opts = dataclasses.replace(opts, out=opts.out.resolve())  # the commands may run in other folders (Ray)
    check_study_folder(opts.out)
    check_study(study, opts.out, opts.methods)
    todo, done, searches = plan_runs(study, opts)
    log.info("study %s: %d run(s) done, %d to run, %d search(es) to run", study.name, len(done), len(todo), len(searches))
    if opts.dry_run:
        for s in searches:
            print("search", s.name, " ".join(resolve(search_command(study, s, opts.out))))
        for run, _ in todo:
            print("run   ", run.key)
        return {"done": len(done), "todo": len(todo), "searches": [s.name for s in searches], "failed": [],
                "skipped": []}
    claim_study_folder(opts.out)
    with RunLock(opts.out / LOCK, f"study folder {opts.out}", "pscv study run"):  # two runs would race on every file
        return _run_locked(study, opts)


def _run_locked(study: Study, opts: RunOptions) -> dict[str, Any]:
    from ..progress import progress_bar

    _, _, searches = plan_runs(study, opts)  # again, now that no other run can change the folder
    (opts.out / "study.yaml").write_text(study.source.read_text())  # what these results come from
    from ..tracking.search import ensure_experiment

    ensure_experiment(*study.tracking(opts.out)[:1], study.experiment, study.tracking(opts.out)[1])
    for s in searches:  # a search that fails leaves its runs out; the others still run
        logf = opts.out / "logs" / f"search_{s.name}.log"
        try:
            cmd = search_command(study, s, opts.out)
        except ConfigError as exc:
            log.warning("search %s not run: %s", s.name, exc)
            continue
        s.folder(opts.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic({"search": s.name, "fingerprint": s.fingerprint(study.overrides)},
                          s.folder(opts.out) / SEARCH_RECORD)
        res = execute([cmd], str(logf), max(1, os.cpu_count() or 1))
        if res["rc"]:
            log.warning("search %s failed (exit %d); see %s", s.name, res["rc"], logf)
    todo, done, unfinished = plan_runs(study, opts)  # the searched runs now have their values
    without = {s.name for s in unfinished}  # searches that failed or were not run: no best trial
    skipped = [run.key for run, _ in todo if run.search in without]
    if skipped:
        log.warning("no best trial in search(es) %s: %s not run", sorted(without), skipped)
        todo = [(run, o) for run, o in todo if run.key not in skipped]
    failed = []
    bar = progress_bar(total=len(todo) + len(done), initial=len(done), desc="study", unit="run")
    with _Executor(opts) as pool:
        futures = {}
        for run, overrides in todo:
            fp = fingerprint(overrides)
            old = read_record(record_path(run, opts.out)) or {}
            rec = {**{k: old[k] for k in ("train_s",) if k in old},  # a run that only re-evaluates keeps its time
                   "run": run.key, "fingerprint": fp, "overrides": overrides, "status": "submitted", "submitted": time.time()}
            write_json_atomic(rec, record_path(run, opts.out))
            cmds = run_commands(study, run, opts.out, overrides)
            futures[pool.submit(cmds, str(opts.out / "logs" / f"{run.method}_b{run.budget}_s{run.seed}.log"))] = (run, rec)
        for fut, res in pool.as_completed(futures):
            run, rec = futures[fut]
            rec.update({k: v for k, v in res.items() if k != "rc"})  # this attempt's times, or why it failed
            rec.update(status="done" if res["rc"] == 0 else "failed", finished=time.time())
            if res["rc"] == 0:  # what it was trained with, should its checkpoints be deleted later
                rec["config"] = trained_config(run.folder(opts.out))
                # the trainer's own count spans the attempts of a resumed run (to their checkpoints)
                trained = read_record(run.folder(opts.out) / "summary.json") or {}
                rec["train_s"] = trained.get("train_s", rec.get("train_s"))
            write_json_atomic(rec, record_path(run, opts.out))
            if res["rc"]:
                failed.append(run.key)
                log.warning("run %s failed (%s, exit %d); see %s", run.key, res["failed"], res["rc"],
                            opts.out / "logs" / f"{run.method}_b{run.budget}_s{run.seed}.log")
            bar.update(1)
    bar.close()
    return {"done": len(done) + len(todo) - len(failed), "todo": 0, "searches": [s.name for s in searches],
            "failed": failed, "skipped": skipped}


class _Executor:
    """Local processes (``--parallel`` at once) or Ray tasks (``--address``), one interface."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.threads = opts.threads or max(1, (os.cpu_count() or 1) // opts.parallel)

    def __enter__(self):
        if self.opts.address:
            import ray

            ray.init(address=self.opts.address, log_to_driver=False)
            self._task = ray.remote(num_cpus=self.opts.cpus_per_run, num_gpus=self.opts.gpus_per_run)(execute)
        else:
            self._pool = cf.ThreadPoolExecutor(max_workers=self.opts.parallel)
        return self

    def submit(self, cmds, log_file):
        if self.opts.address:
            return self._task.remote(cmds, log_file, max(1, int(self.opts.cpus_per_run)))
        return self._pool.submit(execute, cmds, log_file, self.threads)

    def as_completed(self, futures):
        """(future, its result) as each finishes; a task that raised (a lost Ray worker, a log file
        that cannot be written) is a failed run, not the end of the study."""
        if not self.opts.address:
            for fut in cf.as_completed(futures):
                try:
                    yield fut, fut.result()
                except Exception as exc:
                    yield fut, {"rc": -1, "failed": f"{type(exc).__name__}: {exc}"[:300]}
            return
        import ray

        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                res = ray.get(ready[0])
            except Exception as exc:
                res = {"rc": -1, "failed": f"{type(exc).__name__}: {exc}"[:300]}
            yield ready[0], res

    def __exit__(self, *exc):
        if self.opts.address:
            import ray

            ray.shutdown()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)

