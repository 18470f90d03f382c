"""Tracking URIs and the model registry: register a run's segmenter, move aliases, load it back.

Reading from a registry must never create one: MLflow opens ``sqlite:///x.db`` by creating an
empty database when the file is missing, so a mistyped path would "work" and then report that
the model does not exist. :func:`check_tracking_uri` refuses such a URI first; every function
here goes through it.

Models are addressed by alias only (``models:/NAME@champion``); MLflow's stages are deprecated.
``latest`` is reserved by MLflow (it always means the newest version) and cannot be set, nor can
an alias that looks like a version (``v3``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError

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


ALIAS = re.compile(r"^[A-Za-z0-9_\-]+$")
DEFAULT_ALIAS = "champion"
DEFAULT_METRIC = "val_mean_dsc"


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {' '.join(str(text).split())[:200]}"


def _connect(tracking_uri: str | None, what: str) -> str:
    """Point MLflow at ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``), which must exist."""
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(f"{what}: no tracking URI; pass --tracking-uri (e.g. sqlite:///runs/x/mlflow.db "
                          f"or http://host:5000) or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(check_tracking_uri(uri, must_exist=True))
    return uri


def check_alias(alias: str) -> str:
    """An alias pscv may set: letters, digits, ``_`` and ``-``; not ``latest``, not ``v<digits>``."""
    if alias.lower() == "latest":
        raise ConfigError(f"--alias {alias}: 'latest' is reserved by MLflow (it always resolves to the newest "
                          f"version and cannot be moved); choose another alias, e.g. {DEFAULT_ALIAS}")
    if not ALIAS.match(alias):
        raise ConfigError(f"--alias {alias!r}: expected letters, digits, '_' or '-' only")
    if re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(f"--alias {alias}: names of the form v<number> are reserved by MLflow for versions")
    return alias


@dataclass(frozen=True)
class Registration:
    """What :func:`register_run` / :func:`promote` did."""
    name: str
    version: str
    alias: str
    run_id: str | None
    model_uri: str  # models:/NAME@ALIAS

    def describe(self) -> str:
        run = f" (run {self.run_id})" if self.run_id else ""
        return f"{self.model_uri} -> {self.name} version {self.version}{run}"


def _get_run(client, run_id: str, uri: str):
    try:
        return client.get_run(run_id)
    except Exception as exc:
        raise DataError(f"--run {run_id}: no such run in the MLflow store at {uri} ({_first_line(exc)})") from None


def _is_segmenter_info(info) -> bool:
    from .pyfunc import INTERFACE

    return ((info.metadata or {}).get("pscv") or {}).get("interface") == INTERFACE


def _is_segmenter(model_uri: str) -> bool:
    import mlflow

    try:
        return _is_segmenter_info(mlflow.models.get_model_info(model_uri))
    except Exception:  # a logged model without an MLmodel file (its logging failed) is not one
        return False


def segmenter_of_run(run_id: str, experiment_id: str) -> str | None:
    """``models:/<model id>`` of the newest pscv segmenter logged by the run, None if it has none."""
    import mlflow

    models = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    for m in sorted(models, key=lambda m: m.creation_timestamp or 0, reverse=True):
        if _is_segmenter(f"models:/{m.model_id}"):
            return f"models:/{m.model_id}"
    return None


def best_run(experiment: str, metric: str = DEFAULT_METRIC, minimize: bool = False,
             tracking_uri: str | None = None) -> tuple[str, float]:
    """The finished run of ``experiment`` with the best value of ``metric`` (its last logged value;
    highest unless ``minimize``) among those that logged a pscv segmenter: ``(run_id, value)``.

    Raises:
        DataError: no such experiment, no finished run, no finished run with the metric, or none of
            those runs has a segmenter model.
    """
    import math

    import mlflow

    uri = _connect(tracking_uri, f"--best-of {experiment}")
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise DataError(f"--best-of {experiment}: no such experiment in the MLflow store at {uri}")
    runs = mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              output_format="list", max_results=5000)
    if not runs:
        raise DataError(f"--best-of {experiment}: the experiment has no finished run (expected at least one "
                        f"training run that ended)")
    scored = [(r.data.metrics[metric], r.info.run_id) for r in runs
              if metric in r.data.metrics and math.isfinite(r.data.metrics[metric])]
    if not scored:
        raise DataError(f"--best-of {experiment}: none of its {len(runs)} finished run(s) logged the metric "
                        f"{metric!r} (--metric)")
    scored.sort(key=lambda t: t[0], reverse=not minimize)
    for value, run_id in scored:
        if segmenter_of_run(run_id, exp.experiment_id):
            return run_id, value
    raise DataError(f"--best-of {experiment}: none of the {len(scored)} finished run(s) with {metric!r} logged a "
                    f"pscv segmenter model (expected runs of pscv train that finished)")


def register_run(run_id: str, name: str, alias: str = DEFAULT_ALIAS,
                 tracking_uri: str | None = None) -> Registration:
    """Register the run's pyfunc segmenter as a new version of ``name`` and point ``alias`` at it.

    Raises:
        ConfigError: a reserved or malformed alias, no tracking URI, a missing local store.
        DataError: an unknown run, or a run that logged no pscv segmenter.
    """
    import mlflow

    check_alias(alias)
    uri = _connect(tracking_uri, f"--run {run_id}")
    client = mlflow.MlflowClient()
    run = _get_run(client, run_id, uri)
    source = segmenter_of_run(run_id, run.info.experiment_id)
    if source is None:
        raise DataError(f"--run {run_id}: the run logged no pscv segmenter model (expected a finished "
                        f"pscv train run; found status {run.info.status})")
    try:
        version = mlflow.register_model(source, name)
    except Exception as exc:
        raise DataError(f"--name {name}: registering {source} failed ({_first_line(exc)})") from None
    client.set_registered_model_alias(name, alias, version.version)
    return Registration(name, str(version.version), alias, run_id, f"models:/{name}@{alias}")


def promote(name: str, version: str | int, alias: str = DEFAULT_ALIAS,
            tracking_uri: str | None = None) -> Registration:
    """Point ``alias`` of the registered model ``name`` at an existing ``version``.

    Raises:
        ConfigError: a reserved or malformed alias, no tracking URI, a missing local store.
        DataError: no such registered model, or no such version of it.
    """
    import mlflow

    check_alias(alias)
    uri = _connect(tracking_uri, f"--name {name}")
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:
        raise DataError(f"--name {name}: no registered model of that name in the MLflow registry at {uri}") from None
    try:
        mv = client.get_model_version(name, str(version))
    except Exception:
        known = sorted((int(v.version) for v in client.search_model_versions(f"name = '{name}'")))
        raise DataError(f"--version {version}: model {name} has no such version (found {known})") from None
    client.set_registered_model_alias(name, alias, mv.version)
    return Registration(name, str(mv.version), alias, mv.run_id, f"models:/{name}@{alias}")


def load_registered_model(model_uri: str, tracking_uri: str | None = None):
    """The pyfunc segmenter at ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``runs:/ID/model``: ``predict(float32 (Z, H, W) raw volume) -> uint8 (Z, H, W)``, through the
    same :func:`~pscv_dist.eval.predict.segment` as ``pscv predict --checkpoint``.

    Args:
        tracking_uri: where the registry lives; default ``$MLFLOW_TRACKING_URI``.

    Raises:
        ConfigError: a malformed model URI, or no tracking URI / a missing local store.
        DataError: the model is not in the registry, or is not a pscv segmenter.
    """
    import mlflow

    if not model_uri.startswith(MODEL_URI_SCHEMES):
        raise ConfigError(f"--model-uri {model_uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model")
    uri = _connect(tracking_uri, f"--model-uri {model_uri}")
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as exc:
        raise DataError(f"{model_uri}: model not found in the MLflow registry at {uri} ({_first_line(exc)})") from None
    if not _is_segmenter_info(info):
        raise DataError(f"{model_uri}: not a pscv segmenter (expected a pyfunc model with pscv metadata; "
                        f"models logged before pscv logged pyfunc segmenters cannot be served)")
    return mlflow.pyfunc.load_model(model_uri)
