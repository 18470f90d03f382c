"""``pscv study report``: tables, figures and ``runs.csv`` rebuilt from the run folders alone (or
the tables from a ``runs.csv`` alone, :mod:`.runs_csv`).

For each budget and convention, per method over its finished seeds: per-class and mean DSC and
HD95 as mean ± sample std; the paired difference of mean DSC against the reference method, seed
by seed, with a 95 % Student-t interval, mean(d) ± t(0.975, n-1)·sd(d)/√n (only seeds both
methods finished are paired); the share of the reference → upper gap a method closes,
mean(DSC_m - DSC_ref) / mean(DSC_upper - DSC_ref) over the seeds all three share; the training
wall time. With two budgets or more, a trend table: per method, mean DSC and HD95 at each
budget, Δ against the reference at each, and the change of Δ from the shortest to the longest
budget, paired seed by seed, (m_long − ref_long) − (m_short − ref_short), with its 95 % t
interval: whether a method's gain grows with training length. Figures: validation curves (mean
over seeds), overlays of the same eval slices for every method, and each search's best DSC over
its searched values.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, PscvError
from .plan import Run, Search, Study, fingerprint
from .provenance import config_drift, describe_drift
from .runner import CONVENTIONS, SearchedValues, check_study_folder, claim_study_folder, eval_path, read_record, record_path
from .runs_csv import hd95, read_csv, write_csv

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


def t975(df: int) -> float:
    """Student-t 0.975 quantile (scipy)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def gap_closed(m: dict[int, float], ref: dict[int, float], up: dict[int, float]) -> tuple[float, int] | None:
    """(mean(m − ref) / mean(up − ref), seeds) over the seeds all three share: the share of the
    reference → upper gap a method closes, paired like Δ; None without a shared seed or a gap."""
    seeds = sorted(set(m) & set(ref) & set(up))
    if not seeds:
        return None
    gap = np.mean([up[s] - ref[s] for s in seeds])
    return (float(np.mean([m[s] - ref[s] for s in seeds]) / gap), len(seeds)) if gap else None


