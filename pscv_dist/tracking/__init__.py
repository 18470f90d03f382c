"""Every MLflow call of pscv-dist lives in this package.

- :class:`Tracker` (:mod:`.tracker`): the training run on rank 0 (params, metrics, overlays, the
  logged and registered model); never raises into the training loop.
- :mod:`.pyfunc`: the segmenter as an MLflow pyfunc model (float32 (Z, H, W) raw volume in,
  uint8 labels out), the one thing logged, registered, loaded and served.
- :mod:`.registry`: tracking-URI checks, registering a run's segmenter (``pscv register``),
  moving aliases, and loading the segmenter back from the registry.
- :func:`log_evaluation` / :func:`attach_run` (:mod:`.runs`): evaluation results into a run.

Unknown values (a class absent from every validation case, a DSC that is undefined) are not
logged at all: MLflow metrics are numbers, and a 0 would read as a real, terrible score.
"""
from .registry import (Registration, best_run, check_alias, check_tracking_uri, load_registered_model, promote,
                       register_run)
from .runs import attach_run, log_evaluation
from .tracker import Tracker

__all__ = ["Registration", "Tracker", "attach_run", "best_run", "check_alias", "check_tracking_uri",
           "load_registered_model", "log_evaluation", "promote", "register_run"]
