"""ASHA that keeps its rungs across ``pscv tune --resume``.

Ray Tune saves a search's searcher and trials, but not its scheduler's state: ``Tuner.restore``
brings ASHA back as it was built, with empty rungs (``tuner.pkl`` is written when the Tuner is made).
Resumed as is, every trial still to report would be compared only with the reports that arrive after
the resume, and the first to reach each rung would always go on.

:class:`ResumableASHA` rebuilds the rungs before its first decision from the reports the trials
wrote (``<experiment>/<trial id>/result.json``), in the order they arrived (``reported_at``, the
trial's own clock at report time, else Ray's whole-second ``timestamp``). Replaying a report runs
ASHA's own rule (``_Bracket.on_result``): a trial reaching rung r at value v is stopped when v is
below the ``(1 - 1/rf)`` quantile of the values recorded at r before it (Li et al., "A System for
Massively Parallel Hyperparameter Tuning", MLSys 2020). A trial the replay stops, which the driver
died before stopping, is stopped at its next report. On a fresh search there is nothing to replay.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

ORDER_KEY = "reported_at"  # set by the trial function on every report (time.time())


def reports(experiment: Path, time_attr: str, metric: str) -> list[tuple[str, float, float]]:
    """Every ``(trial id, time, metric)`` report under ``experiment``, in the order they arrived.

    Lines that are not JSON (a report cut short by a kill) or lack ``time_attr`` or ``metric`` are
    skipped; a trial's own reports keep their order among equal times."""
    found = []
    for path in sorted(experiment.glob("*/result.json")):
        for i, line in enumerate(path.read_text().splitlines()):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            value = rec.get(metric)
            if rec.get(time_attr) is None or value is None or not math.isfinite(value):
                continue
            when = rec.get(ORDER_KEY, rec.get("timestamp", 0))
            found.append((when, path.parent.name, i, rec.get("trial_id") or path.parent.name,
                          rec[time_attr], float(value)))
    found.sort(key=lambda r: (r[0], r[1], r[2]))
    return [(trial, t, v) for _, _, _, trial, t, v in found]


class _Id:
    """What a bracket reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


class ResumableASHA(AsyncHyperBandScheduler):
    """``ASHAScheduler`` (one bracket) whose rungs are rebuilt from the trials' reports on resume."""

    def __init__(self, *, experiment_path: str, **kwargs: Any):
        super().__init__(brackets=1, **kwargs)
        self._experiment_path = experiment_path
        self._replayed = False
        self._stop_next: set[str] = set()

    def _replay(self) -> None:
        if self._replayed:
            return
        self._replayed = True
        bracket, stopped = self._brackets[0], set()
        for trial, t, value in reports(Path(self._experiment_path), self._time_attr, self._metric):
            if t >= self._max_t and self._stop_last_trials:
                continue  # ASHA stops a trial at max_t without recording it
            if bracket.on_result(_Id(trial), t, self._metric_op * value) == TrialScheduler.STOP:
                stopped.add(trial)
        self._stop_next = stopped  # finished trials are never resumed: only a restarted one meets this

    def on_trial_add(self, tune_controller, trial) -> None:
        self._replay()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._replay()
        if trial.trial_id in self._stop_next and self._time_attr in result:
            self._stop_next.discard(trial.trial_id)
            self._num_stopped += 1
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)