def paired_interval(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int] | None:
    """Mean of (a - b) over the seeds in both, and the half-width of its 95 % t interval."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    half = t975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), float(half), len(d)


def _ms(values: list[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _interval_text(diff: tuple[float, float, int] | None) -> str:
    if diff is None:
        return "—"
    if math.isnan(diff[1]):
        return f"{diff[0]:+.3f} (n=1)"
    return f"{diff[0]:+.3f} [{diff[0] - diff[1]:+.3f}, {diff[0] + diff[1]:+.3f}]"


def tables(study: Study, rows: list[dict[str, Any]]) -> str:
    parts = []
    for budget in study.budgets:
        for conv in CONVENTIONS:
            at = [r for r in rows if r["run"].budget == budget]
            if not at:
                continue
            classes = list(at[0]["evals"][conv]["per_class"])
            unit = "mm" if "mean_hd95_mm" in at[0]["evals"][conv] else "px"
            by_method = {m: [r for r in at if r["run"].method == m] for m in study.methods}
            dsc = {m: {r["run"].seed: r["evals"][conv]["mean_dsc"] for r in rs if r["evals"][conv]["mean_dsc"] is not None}
                   for m, rs in by_method.items()}
            ref, up = dsc.get(study.reference, {}), dsc.get(study.upper or "", {})
            head = ["method", "seeds", "mean DSC", *[f"DSC {c}" for c in classes], f"mean HD95 ({unit})",
                    *[f"HD95 {c}" for c in classes], f"Δ DSC vs {study.reference} [95% CI]",
                    "gap closed", "train (min)", "paper DSC", "paper HD95"]
            lines = [f"### {budget} iterations, `{conv}` convention\n", "| " + " | ".join(head) + " |",
                     "|" + "---|" * len(head)]
            for m, rs in by_method.items():
                if not rs:
                    continue
                ev = [r["evals"][conv] for r in rs]
                diff = paired_interval(dsc[m], ref) if m != study.reference else None
                dtxt = _interval_text(diff)
                share = gap_closed(dsc[m], ref, up) if m not in (study.reference, study.upper) else None
                gap = "—" if share is None else f"{share[0]:+.0%}" + (f" (n={share[1]})" if share[1] < len(rs) else "")
                paper = study.paper.get(m, {})
                cells = [f"`{m}`", str(len(rs)), _ms([e["mean_dsc"] for e in ev]),
                         *[_ms([e["per_class"][c]["dsc"] for e in ev]) for c in classes],
                         _ms([hd95(e) for e in ev], 1), *[_ms([hd95(e, c) for e in ev], 1) for c in classes],
                         dtxt, gap, _ms([r["train_s"] / 60 if r["train_s"] else None for r in rs], 1),
                         str(paper.get("dsc", "—")), str(paper.get("hd95", "—"))]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def trend_table(study: Study, rows: list[dict[str, Any]], conv: str = "strict") -> str:
    """Mean DSC / HD95 at every budget, Δ vs the reference at every budget, and the change of Δ from
    the method's shortest to its longest budget that it and the reference both reached on common
    seeds, paired per seed: (m_hi − ref_hi) − (m_lo − ref_lo). The reference's own row gives its DSC
    change, DSC_hi − DSC_lo. Empty unless some method has runs at two budgets."""
    budgets = sorted({r["run"].budget for r in rows})
    if len(budgets) < 2:
        return ""
    dsc: dict[tuple[str, int], dict[int, float]] = {}
    hd: dict[tuple[str, int], list[float | None]] = {}
    for r in rows:
        e = r["evals"][conv]
        if e["mean_dsc"] is None:  # no score: left out of every column alike
            continue
        key = (r["run"].method, r["run"].budget)
        hd.setdefault(key, []).append(hd95(e))
        dsc.setdefault(key, {})[r["run"].seed] = e["mean_dsc"]
    ref = study.reference
    unit = "mm" if any("mean_hd95_mm" in r["evals"][conv] for r in rows) else "px"

    def delta(m: str, b: int) -> dict[int, float]:
        a, z = dsc.get((m, b), {}), dsc.get((ref, b), {})
        return {s: a[s] - z[s] for s in set(a) & set(z)} if m != ref else a

    head = ["method", *[f"DSC @{b}" for b in budgets], *[f"HD95 ({unit}) @{b}" for b in budgets],
            *[f"Δ DSC vs {ref} @{b} [95% CI]" for b in budgets], "change of Δ, shortest → longest [95% CI]"]
    lines = [f"### Trend with the budget, `{conv}` convention\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in study.methods:
        if sum((m, b) in dsc for b in budgets) < 2:
            continue
        deltas = ["—" if m == ref else _interval_text(paired_interval(dsc.get((m, b), {}), dsc.get((ref, b), {})))
                  for b in budgets]
        paired = [b for b in budgets if delta(m, b)]
        change_txt = "—"
        if len(paired) >= 2:
            lo, hi = paired[0], paired[-1]
            d_lo, d_hi = delta(m, lo), delta(m, hi)
            change = paired_interval(d_hi, d_lo)
            if change is not None:
                change_txt = f"{_interval_text(change)} ({lo} → {hi}, n={change[2]})"
        cells = [f"`{m}`" + (" (its own DSC change)" if m == ref else ""),
                 *[_ms(list(dsc.get((m, b), {}).values())) for b in budgets],
                 *[_ms(hd.get((m, b), []), 1) for b in budgets], *deltas, change_txt]
        lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 3:
        return ""
    return "\n".join(lines) + (f"\n\nThe change of Δ is paired seed by seed over the seeds a method and `{ref}` "
                               f"share at both budgets; `{ref}`'s own row gives its DSC gain with the budget.")


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
    text = (f"# Study `{study.name}`: {len(rows)} of {total} runs finished\n\n"
            f"Scored on `{study.eval_split}` (3D, per volume), trained on `{study.train_split}`; "
            f"seeds {list(study.seeds)}, budgets {list(study.budgets)}. Mean ± sample std over seeds.\n\n"
            + "".join(n + "\n\n" for n in notes)
            + tables(study, rows) + "\n\n" + (trend + "\n\n" if trend else "")
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
