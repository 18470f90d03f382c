"""The segmenter as an MLflow pyfunc model: one raw volume in, its label volume out.

What is logged (:func:`log_segmenter`): a :class:`Segmenter` whose only artifact is the pscv model
bundle (``model.pt``, written float32 by :func:`~pscv_dist.model.bundle.save_model`), with

* the signature ``float32 (Z, H, W) -> uint8 (Z, H, W)``, every dimension dynamic. The tensor
  spec is unnamed on purpose: a named one makes pyfunc hand ``predict`` a dict;
* the metadata ``{"pscv": {classes, normalization, size, model, ignore_index, pscv_version,
  input, output}}``.

``predict`` applies the training normalisation and slice size itself by calling
:func:`pscv_dist.eval.predict.segment`, the function ``pscv predict --checkpoint`` calls, so the
served, the loaded and the checkpoint predictions are one code path.

A volume of the wrong rank, dtype or size, or with NaN / inf voxels, raises
:class:`InvalidVolume`: a :class:`~pscv_dist.errors.DataError` (one line, exit 2 at the command
line) that is also an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which MLflow's scoring
server answers with HTTP 400. (The signature check that pyfunc runs before ``predict`` answers 400
for a wrong rank or dtype too.)
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import Schema, TensorSpec

from .. import __version__
from ..errors import DataError
from ..eval.predict import segment
from ..model.bundle import load_model, save_model

MODEL_NAME = "model"          # the logged model's name in its run (runs:/RUN_ID/model)
BUNDLE_ARTIFACT = "bundle"    # the key of model.pt among the pyfunc's artifacts
INTERFACE = "pscv-segmenter/1"
META_KEYS = ("classes", "normalization", "size", "model", "ignore_index")


class InvalidVolume(DataError, MlflowException):
    """A request the segmenter refuses: a DataError for the CLI, HTTP 400 for the scoring server."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def signature() -> ModelSignature:
    """``float32 (Z, H, W)`` -> ``uint8 (Z, H, W)``; unnamed specs, every dimension dynamic."""
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))


def segmenter_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What a consumer of the registered model needs to know, under the key ``pscv``."""
    info = {k: meta[k] for k in META_KEYS}
    info.update(pscv_version=__version__, interface=INTERFACE,
                input="one volume, float32 (Z, H, W) raw intensities, Z >= 1, any H and W",
                output="uint8 (Z, H, W) labels, indices into classes")
    return {"pscv": info}


def check_volume(volume: Any) -> np.ndarray:
    """The one volume a request must be: a float32 ndarray (Z, H, W), no empty axis, finite.

    Raises:
        InvalidVolume: anything else, saying what was expected and what was found.
    """
    expected = "expected one volume as a float32 array of shape (Z, H, W)"
    if not isinstance(volume, np.ndarray):
        raise InvalidVolume(f"segmenter input: {expected}, found a {type(volume).__name__}")
    if volume.ndim != 3:
        raise InvalidVolume(f"segmenter input: {expected}, found {volume.ndim} dimension(s) {volume.shape}")
    if volume.dtype != np.float32:
        raise InvalidVolume(f"segmenter input: {expected}, found dtype {volume.dtype}")
    if 0 in volume.shape:
        raise InvalidVolume(f"segmenter input: {expected} with Z, H, W >= 1, found shape {volume.shape}")
    if not np.isfinite(volume).all():
        bad = int((~np.isfinite(volume)).sum())
        raise InvalidVolume(f"segmenter input: {bad} voxel(s) are NaN or inf; expected finite intensities")
    return volume


class Segmenter(mlflow.pyfunc.PythonModel):
    """The pyfunc model: rebuilds the UNet from the bundle, predicts through :func:`segment`."""

    # The input is validated by the explicit signature (and check_volume), not by type hints:
    # this tells MLflow not to wrap predict for type-hint validation (and not to warn that there
    # are none). pyfunc's signature enforcement is unaffected.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.model, self.meta = load_model(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input, params=None):
        return segment(self.model, self.meta, check_volume(model_input))


def pip_requirements() -> list[str]:
    """Pinned to this environment (explicit, so MLflow does not load the model to infer them)."""
    import importlib.metadata as md

    pins = []
    for dist in ("mlflow", "torch", "numpy", "scipy", "nibabel"):
        try:
            pins.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    return pins + [f"pscv-dist=={__version__}"]


def log_segmenter(model: torch.nn.Module, meta: dict[str, Any], tmp: str | os.PathLike,
                  registered_model_name: str | None = None):
    """Log ``model`` as the pyfunc :class:`Segmenter` of the ACTIVE run (a float32 CPU copy of its
    weights, written to ``tmp/model.pt``; the module itself is not touched). Returns the
    ``ModelInfo``; with ``registered_model_name`` it is also registered as a new version."""
    bundle = save_model(Path(tmp) / "model.pt", model, meta)
    with warnings.catch_warnings():
        # an input example would run the model at logging time; the signature says it all
        warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=Segmenter(), artifacts={BUNDLE_ARTIFACT: str(bundle)},
            signature=signature(), metadata=segmenter_metadata(meta), pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name)
