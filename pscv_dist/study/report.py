"""``pscv study report``: tables, figures and ``runs.csv`` rebuilt from the run folders alone (or
the tables from a ``runs.csv`` alone, :mod:`.runs_csv`).

The tables and their statistics are :mod:`.tables`'s. Figures: validation curves (mean over
seeds), overlays of the same eval slices for every method, and each search's best DSC over its
searched values.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, PscvError
from .plan import Run, Search, Study, fingerprint
from .provenance import config_drift, describe_drift
from .folder import CONVENTIONS, check_study_folder, claim_study_folder, eval_path, read_record, record_path
from .runner import SearchedValues
from .runs_csv import read_csv, write_csv
from .tables import comparisons_table, tables, trend_table

log = logging.getLogger(__name__)


def collect(study: Study, out: Path, left_out: list[str] | None = None,
            values: SearchedValues | None = None) -> list[dict[str, Any]]:
    """One row per finished run of the study file as it is now: its evaluations (both
    conventions), wall time and val curve. A run made with other overrides is not this study's;
    a run whose trained config differs from today's, or cannot be read, is left out and, with
    ``left_out``, listed there with the reason."""
    rows, values = [], values or SearchedValues(study, out)
    for run in study.runs():
        rec = read_record(record_path(run, out))
        evals = {c: read_record(eval_path(run, out, c)) for c in CONVENTIONS}
        if not rec or rec.get("status") != "done" or None in evals.values():
            continue
        try:
            searched = values(run.search) if run.search else {}
            overrides = study.run_overrides(run, out, searched) if searched is not None else None
            if overrides is None or rec.get("fingerprint") != fingerprint(overrides):
                continue
            drift = config_drift(run.folder(out), rec, study.config, overrides)
        except PscvError as exc:
            drift = str(exc)
        if drift:
            why = drift if isinstance(drift, str) else f"trained with {describe_drift(drift)}"
            log.warning("%s left out of the report: %s", run.key, why)
            if left_out is not None:
                left_out.append(f"`{run.key}`: {why}")
            continue
        curve = []
        train_log = run.folder(out) / "train_log.jsonl"
        if train_log.is_file():
            for line in train_log.read_text().splitlines():
                r = json.loads(line)
                if r.get("val_mean_dsc") is not None:
                    curve.append((r["step"], r["val_mean_dsc"]))
        rows.append({"run": run, "evals": evals, "train_s": rec.get("train_s"), "curve": curve,
                     "fingerprint": rec["fingerprint"]})
    return rows


def curves_figure(study: Study, rows: list[dict[str, Any]], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [b for b in study.budgets if any(r["run"].budget == b and r["curve"] for r in rows)]
    if not budgets:
        return None
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets) + 2.5, 4), squeeze=False)
    colors = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors, *plt.get_cmap("Set1").colors]
    for ax, b in zip(axes[0], budgets):
        for i, m in enumerate(study.methods):  # one colour and line style per method, in every panel
            curves = [dict(r["curve"]) for r in rows if r["run"].budget == b and r["run"].method == m and r["curve"]]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [np.mean([c[s] for c in curves]) for s in steps]
            ax.plot(steps, mean, marker="o", ms=3, color=colors[i % len(colors)], linestyle=("-", "--")[i >= 10],
                    label=f"{m} (n={len(curves)})")
        ax.set_title(f"{b} iterations: validation mean DSC (eval split)")
        ax.set_xlabel("step")
        ax.set_ylabel("mean DSC (strict)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overlay_runs(study: Study, rows: list[dict[str, Any]]) -> dict[str, Run]:
    """Method -> the run its overlay shows: at the largest budget any method finished, each method's
    lowest finished seed (the same seed for every method that has it)."""
    for b in sorted(study.budgets, reverse=True):
        at = {r["run"].method: r["run"]  # the lowest seed is written last, so it is the one kept
              for r in sorted(rows, key=lambda r: r["run"].seed, reverse=True) if r["run"].budget == b}
        if at:
            return {m: at[m] for m in study.methods if m in at}
    return {}


def overlays_figure(study: Study, rows: list[dict[str, Any]], out: Path, path: Path, n_slices: int = 3) -> Path | None:
    """The same eval slices (the middle slices of the first eval case) under every method's
    final model (first seed, the largest budget any method finished; methods without it are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..config import load_config
    from ..data import SliceStore
    from ..eval.inference import predict_volume
    from ..model.bundle import load_model

    runs = overlay_runs(study, rows)
    if not runs:
        return None
    rec = read_record(record_path(next(iter(runs.values())), out))
    store = SliceStore(load_config(study.config, rec["overrides"]).data.store)
    case = store.split(study.eval_split)[0]
    vol = store.volume(case)
    z = vol["image"].shape[0]
    zs = sorted({int(round(v)) for v in np.linspace(z * 0.3, z * 0.7, n_slices)})
    preds = {}
    for m, run in runs.items():
        model, meta = load_model(run.folder(out) / "checkpoints" / f"step_{run.budget:08d}" / "model.pt")
        preds[m] = predict_volume(model, vol["image"], meta["size"])
    cols = ["image", "label", *runs]
    fig, axes = plt.subplots(len(zs), len(cols), figsize=(2.2 * len(cols), 2.3 * len(zs)), squeeze=False)
    k = len(store.classes)
    for i, zi in enumerate(zs):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            ax.imshow(vol["image"][zi], cmap="gray")
            if col != "image":
                lab = vol["label"][zi] if col == "label" else preds[col][zi]
                ax.imshow(np.ma.masked_equal(lab, 0), cmap="tab10", vmin=0, vmax=max(9, k), alpha=0.5)
            if i == 0:
                ax.set_title(col, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{case}, slices {zs}: seed {next(iter(runs.values())).seed}, "
                 f"{next(iter(runs.values())).budget} iterations", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _trusted(search: Search, values: SearchedValues) -> bool:
    """The search is the one the study asks for now (or not finished yet): not left out."""
    try:
        values(search.name)
    except PscvError:
        return False
    return True


def search_figure(study: Study, out: Path, path: Path, values: SearchedValues | None = None) -> Path | None:
    """Each search's best validation DSC over its first two searched values (log x for λ)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = values or SearchedValues(study, out)
    found = [(s, s.folder(out) / "results.csv") for s in study.searches.values()
             if (s.folder(out) / "results.csv").is_file() and _trusted(s, values)]
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(5.5 * len(found), 4.2), squeeze=False)
    for ax, (s, csv_path) in zip(axes[0], found):
        rows = [r for r in csv.DictReader(csv_path.open()) if r.get("best_dsc")]

        def numeric(k):
            try:
                return all(float(r[k]) == float(r[k]) for r in rows)
            except ValueError:
                return False
        keys = [k for k in rows[0] if "." in k and numeric(k)] if rows else []  # choice/grid strings left out
        if len(keys) >= 2:
            x, y = [float(r[keys[0]]) for r in rows], [float(r[keys[1]]) for r in rows]
            sc = ax.scatter(x, y, c=[float(r["best_dsc"]) for r in rows], cmap="viridis", s=60, edgecolors="k")
            fig.colorbar(sc, ax=ax, label="best val DSC")
            ax.set_ylabel(keys[1])
        elif keys:
            ax.scatter([float(r[keys[0]]) for r in rows], [float(r["best_dsc"]) for r in rows])
            ax.set_ylabel("best val DSC")
        if keys and all(float(r[keys[0]]) > 0 for r in rows):
            ax.set_xscale("log")
        ax.set_xlabel(keys[0] if keys else "")
        ax.set_title(f"search {s.name} ({len(rows)} trials, {s.val_split})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(study: Study, out: Path, overlays: bool = True, from_csv: Path | None = None) -> dict[str, Any]:
    """``<out>/report/results.md`` and its figures, from what the run folders hold now; or, with
    ``from_csv``, its tables alone from a ``runs.csv`` (:mod:`.runs_csv`) when the folders are gone."""
    from ..files import write_atomic

    check_study_folder(out)
    rep = out / "report"
    left_out: list[str] = []
    if from_csv and from_csv.resolve() == (rep / "runs.csv").resolve():
        raise ConfigError(f"--from-csv {from_csv}: is the runs.csv this report would write; copy it elsewhere "
                          "first (lines left out would be lost)")
    unchecked: list[str] = []
    values = SearchedValues(study, out)
    rows = read_csv(study, from_csv, left_out, unchecked) if from_csv else collect(study, out, left_out, values)
    claim_study_folder(out)  # only now: a file that cannot be read leaves nothing behind
    rep.mkdir(exist_ok=True)
    if from_csv:
        figs: list[Path] = []
        notes = [f"From `{from_csv}` alone (no figures: the curves and models stay with the run folders)."
                 + (f" Runs of searched methods taken as written (their fingerprints hold the search's values, "
                    f"which the file does not): {', '.join(unchecked)}." if unchecked else "")]
        why = "Left out of the file's lines:"
    else:
        figs = [f for f in (curves_figure(study, rows, rep / "curves.png"),
                            overlays_figure(study, rows, out, rep / "overlays.png") if overlays and rows else None,
                            search_figure(study, out, rep / "search.png", values)) if f]
        notes = ["\n".join(_search_line(s, values) for s in study.searches.values())] if study.searches else []
        why = ("Left out (the config they, or the search they take values from, ran with differs from what the "
               "study resolves now; move the folder named away to run it again):")
    if left_out:
        notes.append(why + "\n" + "\n".join(f"- {x}" for x in left_out))
    total = len(study.runs())
    trend = trend_table(study, rows)
    pairs = comparisons_table(study, rows)
    text = (f"# Study `{study.name}`: {len(rows)} of {total} runs finished\n\n"
            f"Scored on `{study.eval_split}` (3D, per volume), trained on `{study.train_split}`; "
            f"seeds {list(study.seeds)}, budgets {list(study.budgets)}. Mean ± sample std over seeds.\n\n"
            + "".join(n + "\n\n" for n in notes)
            + tables(study, rows) + "\n\n" + "".join(t + "\n\n" for t in (trend, pairs) if t)
            + "\n".join(f"![{f.stem}]({f.name})" for f in figs) + "\n")
    write_atomic(rep / "results.md", text.encode())
    write_atomic(rep / "runs.csv", write_csv(rows).encode())
    return {"finished": len(rows), "total": total, "report": str(rep / "results.md"), "runs": str(rep / "runs.csv"),
            "figures": [str(f) for f in figs], "left_out": left_out}


def _search_line(s: Search, values: SearchedValues) -> str:
    """A search's line of the report: its values, not run yet, or left out and why."""
    try:
        v = values(s.name)
    except PscvError as exc:
        return f"- search `{s.name}`: left out, {exc}"
    return (f"- search `{s.name}` (train `{s.train_split}`, validate `{s.val_split}`): "
            + (", ".join(f"`{k}` = {val:.4g}" if isinstance(val, float) else f"`{k}` = {val}"
                         for k, val in v.items()) if v else "not run yet"))
