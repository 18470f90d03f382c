"""The study's tables (pscv_dist/study/tables.py) on hand-made rows: every number against a value
worked by hand (t(0.975, 1) = 12.706 from a table)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from pscv_dist.study.plan import Run
from pscv_dist.study.tables import comparisons_table, gap_closed, paired_interval, tables, trend_table


def row(method, budget, seed, dsc, hd=10.0, train_s=60.0):
    ev = {"mean_dsc": dsc, "mean_hd95": hd, "per_class": {}}
    return {"run": Run(method, budget, seed, (), None), "evals": {"strict": ev, "literature": dict(ev)},
            "train_s": train_s}


def test_gap_closed_pairs_the_seeds_all_three_share():
    m, ref, up = {0: 0.7, 1: 0.6, 2: 0.9}, {0: 0.5, 1: 0.6, 2: 0.5}, {0: 0.9, 1: 0.8}
    share, n = gap_closed(m, ref, up)  # seeds 0 and 1: mean(0.2, 0.0) / mean(0.4, 0.2)
    assert n == 2 and share == pytest.approx(0.1 / 0.3)
    assert gap_closed({2: 0.9}, ref, up) is None and gap_closed(m, ref, dict(ref)) is None


def test_paired_interval_pairs_only_common_seeds():
    mean, half, n = paired_interval({0: 0.5, 1: 0.7, 2: 0.9}, {0: 0.4, 1: 0.4})
    assert n == 2 and mean == pytest.approx(0.2) and half == pytest.approx(12.706204736 * 0.1414213562 / math.sqrt(2))


def test_the_trend_table_pairs_the_change_of_delta_seed_by_seed():
    study = SimpleNamespace(methods=["pce", "pscv", "ms", "em"], reference="pce")
    rows = [row("pce", 800, 0, 0.60), row("pce", 800, 1, 0.70), row("pce", 3000, 0, 0.70), row("pce", 3000, 1, 0.75),
            row("pce", 3000, 2, 0.99),  # no seed 2 at 800 and none for pscv: paired with nothing
            row("pscv", 800, 0, 0.65), row("pscv", 800, 1, 0.70), row("pscv", 3000, 0, 0.80), row("pscv", 3000, 1, 0.82),
            row("pscv", 3000, 3, 0.10, hd=500.0),  # a seed pce lacks: in the means, not in any Δ
            row("pscv", 3000, 4, None, hd=900.0),  # no score: in no column
            row("ms", 800, 0, 0.5),  # one budget only: no trend row
            row("em", 800, 0, 0.6), row("em", 3000, 1, 0.9)]  # two budgets, but no seed at both: no change
    text = trend_table(study, rows)
    lines = {line.split(" |")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert set(lines) == {"| `pce` (its own DSC change)", "| `pscv`", "| `em`"}
    # by hand: Δ@800 = (0.05, 0.00), Δ@3000 = (0.10, 0.07); change = (0.05, 0.07): mean 0.06, sd 0.01414,
    # half-width t(0.975, 1) · sd / √2 = 12.706 · 0.01414 / 1.414 = 0.127
    cells = [c.strip() for c in lines["| `pscv`"].strip("|").split("|")]
    assert cells[1:5] == ["0.675 ± 0.035", f"{np.mean([0.8, 0.82, 0.1]):.3f} ± {np.std([0.8, 0.82, 0.1], ddof=1):.3f}",
                          "10.0 ± 0.0", f"{np.mean([10, 10, 500]):.1f} ± {np.std([10, 10, 500], ddof=1):.1f}"]
    assert cells[5:8] == ["+0.025 [-0.293, +0.343]", "+0.085 [-0.106, +0.276]",
                          "+0.060 [-0.067, +0.187] (800 → 3000, n=2)"]
    # the reference's row: its own gain with the budget on seeds 0 and 1, (0.10, 0.05) -> +0.075 ± 12.706 · 0.03536 / √2
    assert lines["| `pce` (its own DSC change)"].rstrip(" |").endswith("+0.075 [-0.243, +0.393] (800 → 3000, n=2)")
    assert lines["| `em`"].rstrip(" |").endswith("| —")
    assert "HD95 (px) @800" in text
    assert trend_table(study, [r for r in rows if r["run"].budget == 800]) == ""


def test_the_comparisons_table_pairs_each_named_pair_seed_by_seed():
    study = SimpleNamespace(comparisons=[("pscv", "pce"), ("pscv", "ms"), ("em", "pce")], budgets=(800, 3000))
    rows = [row("pce", 800, 0, 0.60, 10.0), row("pce", 800, 1, 0.70, 20.0), row("pce", 800, 2, 0.50, 30.0),
            row("pscv", 800, 0, 0.65, 8.0), row("pscv", 800, 1, 0.72, 14.0),
            row("pscv", 800, 2, None, 900.0),  # no score: paired with nothing
            row("ms", 800, 0, 0.55, 12.0),  # one common seed: no interval
            row("pce", 3000, 0, 0.70)]  # pscv has no run at 3000: no line; em has no run at all
    text = comparisons_table(study, rows)
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(lines) == 2, text
    # by hand: d = (0.05, 0.02), mean 0.035, sd 0.03/√2, half 12.706 · 0.015 = 0.1906;
    # HD95 d = (-2, -6), mean -4, sd 4/√2, half 12.706 · 2 = 25.41
    assert lines[0] == ("| `pscv` − `pce` | 800 | 2 | +0.035 [-0.156, +0.226] | -4.0 [-29.4, +21.4] "
                        "| s0 +0.050, s1 +0.020 |")
    assert lines[1] == "| `pscv` − `ms` | 800 | 1 | +0.100 (n=1) | -4.0 (n=1) | s0 +0.100 |"
    assert "HD95 (px)" in text and "`strict` convention" in text
    assert comparisons_table(SimpleNamespace(comparisons=[], budgets=(800,)), rows) == ""


def test_a_pooled_side_scores_each_seed_by_the_mean_of_its_methods():
    study = SimpleNamespace(comparisons=[("pscv", ("pce", "nudged")), (("pscv", "ms"), ("pce", "nudged"))],
                            budgets=(800,))
    rows = [row("pce", 800, 0, 0.60, 10.0), row("pce", 800, 1, 0.70, 20.0), row("pce", 800, 2, 0.50, 30.0),
            row("nudged", 800, 0, 0.64, 14.0), row("nudged", 800, 1, 0.66, 16.0),  # no seed 2: the pool has none
            row("pscv", 800, 0, 0.65, 8.0), row("pscv", 800, 1, 0.72, 14.0), row("pscv", 800, 2, 0.55, 9.0),
            row("ms", 800, 0, 0.55, 12.0)]
    lines = [line for line in comparisons_table(study, rows).splitlines() if line.startswith("| `") or
             line.startswith("| mean")]
    # by hand: the pool is s0 (0.60 + 0.64) / 2 = 0.62, s1 (0.70 + 0.66) / 2 = 0.68 (HD95 12, 18);
    # pscv - pool: d = (0.03, 0.04), mean 0.035, sd 0.00707, half 12.706 · 0.005 = 0.0635; HD95 d = (-4, -4)
    assert lines[0] == ("| `pscv` − mean(`pce`, `nudged`) | 800 | 2 | +0.035 [-0.029, +0.099] | -4.0 [-4.0, -4.0] "
                        "| s0 +0.030, s1 +0.040 |")
    # both sides pooled: only seed 0 has ms, (0.65 + 0.55) / 2 - 0.62 = -0.02; HD95 (8 + 12) / 2 - 12 = -2
    assert lines[1] == "| mean(`pscv`, `ms`) − mean(`pce`, `nudged`) | 800 | 1 | -0.020 (n=1) | -2.0 (n=1) | s0 -0.020 |"
    assert len(lines) == 2


def test_the_main_table_pairs_dsc_and_hd95_against_the_reference_seed_by_seed():
    study = SimpleNamespace(methods=["pce", "pscv", "full"], reference="pce", upper="full", budgets=(800,), paper={})
    rows = [row("pce", 800, 0, 0.60, 20.0), row("pce", 800, 1, 0.70, 30.0), row("pce", 800, 2, 0.65, 25.0),
            row("pscv", 800, 0, None, None),  # run, nothing scored: counted as a seed, paired with nothing
            row("pscv", 800, 1, 0.72, 28.0), row("pscv", 800, 2, 0.68, 19.0),
            row("full", 800, 1, 0.90, 4.0), row("full", 800, 2, 0.80, 5.0)]
    text = tables(study, rows)
    strict = text.split("`literature` convention")[0]
    head = next(line for line in strict.splitlines() if line.startswith("| method"))
    assert "| Δ DSC vs pce [95% CI] | Δ HD95 (px) vs pce [95% CI] | gap closed |" in head
    cells = [c.strip() for c in next(line for line in strict.splitlines() if line.startswith("| `pscv`")).strip("|").split("|")]
    # by hand, seeds 1-2 (pairing by position would take pce's seeds 0-1): Δ DSC (0.02, 0.03): +0.025 ±
    # 12.706 · 0.00707 / √2 = 0.0635; Δ HD95 (-2, -6): -4.0 ± 12.706 · 2.828 / √2 = 25.41; gap closed
    # mean(0.02, 0.03) / mean(0.20, 0.15) = 14 % (seeds 1-2 of the 3)
    assert cells[:4] == ["`pscv`", "3", "0.700 ± 0.028", "23.5 ± 6.4"]
    assert cells[4:8] == ["+0.025 [-0.039, +0.089]", "-4.0 [-29.4, +21.4]", "+14% (n=2)", "1.0 ± 0.0"]
    pce = [c.strip() for c in next(line for line in strict.splitlines() if line.startswith("| `pce`")).strip("|").split("|")]
    assert pce[4:7] == ["—", "—", "—"]
    # a reference scored without any HD95 (every prediction empty): no Δ HD95, Δ DSC as before
    no_hd = [row("pce", 800, r["run"].seed, r["evals"]["strict"]["mean_dsc"], None) if r["run"].method == "pce" else r
             for r in rows]
    cells = [c.strip() for c in next(line for line in tables(study, no_hd).splitlines()
                                     if line.startswith("| `pscv`")).strip("|").split("|")]
    assert cells[4:6] == ["+0.025 [-0.039, +0.089]", "—"]
