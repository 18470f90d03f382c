"""``pscv tune``: check everything, start (or join) Ray, run or resume the search, write the results.

Everything the user can get wrong is refused before Ray starts (:func:`prepare`): the config and
overrides, the space (keys and every bound against the config), the resources, the store and its
validation split, the output folder. The search itself is a ``ray.tune.Tuner`` over the trial
functions of :mod:`.trainable`, ranked by ``val_mean_dsc`` (max), with ASHA on the training step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..config import apply_overrides, from_dict, read_yaml_config, resolve_config_path
from ..errors import ConfigError, PscvError
from ..files import absolute_local, write_json_atomic
from .space import SearchSpace, load_space, parse_space

log = logging.getLogger(__name__)

METRIC, MODE, TIME_ATTR = "val_mean_dsc", "max", "step"
STATE_FILE = "search.json"  # the search's settings, written before Ray starts; --resume reads them
ASHA_LOG = "asha_log.jsonl"  # every result ASHA saw, in order: its rungs after --resume (asha.py)
RAY_DIR, EXPERIMENT = "ray", "search"


@dataclasses.dataclass
class TuneOptions:
    out: str
    config: str | None = None
    space: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    num_samples: int = 8
    search: str = "random"  # random | optuna
    scheduler: str = "asha"  # asha | none
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None  # None: a local Ray on this machine; "auto" or "ray://host:10001"
    num_cpus: int | None = None  # local Ray only; default: this machine's CPUs
    resume: bool = False
    grace_steps: int | None = None  # ASHA: steps before the first cut (default: train.val_every)
    reduction_factor: float = 3.0
    seed: int = 0


@dataclasses.dataclass
class Plan:
    """A checked search: everything :func:`run_search` needs, with nothing left to refuse."""
    opts: TuneOptions
    raw: dict[str, Any]  # the base config with the overrides applied
    space: SearchSpace
    iterations: int
    val_every: int
    out: Path

    @property
    def experiment_path(self) -> Path:
        return self.out / RAY_DIR / EXPERIMENT


def _check_resources(o: TuneOptions) -> None:
    if o.workers_per_trial < 1:
        raise ConfigError(f"--workers-per-trial={o.workers_per_trial}: expected an integer >= 1")
    if o.num_samples < 1:
        raise ConfigError(f"--num-samples={o.num_samples}: expected an integer >= 1")
    if not o.cpus_per_worker > 0:
        raise ConfigError(f"--cpus-per-worker={o.cpus_per_worker}: expected a number > 0")
    if o.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker={o.gpus_per_worker}: expected a number >= 0")
    if o.max_concurrent is not None and o.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent={o.max_concurrent}: expected an integer >= 1")
    if o.search not in ("random", "optuna"):
        raise ConfigError(f"--search={o.search!r}: expected random or optuna")
    if o.scheduler not in ("asha", "none"):
        raise ConfigError(f"--scheduler={o.scheduler!r}: expected asha or none")
    if not o.reduction_factor > 1:
        raise ConfigError(f"--reduction-factor={o.reduction_factor}: expected a number > 1")
    if o.address is None:  # a local Ray: a trial that needs more than this machine would wait forever
        cpus = o.num_cpus or os.cpu_count() or 1
        need = o.workers_per_trial * o.cpus_per_worker
        if need > cpus:
            raise ConfigError(f"--workers-per-trial={o.workers_per_trial} x --cpus-per-worker={o.cpus_per_worker} "
                              f"needs {need:g} CPUs per trial; this machine has {cpus} (use --address for a cluster)")
        if o.gpus_per_worker:
            import torch

            have, want = torch.cuda.device_count(), o.workers_per_trial * o.gpus_per_worker
            if want > have:
                raise ConfigError(f"--gpus-per-worker={o.gpus_per_worker}: a trial needs {want:g} GPUs; this machine "
                                  f"has {have}")


def _check_config(raw: dict[str, Any], where: str, o: TuneOptions) -> tuple[int, int]:
    from ..data import SliceStore

    try:
        cfg = from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not cfg.data.store:
        raise ConfigError(f"{where}: data.store is not set: give the path of a store written by `pscv prepare`")
    if not cfg.data.val_split:
        raise ConfigError(f"{where}: data.val_split is not set; a search ranks trials by validation DSC")
    if o.scheduler == "asha" and not cfg.train.val_every:
        raise ConfigError(f"{where}: train.val_every=0 validates only at the end; ASHA needs validations during "
                          f"training (set train.val_every or --scheduler none)")
    if cfg.data.batch_size % o.workers_per_trial:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} cannot be split exactly over "
                          f"--workers-per-trial={o.workers_per_trial}; use a multiple of it")
    store = SliceStore(cfg.data.store)  # refuses a missing or damaged store by name
    store.split(cfg.data.val_split)
    store.split(cfg.data.train_split)
    return cfg.train.iterations, cfg.train.val_every


def _absolute_store(raw: dict[str, Any]) -> dict[str, Any]:
    """Trials run in their own folders (Ray moves each into its trial directory), maybe on other
    nodes: a relative ``data.store`` is made absolute against the folder `pscv tune` started in (a
    search resumed from another folder keeps the path it started with)."""
    store = (raw.get("data") or {}).get("store")
    if isinstance(store, str) and store != absolute_local(store):
        raw = {**raw, "data": {**raw["data"], "store": absolute_local(store)}}
    return raw


def prepare(o: TuneOptions) -> Plan:
    """Check a search before anything starts; on ``--resume`` the saved settings are used.

    Raises:
        ConfigError: anything the user must fix (one line, naming the option, key or file).
    """
    out = Path(o.out).resolve()
    state = out / STATE_FILE
    if o.resume:
        if not state.is_file():
            raise ConfigError(f"--resume: {state} not found; {out} holds no search to resume")
        saved = json.loads(state.read_text())
        keep = {"out": o.out, "resume": True, "address": o.address, "num_cpus": o.num_cpus}
        o = TuneOptions(**{**saved["options"], **keep})
        raw, space_spec, where = saved["raw"], saved["space"], saved["space_source"]
        space = parse_space(space_spec, raw, where)
    else:
        if o.config is None:
            raise ConfigError("--config is required (a YAML file or preset name) unless --resume")
        if state.is_file() or (out / RAY_DIR).exists():
            raise ConfigError(f"--out {out}: holds a search already; pass --resume to continue it or choose a "
                              f"new folder")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: is a file, expected a folder")
        where = str(resolve_config_path(o.config))
        raw = apply_overrides(read_yaml_config(o.config), o.overrides)
        space = load_space(o.space, raw)
    raw = _absolute_store(raw)
    _check_resources(o)
    iterations, val_every = _check_config(raw, where, o)
    if o.search == "optuna" and space.has_grid:
        raise ConfigError(f"{space.source}: grid values need --search random (Optuna samples, it does not enumerate)")
    if o.grace_steps is not None and not 1 <= o.grace_steps <= iterations:
        raise ConfigError(f"--grace-steps={o.grace_steps}: expected 1 <= steps <= train.iterations={iterations}")
    plan = Plan(o, raw, space, iterations, val_every, out)
    if not o.resume:
        out.mkdir(parents=True, exist_ok=True)
        spec = {p.key: ({"type": p.type, "values": list(p.values)} if p.values else
                        {"type": p.type, "low": p.low, "high": p.high}) for p in space.params}
        write_json_atomic({"options": dataclasses.asdict(o), "raw": raw, "space": spec,
                           "space_source": space.source}, state)
    return plan


# --- Ray ----------------------------------------------------------------------------------------
def start_ray(o: TuneOptions) -> None:
    """A local Ray on this machine (dashboard off, token auth off: it works offline), or join ``--address``."""
    import ray

    if ray.is_initialized():
        return
    if o.address:
        ray.init(address=o.address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=o.num_cpus or os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)


def progress_callback(iterations: int, stream=None):
    """A Tune callback that prints one status line whenever a count or the best score changes:
    running / pending / done / stopped by ASHA / errored, and the best ``val_mean_dsc`` so far with
    its trial and values. (Built in a function: Ray is imported only when a search runs.)"""
    from ray.tune import Callback

    class _Progress(Callback):
        def __init__(self):
            self.iterations, self.stream, self.t0, self.last = iterations, stream or sys.stdout, time.time(), None
            self.best: tuple[float, str, dict] | None = None

        def _line(self, trials) -> None:
            stopped = sum(1 for t in trials if t.status == "TERMINATED"
                          and (t.last_result or {}).get(TIME_ATTR, self.iterations) < self.iterations)
            done = sum(1 for t in trials if t.status == "TERMINATED") - stopped
            counts = (sum(t.status == "RUNNING" for t in trials), sum(t.status == "PENDING" for t in trials),
                      done, stopped, sum(t.status == "ERROR" for t in trials))
            best = "-" if self.best is None else (
                f"{self.best[0]:.4f} ({self.best[1]}: "
                + ", ".join(f"{k}={_fmt(v)}" for k, v in self.best[2].items()) + ")")
            line = (f"running {counts[0]} | pending {counts[1]} | done {counts[2]} | stopped {counts[3]} | "
                    f"errored {counts[4]} | best {METRIC} {best}")
            if line != self.last:
                self.last = line
                print(f"[pscv tune {time.time() - self.t0:6.0f}s] {line}", file=self.stream, flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            v = result.get(METRIC)
            if v is not None and math.isfinite(v) and (self.best is None or v > self.best[0]):
                self.best = (v, trial.trial_id, dict(trial.config))
            self._line(trials)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._line(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trials)

    return _Progress()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _trainable(plan: Plan, ctx: dict[str, Any]):
    from ray import tune

    from .trainable import run_distributed_trial, run_trial

    o = plan.opts
    if o.workers_per_trial == 1:
        resources = {"CPU": o.cpus_per_worker, **({"GPU": o.gpus_per_worker} if o.gpus_per_worker else {})}
        return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    # the trial function only waits on its TorchTrainer, whose workers hold the CPUs and GPUs (Ray
    # refuses an all-zero request: 1 MiB of memory stands in for "nothing")
    return tune.with_resources(tune.with_parameters(run_distributed_trial, ctx=ctx), {"CPU": 0, "memory": 1 << 20})


def _slots(o: TuneOptions) -> int:
    """How many trials Ray's resources hold at once, now (Ray must be started)."""
    import ray

    have, per = ray.cluster_resources(), o.workers_per_trial
    n = int(have.get("CPU", 0) // (per * o.cpus_per_worker))
    if o.gpus_per_worker:
        n = min(n, int(have.get("GPU", 0) // (per * o.gpus_per_worker)))
    return max(1, n)


def _max_concurrent(plan: Plan) -> int | None:
    o = plan.opts
    if o.max_concurrent:
        return o.max_concurrent
    if o.workers_per_trial == 1:
        return None  # Tune packs trials by their resources
    return _slots(o)  # trials take 0 CPU themselves (their workers hold the resources): bound them here


def _total_trials(plan: Plan) -> int:
    return plan.opts.num_samples * math.prod(len(p.values) for p in plan.space.params if p.type == "grid")


def trials_at_once(plan: Plan) -> int:
    """The most trials that can run at once, never more than the search has: ``--max-concurrent``
    or what Ray's resources hold, whichever is less. On a cluster (``--address``) without
    ``--max-concurrent``, every trial: its nodes may grow while the search runs."""
    o, total = plan.opts, _total_trials(plan)
    bound = o.max_concurrent or total
    if o.address is None:
        bound = min(bound, _slots(o))
    return max(1, min(bound, total))


def order_dependence(o: TuneOptions, at_once: int) -> str | None:
    """Why the search's answer may change from one run to the next, or None when it repeats.

    Every trial is seeded and repeats. The choice among them repeats too, unless it depends on the
    order in which trials report, which is a matter of timing once several run at once: ASHA is
    asynchronous (a trial at a rung is compared only with the trials that reached it before; the
    first to arrive always goes on), and Optuna's TPE suggests each trial from those finished before
    it. One trial at a time, the order is the sampled one."""
    if at_once <= 1:
        return None
    why = (["ASHA judges a trial at a rung only against the trials that reached it first"] if o.scheduler == "asha"
           else []) + (["Optuna suggests each trial from the trials finished before it"] if o.search == "optuna"
                       else [])
    if not why:
        return None
    return (f"up to {at_once} trials run at once and " + "; ".join(why) + ": which trials arrive first is a "
            f"matter of timing, so a rerun may {'stop' if o.scheduler == 'asha' else 'suggest'} other trials "
            f"and choose another answer (--max-concurrent 1 gives a search that repeats)")


def _tuner(plan: Plan, ctx: dict[str, Any], stream=None):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    o = plan.opts
    trainable = _trainable(plan, ctx)
    if o.resume:
        if not tune.Tuner.can_restore(str(plan.experiment_path)):
            raise ConfigError(f"--resume: {plan.experiment_path} holds no Ray Tune state (the driver stopped before "
                              f"the search started); remove {plan.out} and start again")
        return tune.Tuner.restore(str(plan.experiment_path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    if o.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher, limit = OptunaSearch(seed=o.seed), _max_concurrent(plan)
    else:
        from ray.tune.search import BasicVariantGenerator

        # a generator limits its own concurrency (Tune's max_concurrent_trials is for searchers)
        searcher, limit = BasicVariantGenerator(random_state=o.seed, max_concurrent=_max_concurrent(plan) or 0), None
    if o.scheduler == "asha":
        from .asha import ResumableASHA

        grace = o.grace_steps or min(plan.val_every, plan.iterations)
        scheduler = ResumableASHA(log_path=str(plan.out / ASHA_LOG), time_attr=TIME_ATTR,
                                  max_t=plan.iterations, grace_period=grace, reduction_factor=o.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable, param_space=plan.space.to_tune(),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=o.num_samples, search_alg=searcher,
                                    scheduler=scheduler, max_concurrent_trials=limit,
                                    trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(plan.out / RAY_DIR), verbose=0,
                                  callbacks=[progress_callback(plan.iterations, stream)],
                                  failure_config=tune.FailureConfig(max_failures=0)))


def _order_note(plan: Plan) -> str | None:
    """:func:`order_dependence` for this search, kept in ``search.json``: a search that ran several
    trials at once and is resumed one at a time still may not repeat."""
    state = plan.out / STATE_FILE
    saved = json.loads(state.read_text())
    note = saved.get("order_note") or order_dependence(plan.opts, trials_at_once(plan))
    if note != saved.get("order_note"):
        write_json_atomic({**saved, "order_note": note}, state)
    return note


def run_search(o: TuneOptions, stream=None) -> dict[str, Any]:
    """Check, run (or resume) the search, write the results; returns the results summary.

    Raises:
        ConfigError: refused before Ray starts (see :func:`prepare`).
        PscvError: every trial failed (the first trial's error is named).
    """
    from ..tracking.search import finish_parent, search_tracking, start_parent
    from .results import write_results

    plan = prepare(o)
    o = plan.opts
    base = from_dict(plan.raw)
    tracking = base.tracking.enabled
    uri, artifacts = search_tracking(plan.out, base.tracking.tracking_uri, base.tracking.artifact_location)
    exp_id = parent = None
    if tracking:  # the database, experiment and parent run exist before any trial starts
        settings = {"search": o.search, "scheduler": o.scheduler, "num_samples": o.num_samples,
                    "workers_per_trial": o.workers_per_trial, "config": o.config,
                    **{f"space.{k}": v for k, v in plan.space.describe().items()}}
        exp_id, parent = start_parent(uri, artifacts, base.tracking.experiment, plan.out,
                                      base.tracking.run_name or f"tune-{plan.out.name}", settings)
    ctx = {"raw": plan.raw, "out": str(plan.out), "tracking": tracking, "tracking_uri": uri,
           "artifact_location": artifacts, "experiment_id": exp_id, "parent_run_id": parent,
           "workers": o.workers_per_trial, "cpus_per_worker": o.cpus_per_worker,
           "gpus_per_worker": o.gpus_per_worker}
    start_ray(o)
    order_note = _order_note(plan)
    if order_note:
        log.warning("%s: %s", plan.out, order_note)
    t0 = time.time()
    tuner = _tuner(plan, ctx, stream)
    grid = tuner.fit()
    expected = _total_trials(plan)
    finished = grid.num_terminated + grid.num_errors  # ASHA's stops are terminated trials too
    complete = len(grid) >= expected and finished == len(grid)  # not stopped by a signal midway
    summary = write_results(plan, grid, wall_s=time.time() - t0, complete=complete, order_note=order_note)
    if tracking:
        best = summary.get("best") or {}
        metrics = {f"best_{METRIC}": best["best_dsc"]} if best.get("best_dsc") is not None else {}
        metrics.update(trials=len(summary["trials"]), stopped=sum(t["stopped"] for t in summary["trials"]))
        finish_parent(uri, parent, metrics, [plan.out / n for n in summary["files"]],
                      status="KILLED" if not complete else ("FINISHED" if best else "FAILED"))
    if not complete:
        raise PscvError(f"{plan.out}: the search stopped before its trials finished ({finished} of {expected} "
                        f"done; partial tables written, no best_config.yaml); continue it with "
                        f"`pscv tune --out {plan.out} --resume`")
    if not summary.get("best"):
        errors = [t["error"] for t in summary["trials"] if t.get("error")]
        raise PscvError(f"{plan.out}: no trial reported a validation DSC"
                        + (f"; first error: {errors[0]}" if errors else ""))
    return summary
