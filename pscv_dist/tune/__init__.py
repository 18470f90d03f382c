"""Hyper-parameter search of pscv on Ray Tune (``pscv tune``): search spaces checked against the
config, trials that run the project's own trainer on 1 or W workers, ASHA on the training step,
random or Optuna (TPE) search, MLflow parent/child runs, resumable searches and result tables.
See docs/TUNE.md. Ray is imported only when a search runs."""
from .search import TuneOptions, prepare, run_search
from .space import SearchSpace, load_space, parse_space

__all__ = ["SearchSpace", "TuneOptions", "load_space", "parse_space", "prepare", "run_search"]
