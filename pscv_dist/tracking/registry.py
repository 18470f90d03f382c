"""Tracking URIs and the model registry: check where a model is read from, then load it.

Reading from a registry must never create one: MLflow opens ``sqlite:///x.db`` by creating an
empty database when the file is missing, so a mistyped path would "work" and then report that
the model does not exist. :func:`check_tracking_uri` refuses such a URI first.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..model.bundle import load_model

MODEL_URI_SCHEMES = ("models:/", "runs:/")


def _sqlite_path(uri: str) -> Path:
    # sqlite:///relative/x.db -> relative/x.db ; sqlite:////abs/x.db -> /abs/x.db (SQLAlchemy's form)
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def check_tracking_uri(uri: str, must_exist: bool = True) -> str:
    """Refuse a local tracking store that does not exist when it must (reading a registry).

    Raises:
        ConfigError: ``sqlite:///PATH`` whose file is missing, or a local folder store that is missing.
    """
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            raise ConfigError(f"tracking URI {uri!r}: expected sqlite:///RELATIVE/PATH.db or sqlite:////ABSOLUTE/PATH.db")
        path = _sqlite_path(uri)
        if must_exist and not path.is_file():
            raise ConfigError(f"tracking URI {uri}: no MLflow database at {path} (expected an existing .db file; "
                              f"nothing was created)")
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(uri.removeprefix("file://"))
        if must_exist and not path.is_dir():
            raise ConfigError(f"tracking URI {uri}: no MLflow file store at {path} (expected an existing folder)")
    return uri


def load_registered_model(model_uri: str, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model from the registry (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``runs:/ID/model``): the pscv bundle logged beside it is rebuilt as a UNet, so prediction uses
    the training normalisation and size.

    Args:
        tracking_uri: where the registry lives; default ``$MLFLOW_TRACKING_URI``.

    Raises:
        ConfigError: a malformed model URI, or no tracking URI / a missing local store.
        DataError: the model is not in the registry.
    """
    import mlflow

    if not model_uri.startswith(MODEL_URI_SCHEMES):
        raise ConfigError(f"--model-uri {model_uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(f"--model-uri {model_uri}: no tracking URI; pass --tracking-uri (e.g. "
                          f"sqlite:///runs/x/mlflow.db or http://host:5000) or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(check_tracking_uri(uri, must_exist=True))
    try:
        info = mlflow.models.get_model_info(model_uri)
        local = mlflow.artifacts.download_artifacts(f"runs:/{info.run_id}/checkpoint/model.pt")
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        raise DataError(f"{model_uri}: model not found in the MLflow registry at {uri} ({type(exc).__name__}: {first})") from None
    return load_model(local)
