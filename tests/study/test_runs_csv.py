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
    (lambda t: t.replace(",px,", ",mm,", 3).replace(",mm,", ",px,", 2),  # lines 2-3 px, line 4 mm
     "runs.csv:4: expected hd95_unit px as on the lines before (HD95 in one unit is paired and averaged), found 'mm'"),
    (lambda t: t + t.splitlines()[1] + "\n", "a second strict line for pce/b4_s0"),
    (lambda t: t.replace(",7.0,", ",8.0,", 1), "pce/b4_s0's literature line gives another fingerprint or train_min than its other line: "),
    (lambda t: t.replace("method", "m\x00\xe9thod"), "not a study's runs.csv"),
])
def test_a_bad_runs_csv_is_refused_in_one_line_and_nothing_is_written(phantom_store, tmp_path, capsys, edit, message):
    study_path = study_file(tmp_path, phantom_store)
    runs = write_runs(tmp_path / "runs.csv", load_study(study_path))
    runs.write_bytes(edit(runs.read_text()).encode("latin-1"))
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


def test_blank_cells_searched_methods_and_a_missing_convention(phantom_store, tmp_path):
    """A run with nothing scored (blank DSC cells, as runs.csv writes None) is read and shown as —; a
    searched method's lines are kept and named as unchecked; a run with one convention is left out;
    the report never overwrites the file it reads."""
    from pscv_dist.errors import ConfigError
    from pscv_dist.study import write_report

    space = tmp_path / "lr.yaml"
    space.write_text("optim.lr: {type: grid, values: [0.1]}\n")
    study_path = study_file(tmp_path, phantom_store, methods={
        "pce": {"loss.name": "pce"}, "pscv": {"loss.name": "pce", "search": "lr"}, "fullsup": {"loss.name": "fullsup"}},
        searches={"lr": {"space": str(space), "train_split": "fold0/train&fold1/train", "val_split": "fold1/val"}})
    study = load_study(study_path)
    runs = write_runs(tmp_path / "runs.csv", study)
    text = [line.rsplit(",", 1)[0] + ",0123456789abcdef" if line.startswith("fullsup,4,0,") else line
            for line in runs.read_text().splitlines()]
    pce = [i for i, line in enumerate(text) if line.startswith("pce,4,1,")]
    for i in pce:  # pce seed 1: nothing scored
        cells = text[i].split(",")
        cells[4] = cells[5] = cells[7] = cells[8] = cells[9] = cells[10] = ""
        text[i] = ",".join(cells)
    text = [line for line in text if not line.startswith("fullsup,4,1,literature")]
    runs.write_text("\n".join(text) + "\n")
    rep = write_report(study, tmp_path / "r", from_csv=runs)
    md = Path(rep["report"]).read_text()
    assert rep["finished"] == 4  # pce 0-1, pscv 0-1; fullsup 0 has another fingerprint, fullsup 1 one convention
    assert "`fullsup/b4_s1`: only the strict convention" in md and "`fullsup/b4_s0`: made with other overrides" in md
    assert "taken as written" in md and "`pscv/b4_s0`, `pscv/b4_s1`" in md
    pce_row = next(line for line in md.splitlines() if line.startswith("| `pce` |"))
    assert "| 2 | 0.610 |" in pce_row  # seed 1's blank mean DSC leaves seed 0's alone
    assert sorted(Path(rep["runs"]).read_text().splitlines()[1:]) == sorted(
        line for line in text[1:] if not line.startswith("fullsup"))
    with pytest.raises(ConfigError, match="is the runs.csv this report would write"):
        write_report(study, tmp_path / "r", from_csv=Path(rep["runs"]))
