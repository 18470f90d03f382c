"""The study folder (``--out``): where each run's records live, and what pscv study may write there.

``--out`` holds ``.pscv_study`` (pscv study made it and may write in it), ``study.yaml``,
``logs/``, ``report/``, an MLflow store, ``searches/<name>/`` (with ``study_search.json``, the
search's fingerprint) and ``runs/<method>/b<budget>_s<seed>/`` with its record beside it
(``b<budget>_s<seed>.json``) and one evaluation per convention (``b<budget>_s<seed>.<convention>.json``).
A folder that holds something else, or a run or search of other settings, is refused, never replaced.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .plan import Run, Search, Study

CONVENTIONS = ("strict", "literature")


def record_path(run: Run, out: Path) -> Path:
    return run.folder(out).with_suffix(".json")


def eval_path(run: Run, out: Path, convention: str) -> Path:
    return run.folder(out).with_name(f"{run.folder(out).name}.{convention}.json")


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


SEARCH_RECORD = "study_search.json"  # in a search folder: the fingerprint of the search it holds


MARKER = ".pscv_study"  # in --out: this folder was made by pscv study (it may write here)
LOCK = ".pscv_study.lock"  # in --out while a `pscv study run` works there


def check_study_folder(out: Path) -> None:
    """``--out`` is new, empty, or a folder pscv study made: it writes ``study.yaml``, ``logs/``,
    ``report/`` and an MLflow store there, and must never overwrite files it did not create."""
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not a study folder (no {MARKER}); choose a new or empty folder")


def claim_study_folder(out: Path) -> None:
    """Make ``out`` (checked by :func:`check_study_folder`) a study folder: pscv study may write there."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).exists():
        (out / MARKER).touch()


def check_owned(folder: Path, record: Path, fp: str, kind: str, name: str) -> None:
    """``folder`` holds the ``kind`` (run or search) the study file asks for now (its record's
    fingerprint), or nothing: anything else is refused, never replaced."""
    rec = read_record(record)
    if rec is not None and rec.get("fingerprint") != fp:
        raise ConfigError(f"{folder}: holds {kind} {name} with other settings than the study file now gives "
                          f"(fingerprint {rec.get('fingerprint')} vs {fp}); move it away or choose another --out")
    if rec is None and folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder}: exists and is not a {kind} of this study (no {record.name}); "
                          "move it away or choose another --out")


def check_search_folder(study: Study, search: Search, out: Path) -> None:
    check_owned(search.folder(out), search.folder(out) / SEARCH_RECORD, search.fingerprint(study.overrides),
                "search", search.name)
