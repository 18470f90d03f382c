"""A real MLflow store on sqlite with logged segmenters, built once per test module that imports
:func:`mlflow_store` (logging a pyfunc model costs a few seconds)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from pscv_dist.config import TrackingConfig
from pscv_dist.model import UNet
from pscv_dist.model.bundle import model_meta, save_model
from pscv_dist.tracking import Tracker

CLASSES = ["bg", "a", "b"]


@dataclass
class Store:
    uri: str
    root: Path
    runs: dict[str, str] = field(default_factory=dict)         # label -> run id
    checkpoints: dict[str, Path] = field(default_factory=dict)  # label -> model.pt of the same weights
    live: dict[str, tuple] = field(default_factory=dict)        # label -> (module, its state before logging)


def _net(seed: int) -> UNet:
    torch.manual_seed(seed)
    net = UNet(1, len(CLASSES), 4, 2)
    with torch.no_grad():  # a visibly non-constant segmentation from untrained weights
        net.head.bias.copy_(torch.tensor([0.0, 0.05, -0.05]))
    return net


def _train_run(store: Store, label: str, net: torch.nn.Module, dsc: float, experiment: str) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tracker = Tracker(TrackingConfig(experiment=experiment), str(store.root), True, {"seed": label})
    assert tracker.active, "MLflow on a local sqlite store must start"
    meta = model_meta(net, CLASSES, 16, {"mode": "mr"}, len(CLASSES))
    tracker.metrics({"val_mean_dsc": dsc}, step=1)
    assert tracker.log_model(net, meta, None) is not None
    assert tracker.active, "logging the model must not have failed (and switched tracking off)"
    tracker.end()
    store.uri = tracker.uri
    store.runs[label] = tracker.run_id
    store.checkpoints[label] = save_model(store.root / f"ckpt_{label}.pt", net, meta)
    store.live[label] = (net, before)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> Store:
    """Experiment ``train``: run A (a bf16-cast module in training mode, as DeepSpeed's bf16 mode
    trains; val_mean_dsc 0.6), run B (0.8), run C (0.9 but no model: finished, never logged one) and
    a failed run. Experiment ``failed-only``: one failed run. Experiment ``no-metric``: one
    finished run without metrics."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    store = Store(uri="", root=root)
    _train_run(store, "A", _net(1).to(torch.bfloat16).train(), 0.6, "train")
    _train_run(store, "B", _net(2).eval(), 0.8, "train")
    mlflow.set_tracking_uri(store.uri)
    for experiment, label, dsc, status in (("train", "C", 0.9, "FINISHED"), ("train", "F", 0.99, "FAILED"),
                                           ("failed-only", "F2", 0.5, "FAILED"), ("no-metric", "N", None, "FINISHED")):
        mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            if dsc is not None:
                mlflow.log_metric("val_mean_dsc", dsc)
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
        store.runs[label] = run.info.run_id
    return store


def volume(shape=(5, 40, 48), seed: int = 0) -> np.ndarray:
    """Raw float32 intensities with structure (a bright disc on a ramp)."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2) * 300.0
    vol = disc[None] + xx[None] * 2.0 + rng.normal(0, 20, (z, h, w))
    return vol.astype(np.float32)
