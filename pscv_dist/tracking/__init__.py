"""Every MLflow call of pscv-dist lives in this package.

- :class:`Tracker` (:mod:`.tracker`): the training run on rank 0 (params, metrics, overlays, the
  logged and registered model); never raises into the training loop.
- :mod:`.registry`: tracking-URI checks and loading a model back from the registry.
- :func:`log_evaluation` / :func:`attach_run` (:mod:`.runs`): evaluation results into a run.

Unknown values (a class absent from every validation case, a DSC that is undefined) are not
logged at all: MLflow metrics are numbers, and a 0 would read as a real, terrible score.
"""
from .registry import check_tracking_uri, load_registered_model
from .runs import attach_run, log_evaluation
from .tracker import Tracker

__all__ = ["Tracker", "attach_run", "check_tracking_uri", "load_registered_model", "log_evaluation"]
