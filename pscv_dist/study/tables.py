"""The study's tables: per method, against the reference, with the budget, and chosen pairs.

Per method (each budget and convention): per-class and mean DSC and HD95 as mean ± sample std over
its finished seeds; the paired differences of mean DSC and of mean HD95 against the reference, seed
by seed, each with a 95 % Student-t interval, mean(d) ± t(0.975, n-1)·sd(d)/√n (only seeds both
methods finished are paired); the share of the reference → upper gap closed, mean(DSC_m − DSC_ref)
/ mean(DSC_upper − DSC_ref) over the seeds all three share; the training wall time. The trend
table: per method, mean DSC and HD95 at each budget, Δ against the reference at each, and the
change of Δ from the shortest to the longest budget, paired seed by seed, (m_long − ref_long) −
(m_short − ref_short), with its 95 % t interval. The comparisons table: for each pair (a, b) the
study file names, at each budget, Δ mean DSC and Δ mean HD95 of a − b, paired seed by seed with the
same interval, and each seed's Δ; a side that pools several methods scores, on each seed, the mean
of their runs on that seed (only seeds all of them scored; HD95 likewise).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .plan import Side, Study, members
from .folder import CONVENTIONS
from .runs_csv import hd95


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


def _interval_text(diff: tuple[float, float, int] | None, digits: int = 3) -> str:
    if diff is None:
        return "—"
    if math.isnan(diff[1]):
        return f"{diff[0]:+.{digits}f} (n=1)"
    lo, hi = diff[0] - diff[1], diff[0] + diff[1]
    return f"{diff[0]:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def tables(study: Study, rows: list[dict[str, Any]]) -> str:
    parts = []
    for budget in study.budgets:
        for conv in CONVENTIONS:
            at = [r for r in rows if r["run"].budget == budget]
            if not at:
                continue
            classes = list(at[0]["evals"][conv]["per_class"])
            unit = _hd95_unit(at, conv)
            by_method = {m: [r for r in at if r["run"].method == m] for m in study.methods}
            per = _per_seed(at, conv)
            dsc, hd = ({m: per.get((m, budget), ({}, {}))[i] for m in study.methods} for i in (0, 1))
            ref, up = dsc.get(study.reference, {}), dsc.get(study.upper or "", {})
            head = ["method", "seeds", "mean DSC", *[f"DSC {c}" for c in classes], f"mean HD95 ({unit})",
                    *[f"HD95 {c}" for c in classes], f"Δ DSC vs {study.reference} [95% CI]",
                    f"Δ HD95 ({unit}) vs {study.reference} [95% CI]", "gap closed", "train (min)", "paper DSC",
                    "paper HD95"]
            lines = [f"### {budget} iterations, `{conv}` convention\n", "| " + " | ".join(head) + " |",
                     "|" + "---|" * len(head)]
            for m, rs in by_method.items():
                if not rs:
                    continue
                ev = [r["evals"][conv] for r in rs]
                diff = paired_interval(dsc[m], ref) if m != study.reference else None
                hdiff = paired_interval(hd[m], hd.get(study.reference, {})) if m != study.reference else None
                share = gap_closed(dsc[m], ref, up) if m not in (study.reference, study.upper) else None
                gap = "—" if share is None else f"{share[0]:+.0%}" + (f" (n={share[1]})" if share[1] < len(rs) else "")
                paper = study.paper.get(m, {})
                cells = [f"`{m}`", str(len(rs)), _ms([e["mean_dsc"] for e in ev]),
                         *[_ms([e["per_class"][c]["dsc"] for e in ev]) for c in classes],
                         _ms([hd95(e) for e in ev], 1), *[_ms([hd95(e, c) for e in ev], 1) for c in classes],
                         _interval_text(diff), _interval_text(hdiff, 1), gap,
                         _ms([r["train_s"] / 60 if r["train_s"] else None for r in rs], 1),
                         str(paper.get("dsc", "—")), str(paper.get("hd95", "—"))]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _per_seed(rows: list[dict[str, Any]], conv: str) -> dict[tuple[str, int], tuple[dict[int, float], dict[int, float]]]:
    """(method, budget) -> ({seed: mean DSC}, {seed: mean HD95}) of the runs that have a score."""
    out: dict[tuple[str, int], tuple[dict[int, float], dict[int, float]]] = {}
    for r in rows:
        e = r["evals"][conv]
        if e["mean_dsc"] is None:
            continue
        d, h = out.setdefault((r["run"].method, r["run"].budget), ({}, {}))
        d[r["run"].seed] = e["mean_dsc"]
        if (v := hd95(e)) is not None:
            h[r["run"].seed] = v
    return out


def _hd95_unit(rows: list[dict[str, Any]], conv: str) -> str:
    return "mm" if any("mean_hd95_mm" in r["evals"][conv] for r in rows) else "px"


def trend_table(study: Study, rows: list[dict[str, Any]], conv: str = "strict") -> str:
    """Mean DSC / HD95 at every budget, Δ vs the reference at every budget, and the change of Δ from
    the method's shortest to its longest budget that it and the reference both reached on common
    seeds, paired per seed: (m_hi − ref_hi) − (m_lo − ref_lo). The reference's own row gives its DSC
    change, DSC_hi − DSC_lo. Empty unless some method has runs at two budgets."""
    budgets = sorted({r["run"].budget for r in rows})
    if len(budgets) < 2:
        return ""
    scores = _per_seed(rows, conv)  # a run without a score is left out of every column alike
    dsc = {k: d for k, (d, _) in scores.items()}
    hd = {k: list(h.values()) for k, (_, h) in scores.items()}
    ref = study.reference
    unit = _hd95_unit(rows, conv)

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


def _pooled(side: Side, budget: int, scores) -> tuple[dict[int, float], dict[int, float]]:
    """One side's per-seed mean DSC and HD95: a method's own, or its methods' mean on each seed
    every one of them scored."""
    found = [scores.get((m, budget), ({}, {})) for m in members(side)]
    out = []
    for k in (0, 1):
        seeds = set.intersection(*(set(f[k]) for f in found))
        out.append({s: float(np.mean([f[k][s] for f in found])) for s in seeds})
    return out[0], out[1]


def _label(side: Side) -> str:
    return f"`{side}`" if isinstance(side, str) else "mean(" + ", ".join(f"`{m}`" for m in side) + ")"


def comparisons_table(study: Study, rows: list[dict[str, Any]], conv: str = "strict") -> str:
    """One line per (pair a − b, budget) both sides reached on a common seed: Δ mean DSC and Δ
    mean HD95 paired seed by seed with their 95 % t intervals, and each seed's Δ DSC. A pooled
    side scores each seed's mean over its methods. Empty when the study names no pair or no pair
    has a common seed."""
    scores = _per_seed(rows, conv)
    unit = _hd95_unit(rows, conv)
    head = ["a − b", "budget", "seeds", "Δ mean DSC [95% CI]", f"Δ mean HD95 ({unit}) [95% CI]", "Δ DSC per seed"]
    lines = [f"### Paired comparisons, `{conv}` convention\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b in study.comparisons:
        for budget in study.budgets:
            (da, ha), (db, hb) = _pooled(a, budget, scores), _pooled(b, budget, scores)
            d = paired_interval(da, db)
            if d is None:
                continue
            h = paired_interval(ha, hb)
            hd_txt = "—" if h is None else _interval_text(h, 1)
            seeds = sorted(set(da) & set(db))
            per_seed = ", ".join(f"s{s} {da[s] - db[s]:+.3f}" for s in seeds)
            lines.append(f"| {_label(a)} − {_label(b)} | {budget} | {d[2]} | {_interval_text(d)} | {hd_txt} "
                         f"| {per_seed} |")
    return "\n".join(lines) if len(lines) > 3 else ""
