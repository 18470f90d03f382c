"""A study's ``runs.csv``: one line per finished run and convention, the numbers every table of the
report is computed from.

Columns: method, budget, seed, convention, mean and per-class DSC and HD95 (``hd95_unit`` px or
mm, one for the whole file), training minutes, the run's fingerprint. It is small and holds no
image data, so a study's results can be kept in git beside its file when the run folders are gone
(``docs/results/``).
``pscv study report`` writes it; ``pscv study report --from-csv`` reads it back and rebuilds the
tables and the trend table from it alone (no figures: the curves and the models stay with the run
folders). Reading checks each line against the study file as it is now: a method, budget or seed
it does not have, or a fingerprint of other overrides, is left out and listed with the reason. The
fingerprint of a searched method's run holds the search's values, which the CSV does not; those
lines are taken as written, and the report says so.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .plan import Study, fingerprint
from .folder import CONVENTIONS
KEYS = ("method", "budget", "seed", "convention", "mean_dsc", "mean_hd95", "hd95_unit", "train_min", "fingerprint")


def hd95(res: dict[str, Any], cls: str | None = None) -> float | None:
    """The HD95 of an evaluation (mean, or one class's), in mm where it has a spacing, else voxels."""
    if cls is None:
        return res.get("mean_hd95_mm", res.get("mean_hd95"))
    v = res["per_class"][cls]
    return v.get("hd95_mm", v.get("hd95"))


def write_csv(rows: list[dict[str, Any]]) -> str:
    """The report's rows (:func:`pscv_dist.study.report.collect`) as ``runs.csv`` text."""
    classes = list(dict.fromkeys(c for r in rows for e in r["evals"].values() for c in e["per_class"]))
    head = [*KEYS[:7], *[f"dsc_{c}" for c in classes], *[f"hd95_{c}" for c in classes], *KEYS[7:]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)

    def num(v, digits=4):
        return "" if v is None else f"{v:.{digits}f}"
    for r in sorted(rows, key=lambda r: (r["run"].budget, r["run"].method, r["run"].seed)):
        for conv in CONVENTIONS:
            e = r["evals"][conv]
            pc = e["per_class"]
            w.writerow([r["run"].method, r["run"].budget, r["run"].seed, conv, num(e["mean_dsc"]), num(hd95(e), 2),
                        "mm" if "mean_hd95_mm" in e else "px",
                        *[num(pc[c]["dsc"]) if c in pc else "" for c in classes],
                        *[num(hd95(e, c), 2) if c in pc else "" for c in classes],
                        num(r["train_s"] / 60 if r["train_s"] else None, 1), r["fingerprint"]])
    return buf.getvalue()


def read_csv(study: Study, path: Path, left_out: list[str], unchecked: list[str]) -> list[dict[str, Any]]:
    """The report's rows from a ``runs.csv`` (the run folders need not exist). Lines that are not
    runs of the study file as it is now go to ``left_out`` with the reason; runs of searched
    methods, whose fingerprints cannot be checked without the search, to ``unchecked``. A file
    that is not a ``runs.csv`` raises a one-line :class:`ConfigError` naming it."""
    if not path.is_file():
        raise ConfigError(f"--from-csv {path}: no such file (expected a study's runs.csv)")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        try:
            fields = reader.fieldnames or []
            lines = list(enumerate(reader, start=2))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{path}:{reader.line_num}: not a study's runs.csv ({exc})") from None
    missing = [k for k in KEYS if k not in fields]
    if missing:
        raise ConfigError(f"{path}: expected a study's runs.csv with columns {', '.join(KEYS)}, dsc_<class>, "
                          f"hd95_<class>; missing {', '.join(missing)}")
    classes = [k[4:] for k in fields if k.startswith("dsc_")]
    runs = {(r.method, r.budget, r.seed): r for r in study.runs()}
    evals: dict[tuple, dict[str, dict[str, Any]]] = {}
    meta: dict[tuple, tuple[float | None, str]] = {}
    first_unit: str | None = None
    for n, line in lines:
        where = f"{path}:{n}"
        try:
            key = (line["method"], int(line["budget"]), int(line["seed"]))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected integer budget and seed, found {line['budget']!r}, "
                              f"{line['seed']!r}") from None
        conv, unit = line["convention"], line["hd95_unit"]
        if conv not in CONVENTIONS or unit not in ("px", "mm"):
            raise ConfigError(f"{where}: expected convention in {CONVENTIONS} and hd95_unit px or mm, found "
                              f"{conv!r}, {unit!r}")
        if conv in evals.get(key, {}):
            raise ConfigError(f"{where}: a second {conv} line for {key[0]}/b{key[1]}_s{key[2]}")
        first_unit = first_unit or unit
        if unit != first_unit:
            raise ConfigError(f"{where}: expected hd95_unit {first_unit} as on the lines before (HD95 in one unit "
                              f"is paired and averaged), found {unit!r}")
        hd_key = "hd95_mm" if unit == "mm" else "hd95"
        evals.setdefault(key, {})[conv] = {
            "mean_dsc": _number(line, "mean_dsc", where), f"mean_{hd_key}": _number(line, "mean_hd95", where),
            "per_class": {c: {"dsc": _number(line, f"dsc_{c}", where), hd_key: _number(line, f"hd95_{c}", where)}
                          for c in classes}}  # blank cells (a class with nothing scored) are None
        minutes = _number(line, "train_min", where)
        found = (None if minutes is None else minutes * 60, line["fingerprint"])
        if meta.setdefault(key, found) != found:
            other = meta[key][0] and round(meta[key][0] / 60, 1)
            raise ConfigError(f"{where}: {key[0]}/b{key[1]}_s{key[2]}'s {conv} line gives another fingerprint or "
                              f"train_min than its other line: {found[1]} vs {meta[key][1]}, {minutes} vs {other}")
    rows = []
    for key, by_conv in evals.items():
        name = f"`{key[0]}/b{key[1]}_s{key[2]}`"
        run = runs.get(key)
        if run is None:
            left_out.append(f"{name}: not a run of {study.source} (its methods, budgets and seeds)")
            continue
        if sorted(by_conv) != sorted(CONVENTIONS):
            left_out.append(f"{name}: only the {', '.join(by_conv)} convention in {path}")
            continue
        train_s, fp = meta[key]
        if run.search:
            unchecked.append(name)
        else:
            now = fingerprint(study.run_overrides(run, Path(".")))
            if fp != now:
                left_out.append(f"{name}: made with other overrides than {study.source} now gives "
                                f"(fingerprint {fp} vs {now})")
                continue
        rows.append({"run": run, "evals": by_conv, "train_s": train_s, "curve": [], "fingerprint": fp})
    return rows


def _number(line: dict[str, str], key: str, where: str) -> float | None:
    raw = line.get(key) or ""
    if raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise ConfigError(f"{where}: expected a number or nothing in column {key}, found {raw!r}")
    return v
