"""The training run in MLflow, on rank 0.

Default store: a local sqlite database ``sqlite:///<out_dir>/mlflow.db`` with an explicit artifact
folder (``<out_dir>/mlartifacts``), so nothing lands in a stray ``./mlruns``. If the tracking server
is unreachable or a call fails, one warning is logged and training goes on with its local logs.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from .runs import known

log = logging.getLogger(__name__)


class Tracker:
    """A no-op on ranks other than 0 and when disabled; never raises into the training loop."""

    def __init__(self, cfg, out_dir: str, enabled: bool, params: dict[str, Any], resume_run_id: str | None = None):
        self.cfg, self.active, self.run_id, self.uri = cfg, False, None, None
        if not enabled:
            return
        try:
            import mlflow

            self.mlflow = mlflow
            out = Path(out_dir).resolve()
            uri = cfg.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
            mlflow.set_tracking_uri(uri)
            exp = mlflow.get_experiment_by_name(cfg.experiment)
            if exp is None:
                artifacts = cfg.artifact_location or (out / "mlartifacts").as_uri()
                mlflow.create_experiment(cfg.experiment, artifact_location=artifacts)
            mlflow.set_experiment(cfg.experiment)
            run = mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else cfg.run_name)
            self.run_id, self.active, self.uri = run.info.run_id, True, uri
            if resume_run_id is None:
                mlflow.log_params({k: str(v) for k, v in params.items()})
        except Exception as exc:  # unreachable server, bad URI, schema problems
            self._disable(exc)

    def _disable(self, exc: Exception) -> None:
        if self.active or self.run_id is None:
            log.warning("MLflow tracking unavailable, training continues with local logs only: %s: %s",
                        type(exc).__name__, exc)
        self.active = False

    def _call(self, fn, *args, **kwargs):
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self._disable(exc)
            return None

    def metrics(self, values: dict[str, Any], step: int) -> None:
        """Log the known values (None / NaN / inf are left out, never written as 0)."""
        values = known(values)
        if values:
            self._call(lambda: self.mlflow.log_metrics(values, step=step))

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._call(lambda: self.mlflow.log_artifact(path, artifact_path=artifact_path))

    def log_model(self, model: torch.nn.Module, meta: dict[str, Any], register_as: str | None) -> None:
        """Log the segmenter as an MLflow pyfunc model (``runs:/RUN_ID/model``, see
        :mod:`.pyfunc`) and the raw model bundle as the artifact ``checkpoint/model.pt``; with
        ``register_as``, register it as a new version of that model (``models:/NAME@latest``
        resolves to the newest version: MLflow reserves that alias; ``pscv register`` moves real
        ones). Both hold a float32 CPU copy of the weights: the live training module is not moved,
        cast or switched to eval mode."""
        def do():
            from .pyfunc import log_segmenter

            with tempfile.TemporaryDirectory() as tmp:
                info = log_segmenter(model, meta, tmp, registered_model_name=register_as)
                self.mlflow.log_artifact(str(Path(tmp) / "model.pt"), artifact_path="checkpoint")
            return info
        return self._call(do)

    def end(self, status: str = "FINISHED") -> None:
        self._call(lambda: self.mlflow.end_run(status=status))
        self.active = False
