"""ASHA that keeps its rungs across ``pscv tune --resume``.

Ray Tune saves a search's searcher and trials, but not its scheduler's state: ``Tuner.restore``
brings ASHA back as it was built, with empty rungs (``tuner.pkl`` is written when the Tuner is made).
Resumed as is, every trial still to report would be compared only with the reports that arrive after
the resume, and the first to reach each rung would always go on.

:class:`ResumableASHA` writes every result it is shown, in the order the driver received them, to a
log (``pscv tune`` keeps it in ``<out>/asha_log.jsonl``; one line per event, written before the
decision), and before its first decision after a restore replays that log through ASHA's own rule
(``_Bracket.on_result``): a trial reaching rung r at value v is stopped when v is below the
``(1 - 1/rf)`` quantile of the values recorded at r before it (Li et al., "A System for Massively
Parallel Hyperparameter Tuning", MLSys 2020). A trial the replay stops, which the driver died before stopping, is stopped at its next
report. The driver's own order is used, not the trials' clocks, which differ between nodes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


def _events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return events


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events of an ASHA log, in order: ``{"event": "result"|"complete", "trial", "t", "value"}``.
    A line cut short by a kill is skipped."""
    return _events(path.read_text()) if path.is_file() else []


class _Id:
    """What a bracket reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


class ResumableASHA(AsyncHyperBandScheduler):
    """``ASHAScheduler`` (one bracket) whose rungs are rebuilt from its own log on resume."""

    def __init__(self, *, log_path: str, **kwargs: Any):
        super().__init__(brackets=1, **kwargs)
        self._log_path = log_path
        self._replayed = False
        self._stop_next: set[str] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled means restored (``Tuner.restore``): the rungs come from the log, whatever was pickled."""
        self.__dict__.update(state)
        self._replayed = False
        for _, recorded in self._brackets[0]._rungs:
            recorded.clear()

    def _replay(self) -> None:
        if self._replayed:
            return
        self._replayed = True
        path = Path(self._log_path)
        text = path.read_text() if path.is_file() else ""
        bracket, stopped = self._brackets[0], set()
        for e in _events(text):
            if e["event"] == "result" and e["t"] >= self._max_t and self._stop_last_trials:
                continue  # ASHA stops a trial at max_t without recording it
            if bracket.on_result(_Id(e["trial"]), e["t"], e["value"]) == TrialScheduler.STOP and e["event"] == "result":
                stopped.add(e["trial"])
        self._stop_next = stopped  # finished trials are never resumed: only a restarted one meets this
        if text and not text.endswith("\n"):
            with open(path, "a") as f:
                f.write("\n")  # a line cut short by a kill stays alone, the next event on a line of its own

    def _log(self, event: str, trial, result: dict) -> None:
        value = result.get(self._metric)
        if self._time_attr not in result or value is None:
            return
        # as ASHA sees it (NaN included: it never stops a trial and nanpercentile skips it)
        line = {"event": event, "trial": trial.trial_id, "t": result[self._time_attr],
                "value": self._metric_op * float(value)}
        with open(self._log_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def on_trial_add(self, tune_controller, trial) -> None:
        self._replay()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._replay()
        self._log("result", trial, result)
        if trial.trial_id in self._stop_next and self._time_attr in result:
            self._stop_next.discard(trial.trial_id)
            self._num_stopped += 1
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._replay()
        self._log("complete", trial, result)
        super().on_trial_complete(tune_controller, trial, result)
