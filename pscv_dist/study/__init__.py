"""The study: methods × budgets × seeds of ``pscv train`` runs from a study file, resumable, with
tables and figures rebuilt from the run folders (``pscv study run|report``)."""
from .plan import Run, Search, Study, check_study, load_study
from .report import write_report
from .runner import RunOptions, run_study

__all__ = ["Run", "RunOptions", "Search", "Study", "check_study", "load_study", "run_study", "write_report"]
