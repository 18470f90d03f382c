"""MLflow runs of a hyper-parameter search: one parent run per search, one child run per trial.

The driver prepares the store (database schema, experiment, parent run) before any trial starts:
trials that each create a sqlite database race on its schema migration. Each trial then gets ONE
child run, found again by its trial id on every restart (``get_or_create_child``), and the trial's
trainer logs into it (``MLFLOW_RUN_ID``). The parent run id lives in the search folder, so
``pscv tune --resume`` reopens the same parent and never duplicates a child. Ray's own
``MLflowLoggerCallback`` keeps its trial -> run map in memory and would open new children after a
restore, which is why it is not used.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import absolute_local, write_json_atomic

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "pscv.trial_id"
SEARCH_TAG = "pscv.search"
RUN_FILE = "mlflow_run.json"  # in a trial's folder: {"run_id": ...}


def search_tracking(out: str | Path, tracking_uri: str | None, artifact_location: str | None) -> tuple[str, str]:
    """The tracking URI and artifact location of a search: the config's, else ``sqlite:///<out>/mlflow.db``
    and ``<out>/mlartifacts`` (the defaults of ``pscv train``, under the search folder). Relative local
    paths are made absolute: the trials run in their own folders."""
    out = Path(out).resolve()
    if tracking_uri and tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = f"sqlite:///{absolute_local(tracking_uri.removeprefix('sqlite:///'))}"  # trials run elsewhere
    if artifact_location and "://" not in artifact_location:
        artifact_location = Path(absolute_local(artifact_location)).as_uri()
    return (tracking_uri or f"sqlite:///{out / 'mlflow.db'}",
            artifact_location or (out / "mlartifacts").as_uri())


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, experiment: str, artifact_location: str) -> str:
    """Create the store's schema and the experiment once, before parallel runs or trials start
    (several processes creating one sqlite store race on its migration). Returns its id.

    Raises:
        ConfigError: the tracking store cannot be reached or written.
    """
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        return exp.experiment_id if exp is not None else client.create_experiment(
            experiment, artifact_location=artifact_location)
    except Exception as exc:
        raise ConfigError(f"MLflow tracking {uri}: cannot prepare the experiment {experiment!r} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def start_parent(uri: str, artifact_location: str, experiment: str, search_dir: str | Path, name: str,
                 params: dict[str, Any]) -> tuple[str, str]:
    """Create (or, on resume, find again) the experiment and the search's parent run.

    The parent run id is kept in ``<search_dir>/search_run.json``. Returns (experiment id, parent run id).

    Raises:
        ConfigError: the tracking store cannot be reached or written.
    """
    record = Path(search_dir) / "search_run.json"
    exp_id = ensure_experiment(uri, experiment, artifact_location)
    try:
        client = _client(uri)
        if record.is_file():
            run_id = json.loads(record.read_text())["run_id"]
            client.update_run(run_id, status="RUNNING")
            return exp_id, run_id
        run = client.create_run(exp_id, run_name=name, tags={SEARCH_TAG: "parent"})
        for k, v in params.items():
            client.log_param(run.info.run_id, k, str(v)[:6000])
    except Exception as exc:
        raise ConfigError(f"MLflow tracking {uri}: cannot prepare the search's experiment {experiment!r} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    write_json_atomic({"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": uri},
                      record)
    return exp_id, run.info.run_id


def get_or_create_child(uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_dir: str | Path) -> str:
    """The child run of a trial: the one recorded in its folder, else one tagged with its trial id,
    else a new one (recorded before it is used). Called in the trial, on every (re)start."""
    record = Path(trial_dir) / RUN_FILE
    if record.is_file():
        return json.loads(record.read_text())["run_id"]
    client = _client(uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                                                              f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    run_id = found[0].info.run_id if found else client.create_run(
        experiment_id, run_name=trial_id, tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id}).info.run_id
    Path(trial_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic({"run_id": run_id, "parent_run_id": parent_run_id, "trial_id": trial_id}, record)
    return run_id


def use_run(run_id: str) -> None:
    """Make the next ``mlflow.start_run()`` in this process (the trainer's) open ``run_id``."""
    os.environ["MLFLOW_RUN_ID"] = run_id


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of a parent (MLflow ``Run`` objects)."""
    return _client(uri).search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                    max_results=10000)


def finish_parent(uri: str, parent_run_id: str, metrics: dict[str, float], artifacts: list[str | Path],
                  status: str = "FINISHED") -> None:
    """Log the search's summary metrics and result files to the parent run and close it."""
    client = _client(uri)
    for k, v in metrics.items():
        client.log_metric(parent_run_id, k, float(v))
    for path in artifacts:
        if Path(path).is_file():
            client.log_artifact(parent_run_id, str(path), artifact_path="search")
    client.set_terminated(parent_run_id, status=status)
