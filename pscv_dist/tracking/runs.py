"""Evaluation results into an MLflow run: the active one, or a finished training run re-opened."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator


def known(values: dict[str, Any]) -> dict[str, float]:
    """The entries that are real numbers (None, NaN and inf are unknown and are not logged)."""
    out = {}
    for k, v in values.items():
        if v is None or isinstance(v, bool):
            continue
        v = float(v)
        if math.isfinite(v):
            out[k] = v
    return out


def evaluation_metrics(results: dict[str, Any], prefix: str) -> dict[str, float]:
    """``{prefix}_mean_dsc``, ``{prefix}_mean_hd95`` and ``{prefix}_dsc_<class>``, unknown ones left out."""
    values = {f"{prefix}_mean_dsc": results.get("mean_dsc"), f"{prefix}_mean_hd95": results.get("mean_hd95")}
    values.update({f"{prefix}_dsc_{k}": v.get("dsc") for k, v in results.get("per_class", {}).items()})
    return known(values)


def log_evaluation(results: dict[str, Any], plots: list[str] | tuple[str, ...] = (), prefix: str = "eval") -> bool:
    """Log evaluation metrics and plot files to the ACTIVE MLflow run; False when none is active."""
    import mlflow

    if mlflow.active_run() is None:
        return False
    mlflow.log_metrics(evaluation_metrics(results, prefix))
    for p in plots:
        mlflow.log_artifact(p, artifact_path="evaluation")
    return True


@contextlib.contextmanager
def attach_run(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Re-open a finished run (e.g. the training run, to add its evaluation) for the ``with`` body."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        yield
