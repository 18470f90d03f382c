"""ResumableASHA: the rungs Ray does not save are rebuilt from the scheduler's own log on resume.

A hand-worked case (grace 1, reduction factor 2, max 4 steps: rungs at 1 and 2), no Ray cluster:
trials a, b, c reach step 1 with DSC 0.5, 0.3, 0.6 in that order. a goes on (nothing recorded),
b stops (0.3 < the median of {0.5}), c goes on (0.6 >= the median of {0.5, 0.3} = 0.4); a reaches
step 2 with 0.7. The driver dies there. After the resume, c reaching step 2 with 0.65 must stop
(0.65 < the median of {0.7}); b, restarted, must stop at its first report.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

pytest.importorskip("ray")

from pscv_dist.tune.asha import ResumableASHA, read_log  # noqa: E402

CONTINUE, STOP = "CONTINUE", "STOP"
BEFORE_KILL = [("a", 1, 0.5), ("b", 1, 0.3), ("c", 1, 0.6), ("a", 2, 0.7)]


class Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def scheduler(log: Path) -> ResumableASHA:
    return ResumableASHA(log_path=str(log), time_attr="step", metric="dsc", mode="max", max_t=4,
                         grace_period=1, reduction_factor=2)


def feed(s: ResumableASHA, events) -> list[str]:
    out = []
    for trial, step, dsc in events:
        if trial not in s._trial_info:
            s.on_trial_add(None, Trial(trial))
        out.append(s.on_trial_result(None, Trial(trial), {"step": step, "dsc": dsc}))
    return out


def test_asha_rule_by_hand_and_the_log_it_writes(tmp_path):
    log = tmp_path / "asha_log.jsonl"
    assert feed(scheduler(log), BEFORE_KILL) == [CONTINUE, STOP, CONTINUE, CONTINUE]
    assert [(e["event"], e["trial"], e["t"], e["value"]) for e in read_log(log)] == [
        ("result", t, s, d) for t, s, d in BEFORE_KILL]


def test_a_restored_scheduler_judges_as_the_uninterrupted_one(tmp_path):
    log = tmp_path / "asha_log.jsonl"
    built = scheduler(log)
    pickled = pickle.dumps(built)  # Tuner.restore brings back the scheduler pickled when it was built
    feed(built, BEFORE_KILL)
    restored = pickle.loads(pickled)
    # after the resume: c reaches step 2 below a's 0.7; b (restarted) re-reports its step-1 value
    assert feed(restored, [("c", 2, 0.65), ("b", 1, 0.3)]) == [STOP, STOP]
    # plain ASHA restored with empty rungs: the first to arrive always goes on
    assert feed(scheduler(tmp_path / "none.jsonl"), [("c", 2, 0.65), ("b", 1, 0.3)]) == [CONTINUE, CONTINUE]
    # the uninterrupted search stops c there too
    assert feed(scheduler(tmp_path / "straight.jsonl"), BEFORE_KILL + [("c", 2, 0.65)])[-1] == STOP


def test_rungs_pickled_midway_are_rebuilt_not_doubled(tmp_path):
    log = tmp_path / "asha_log.jsonl"
    s = scheduler(log)
    feed(s, BEFORE_KILL)
    restored = pickle.loads(pickle.dumps(s))  # pickled after the events: the log still decides
    assert feed(restored, [("b", 1, 0.3), ("a", 2, 0.7), ("c", 2, 0.9)]) == [STOP, CONTINUE, CONTINUE]
    assert restored._brackets[0]._rungs[-1][1] == {"a": 0.5, "b": 0.3, "c": 0.6}


def test_a_line_cut_short_by_a_kill_and_nan_values(tmp_path):
    log = tmp_path / "asha_log.jsonl"
    feed(scheduler(log), [("a", 1, 0.5), ("b", 1, float("nan"))])  # NaN: never stopped, never a cut
    with open(log, "a") as f:
        f.write('{"event": "result", "trial": "c", "t": 1, "val')
    restored = scheduler(log)
    assert feed(restored, [("c", 1, 0.4), ("d", 1, 0.6)]) == [STOP, CONTINUE]
    events = read_log(log)
    assert json.dumps(events[1]["value"]) == "NaN"
    assert [(e["trial"], e["value"]) for e in events[2:]] == [("c", 0.4), ("d", 0.6)]  # none glued to the cut line
