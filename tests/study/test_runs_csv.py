"""`pscv study report --from-csv`: the tables rebuilt from a runs.csv alone (the run folders gone),
checked against numbers worked out here from the file's own values; lines that are not runs of the
study file as it is now left out with the reason; bad files refused in one line, nothing written."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from pscv_dist.cli import main as cli_main
from pscv_dist.study import load_study
from pscv_dist.study.plan import fingerprint

from .test_study import study_file

HEAD = ["method", "budget", "seed", "convention", "mean_dsc", "mean_hd95", "hd95_unit", "dsc_A", "dsc_B",
        "hd95_A", "hd95_B", "train_min", "fingerprint"]
# (method, seed): mean DSC; per class A = mean + 0.05, B = mean - 0.05; HD95 10 + seed
DSC = {("pce", 0): 0.61, ("pce", 1): 0.65, ("pscv", 0): 0.66, ("pscv", 1): 0.67,
       ("fullsup", 0): 0.80, ("fullsup", 1): 0.84}


def write_runs(path: Path, study, fp=None, extra=()) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEAD)
        for run in study.runs():
            d = DSC[run.method, run.seed]
            for conv in ("strict", "literature"):
                w.writerow([run.method, run.budget, run.seed, conv, f"{d:.4f}", f"{10 + run.seed:.2f}", "px",
                            f"{d + 0.05:.4f}", f"{d - 0.05:.4f}", "9.00", f"{11 + 2 * run.seed:.2f}", "7.0",
                            fp or fingerprint(study.run_overrides(run, Path(".")))])
        for line in extra:
            w.writerow(line)
    return path


def test_tables_from_the_csv_alone_agree_with_a_hand_computation(phantom_store, tmp_path, capsys):
    study_path = study_file(tmp_path, phantom_store)
    study = load_study(study_path)
    other = ["pce", 4, 5, "strict", "0.5", "1", "px", "0.5", "0.5", "1", "1", "1.0", "x"]  # seed 5: not in the file
    runs = write_runs(tmp_path / "runs.csv", study, extra=[other, [*other[:3], "literature", *other[4:]]])
    out = tmp_path / "report_only"
    assert cli_main(["study", "report", str(study_path), "--out", str(out), "--from-csv", str(runs)]) == 0
    text = (out / "report" / "results.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `pscv` |"))
    d = np.array([0.66 - 0.61, 0.67 - 0.65])
    half = 12.706204736174707 * d.std(ddof=1) / math.sqrt(2)  # t(0.975, 1) from a table
    assert "| 0.665 ± 0.007 | 0.715 ± 0.007 | 0.615 ± 0.007 | 10.5 ± 0.7 |" in row
    assert f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]" in row
    assert f"{d.mean() / np.mean([0.80 - 0.61, 0.84 - 0.65]):+.0%}" in row  # gap closed: 0.035 / 0.19
    assert "`pce/b4_s5`: not a run of" in text and "no figures" in text
    lines = (out / "report" / "runs.csv").read_text().splitlines()
    assert sorted(lines) == sorted(runs.read_text().splitlines()[:-2])  # every run of the study, as written


def test_lines_of_other_overrides_are_left_out_with_the_reason(phantom_store, tmp_path):
    study_path = study_file(tmp_path, phantom_store)
    runs = write_runs(tmp_path / "runs.csv", load_study(study_path), fp="0123456789abcdef")
    out = tmp_path / "r"
    assert cli_main(["study", "report", str(study_path), "--out", str(out), "--from-csv", str(runs)]) == 0
    text = (out / "report" / "results.md").read_text()
    assert text.startswith("# Study `tiny`: 0 of 6 runs finished")
    assert "`pscv/b4_s1`: made with other overrides than" in text and "fingerprint 0123456789abcdef vs " in text


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("mean_hd95,", "hd95,"), "missing mean_hd95"),
    (lambda t: t.replace("0.6600", "0.66x", 1), "runs.csv:2: expected a number or nothing in column dsc_A, found '0.66x'"),
    (lambda t: t.replace(",strict,", ",loose,", 1), "expected convention in"),
    (lambda t: t + t.splitlines()[1] + "\n", "a second strict line for pce/b4_s0"),
])
def test_a_bad_runs_csv_is_refused_in_one_line_and_nothing_is_written(phantom_store, tmp_path, capsys, edit, message):
    study_path = study_file(tmp_path, phantom_store)
    runs = write_runs(tmp_path / "runs.csv", load_study(study_path))
    runs.write_text(edit(runs.read_text()))
    out = tmp_path / "r"
    assert cli_main(["study", "report", str(study_path), "--out", str(out), "--from-csv", str(runs)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(runs) in err and "Traceback" not in err, err
    assert not out.exists()


def test_from_csv_is_refused_with_run_and_for_a_missing_file(phantom_store, tmp_path, capsys):
    study_path = study_file(tmp_path, phantom_store)
    out = tmp_path / "r"
    assert cli_main(["study", "run", str(study_path), "--out", str(out), "--from-csv", "x.csv"]) == 2
    assert "--from-csv goes with `pscv study report`" in capsys.readouterr().err
    assert cli_main(["study", "report", str(study_path), "--out", str(out), "--from-csv", str(tmp_path / "no.csv")]) == 2
    assert "no such file (expected a study's runs.csv)" in capsys.readouterr().err
    assert not out.exists()
