"""ResumableASHA: the rungs Ray does not save are rebuilt from the trials' reports on resume.

A hand-worked case (grace 1, reduction factor 2, max 4 steps: rungs at 1 and 2), no Ray cluster:
trials a, b, c reach step 1 with DSC 0.5, 0.3, 0.6 in that order. a goes on (nothing recorded),
b stops (0.3 < the median of {0.5}), c goes on (0.6 >= the median of {0.5, 0.3} = 0.4); a reaches
step 2 with 0.7. The driver dies there. After the resume, c reaching step 2 with 0.65 must stop
(0.65 < the median of {0.7}); b, restarted, must stop at its first report.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")

from pscv_dist.tune.asha import ResumableASHA, reports  # noqa: E402

CONTINUE, STOP = "CONTINUE", "STOP"


class Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def scheduler(experiment: Path) -> ResumableASHA:
    return ResumableASHA(experiment_path=str(experiment), time_attr="step", metric="dsc", mode="max",
                         max_t=4, grace_period=1, reduction_factor=2)


def write(experiment: Path, lines: list[tuple[str, int, float, float]]) -> None:
    """(trial, step, dsc, reported_at) lines, appended to each trial's result.json as Ray writes them."""
    for trial, step, dsc, at in lines:
        folder = experiment / trial
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "result.json", "a") as f:
            f.write(json.dumps({"trial_id": trial, "step": step, "dsc": dsc, "reported_at": at,
                                "timestamp": int(at)}) + "\n")


BEFORE_KILL = [("a", 1, 0.5, 10.1), ("b", 1, 0.3, 10.2), ("c", 1, 0.6, 10.3), ("a", 2, 0.7, 11.0)]


def live(experiment: Path, events) -> list[str]:
    s = scheduler(experiment)
    added = set()
    out = []
    for trial, step, dsc in events:
        if trial not in added:
            s.on_trial_add(None, Trial(trial))
            added.add(trial)
        out.append(s.on_trial_result(None, Trial(trial), {"step": step, "dsc": dsc}))
    return out


def test_asha_rule_by_hand_on_a_fresh_search(tmp_path):
    assert live(tmp_path / "none", [(t, s, d) for t, s, d, _ in BEFORE_KILL]) == [CONTINUE, STOP, CONTINUE, CONTINUE]


def test_resumed_rungs_judge_as_the_uninterrupted_search_would(tmp_path):
    write(tmp_path, BEFORE_KILL)
    # after the resume: c reaches step 2 below a's 0.7; b (restarted) re-reports its step-1 value
    assert live(tmp_path, [("c", 2, 0.65), ("b", 1, 0.3)]) == [STOP, STOP]
    # what plain ASHA restored with empty rungs did: the first to arrive always goes on
    assert live(tmp_path / "empty", [("c", 2, 0.65), ("b", 1, 0.3)]) == [CONTINUE, CONTINUE]
    # the same run without the kill gives the same decision for c
    assert live(tmp_path / "none", [(t, s, d) for t, s, d, _ in BEFORE_KILL] + [("c", 2, 0.65)])[-1] == STOP


def test_a_repeated_report_counts_once_and_a_trial_above_the_cut_goes_on(tmp_path):
    write(tmp_path, BEFORE_KILL)
    # a, restarted, first reports its step-2 value again (recorded already), then steps on
    assert live(tmp_path, [("a", 2, 0.7), ("c", 2, 0.9)]) == [CONTINUE, CONTINUE]


def test_reports_come_back_in_arrival_order_and_bad_lines_are_skipped(tmp_path):
    write(tmp_path, [("b", 1, 0.3, 5.5), ("a", 1, 0.5, 5.2), ("a", 2, 0.7, 6.0)])
    with open(tmp_path / "a" / "result.json", "a") as f:
        f.write('{"trial_id": "a", "step": 3, "ds')  # cut short by a kill
        f.write('\n{"trial_id": "a", "step": 3, "dsc": NaN, "reported_at": 7.0}\n')
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "result.json").write_text('{"trial_id": "c", "timestamp": 4, "step": 1, "dsc": 0.1}\n')
    assert reports(tmp_path, "step", "dsc") == [("c", 1, 0.1), ("a", 1, 0.5), ("b", 1, 0.3), ("a", 2, 0.7)]
