"""MLflow tracking on rank 0, and loading models back from the registry.

Default: a local sqlite store ``sqlite:///<out_dir>/mlflow.db`` with an explicit artifact folder
(``<out_dir>/mlartifacts``), so nothing lands in a stray ``./mlruns``. If the tracking server is
unreachable or a call fails, one warning is logged and training goes on with local logs only.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_model, save_model

log = logging.getLogger(__name__)


class Tracker:
    """A no-op on ranks other than 0 and when disabled; never raises into the training loop."""

    def __init__(self, cfg, out_dir: str, enabled: bool, params: dict[str, Any], resume_run_id: str | None = None):
        self.cfg, self.active, self.run_id = cfg, False, None
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

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._call(lambda: self.mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step))

    def figure(self, fig, name: str) -> None:
        self._call(lambda: self.mlflow.log_figure(fig, name))

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._call(lambda: self.mlflow.log_artifact(path, artifact_path=artifact_path))

    def log_model(self, model: torch.nn.Module, meta: dict[str, Any], register_as: str | None) -> None:
        """Log the model (MLflow's pt2 format; batch and H, W left dynamic), its pscv metadata and
        the raw checkpoint bundle; register it and point the alias ``latest`` at the new version."""
        def do():
            import numpy as np
            from mlflow.models import ModelSignature
            from mlflow.types import Schema, TensorSpec

            model_cpu = model.to("cpu").eval()
            s = meta["size"]
            sig = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),
                                 outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, meta["model"]["num_classes"], -1, -1))]))
            info = self.mlflow.pytorch.log_model(model_cpu, name="model", signature=sig,
                                                 input_example=torch.zeros(2, 1, s, s).numpy(),
                                                 metadata={"pscv": meta}, registered_model_name=register_as)
            with tempfile.TemporaryDirectory() as tmp:
                bundle = save_model(Path(tmp) / "model.pt", model_cpu, meta)
                self.mlflow.log_artifact(str(bundle), artifact_path="checkpoint")
            if register_as and info.registered_model_version:
                self.mlflow.MlflowClient().set_registered_model_alias(register_as, "latest", info.registered_model_version)
            return info
        return self._call(do)

    def end(self, status: str = "FINISHED") -> None:
        self._call(lambda: self.mlflow.end_run(status=status))
        self.active = False


def load_registered_model(model_uri: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model from the registry (``models:/NAME@ALIAS`` or ``runs:/ID/model``): the pscv bundle logged
    beside it is rebuilt as a UNet, so prediction uses the training normalisation and size."""
    import mlflow

    try:
        info = mlflow.models.get_model_info(model_uri)
        run_uri = f"runs:/{info.run_id}/checkpoint/model.pt"
        local = mlflow.artifacts.download_artifacts(run_uri)
    except Exception as exc:
        raise ValueError(f"{model_uri}: model not found in the MLflow registry at {mlflow.get_tracking_uri()} "
                         f"({type(exc).__name__}: {exc})") from None
    return load_model(local)
