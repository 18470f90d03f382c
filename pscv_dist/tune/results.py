"""The results of a search, in ``--out``: one row per trial, the best config, a plot.

- ``results.csv`` / ``results.md``: trial id, the searched values, best validation DSC (and the
  step it was reached at), HD95 there, steps run, stopped by ASHA or not, wall time, error;
- ``best_config.yaml``: the full config of the best trial, which ``pscv train --config`` runs as is
  (``train.out_dir`` = ``<out>/best_run``);
- ``dsc_vs_params.png``: best DSC against each searched number (λ_cv and τ by default);
- ``results.json``: the same, for programs.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from ..config import from_dict
from ..files import write_json_atomic



def _num(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def trial_rows(plan, grid) -> list[dict[str, Any]]:
    """One dict per trial of a Tune ``ResultGrid``."""
    keys = plan.space.keys
    rows = []
    for r in grid:
        path = Path(r.path)
        trial_id = (r.metrics or {}).get("trial_id") or path.name
        config = r.config
        if config is None and (path / "params.json").is_file():
            config = json.loads((path / "params.json").read_text())
        df = r.metrics_dataframe
        best = steps = hd95 = best_step = wall = startup = None
        if df is not None and len(df) and "val_mean_dsc" in df:
            steps = int(df["step"].max())
            vals = df["val_mean_dsc"].astype(float)
            if vals.notna().any():
                i = vals.idxmax()
                best, best_step = float(vals[i]), int(df["step"][i])
                hd95 = _num(df["val_mean_hd95"][i]) if "val_mean_hd95" in df else None
            wall = _num(df["trial_wall_s"].max()) if "trial_wall_s" in df else None
            startup = _num(df["startup_s"].iloc[0]) if "startup_s" in df else None
        error = None if r.error is None else " ".join(str(r.error).split())[-300:]
        stopped = (plan.opts.scheduler == "asha" and error is None and steps is not None and steps < plan.iterations)
        rows.append({"trial_id": trial_id, **{k: (config or {}).get(k) for k in keys},
                     "best_dsc": best, "best_step": best_step, "hd95_at_best": hd95, "steps": steps,
                     "stopped": bool(stopped), "wall_s": wall, "startup_s": startup, "error": error})
    rows.sort(key=lambda x: (x["best_dsc"] is None, -(x["best_dsc"] or 0.0), x["trial_id"]))
    return rows


def best_config(plan, row: dict[str, Any]) -> dict[str, Any]:
    """The full config dict of a trial, ready for ``pscv train --config``."""
    raw = {k: dict(v or {}) for k, v in plan.raw.items()}
    for key in plan.space.keys:
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = row[key]
    cfg = from_dict(raw).to_dict()  # validated; every key written out
    cfg["train"]["out_dir"] = str(plan.out / "best_run")
    cfg["tracking"]["run_name"] = None
    return cfg


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        w.writeheader()
        w.writerows(rows)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def _write_md(rows: list[dict[str, Any]], keys: list[str], path: Path, order_note: str | None = None) -> None:
    cols = ["trial_id", *keys, "best_dsc", "best_step", "hd95_at_best", "steps", "stopped", "wall_s", "error"]
    head = ["trial", *keys, "best DSC", "at step", "HD95 there", "steps run", "stopped by ASHA", "wall (s)", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", f"The answer may not repeat: {order_note}."] if order_note else []
    path.write_text("\n".join(lines) + "\n")


def _plot(rows: list[dict[str, Any]], plan, path: Path) -> bool:
    """Best DSC against each numeric searched value; ASHA-stopped trials hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in plan.space.params
              if p.type in ("uniform", "loguniform", "randint") or all(_num(v) is not None for v in p.values)]
    done = [r for r in rows if r["best_dsc"] is not None]
    if not params or not done:
        return False
    fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.8), squeeze=False)
    for ax, p in zip(axes[0], params):
        for stopped, style in ((False, dict(c="C0", label="ran to the end")),
                               (True, dict(facecolors="none", edgecolors="C3", label="stopped by ASHA"))):
            pts = [(float(r[p.key]), r["best_dsc"]) for r in done if r["stopped"] == stopped]
            if pts:
                ax.scatter(*zip(*pts), **style)
        if p.type == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(p.key)
        ax.set_ylabel("best validation DSC")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(plan, grid, wall_s: float, complete: bool = True, order_note: str | None = None) -> dict[str, Any]:
    """Write every result file into ``plan.out``; returns the summary (also ``results.json``).

    A search stopped midway (``complete`` False) gets its tables, marked so, but no
    ``best_config.yaml``: its best so far is not the search's answer. ``order_note`` says why the
    answer may not repeat (:func:`.search.order_dependence`); ``repeatable`` is its absence."""
    out = plan.out
    rows = trial_rows(plan, grid)
    files = ["results.csv", "results.md", "results.json"]
    _write_csv(rows, out / "results.csv")
    _write_md(rows, plan.space.keys, out / "results.md", order_note)
    best = rows[0] if rows and rows[0]["best_dsc"] is not None else None
    if best is not None and complete:
        cfg = best_config(plan, best)
        text = (f"# best trial {best['trial_id']} of the search in {out}: validation DSC {best['best_dsc']:.4f} "
                f"at step {best['best_step']}\n# train it: pscv train --config {out / 'best_config.yaml'}\n")
        (out / "best_config.yaml").write_text(text + yaml.safe_dump(cfg, sort_keys=False))
        files.append("best_config.yaml")
    if _plot(rows, plan, out / "dsc_vs_params.png"):
        files.append("dsc_vs_params.png")
    summary = {"trials": rows, "best": best, "complete": complete, "repeatable": order_note is None,
               "order_note": order_note, "wall_s": wall_s, "files": files, "out": str(out)}
    write_json_atomic(summary, out / "results.json")
    return summary
