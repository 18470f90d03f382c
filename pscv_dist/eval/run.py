"""``pscv evaluate``: load a checkpoint, evaluate a split (distributed under torchrun), write
results.json (atomically, rank 0), print the table, draw the plots, log to an active MLflow run."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..checkpoint import load_model
from ..data import SliceStore
from ..distributed import init_distributed, shutdown
from .evaluate import check_compatible, evaluate
from .report import box_plot, markdown_table, overlays


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
    return path


def run_evaluation(checkpoint: str, store_path: str, split: str, convention: str = "strict", edge_pixels: int = 0,
                   out: str | None = None, plots: str | None = None, progress: bool = True) -> dict[str, Any] | None:
    state = init_distributed()
    try:
        model, meta = load_model(checkpoint, map_location=state.device)
        model.to(state.device)
        store = SliceStore(store_path)
        check_compatible(meta, store, where=str(checkpoint))
        results = evaluate(model, store, store.split(split), meta["size"], convention, edge_pixels, state,
                           device=state.device, progress=progress, keep_predictions=plots is not None)
        if not state.is_main:
            return None
        preds = results.pop("_predictions", {})
        results.update({"checkpoint": str(checkpoint), "split": split, "store": store_path})
        if plots:
            Path(plots).mkdir(parents=True, exist_ok=True)
            # rank 0 holds only its own predictions; overlay the best / worst among them
            results["plots"] = [str(box_plot(results, Path(plots) / "dsc_boxplot.png"))]
            results["plots"] += [str(p) for p in overlays(store, preds, results, plots)]
        if out:
            write_json_atomic(results, out)
        _log_to_active_mlflow_run(results)
        print(markdown_table(results))
        return results
    finally:
        shutdown(state)


def _log_to_active_mlflow_run(results: dict[str, Any]) -> None:
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_metric("eval_mean_dsc", results["mean_dsc"] or 0.0)
    mlflow.log_metric("eval_mean_hd95", results["mean_hd95"] or 0.0)
    for p in results.get("plots", []):
        mlflow.log_artifact(p, artifact_path="evaluation")
