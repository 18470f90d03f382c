"""Whether a run folder still holds the run the study resolves today, beyond its fingerprint.

A run's fingerprint (:func:`.plan.fingerprint`) covers the study file's overrides. The values a
run took from the config preset and from the code's defaults are not in it, so a newer pscv-dist
that changes a default (``loss.lambda_ms`` went from 1e-3 to 5e-5) would leave runs trained before
it in the tables as if nothing had changed. Here the config a run's latest checkpoint saved
(``train_state.pt``) is compared with the one its overrides resolve now, on every key that

- the overrides do not set (those are the fingerprint's),
- is not bookkeeping (:data:`pscv_dist.config.BOOKKEEPING_KEYS`: workers, logging, checkpoints),
- is not a ``loss`` key the run's objective ignores (:attr:`Objective.reads`: a pCE run does not
  depend on ``loss.lambda_ms``),
- and was saved at all: an option added after the run (its default keeps the old behaviour, as
  every new option here does) is not a change.

A finished search is checked the same way (:func:`search_drift`), on the config of its best trial.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import TRAIN_STATE, latest_checkpoint, read
from ..config import BOOKKEEPING_KEYS, Config, load_config
from ..errors import ConfigError
from ..files import absolute_local
from ..losses import OBJECTIVES


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


def trained_config(run_folder: Path) -> dict[str, Any] | None:
    """The flat config the run's latest complete checkpoint was trained with; None without one."""
    ckpt = latest_checkpoint(run_folder / "checkpoints")
    return None if ckpt is None else _flat(read(ckpt / TRAIN_STATE)["config"])


def config_drift(run_folder: Path, record: dict[str, Any] | None, config: str,
                 overrides: list[str]) -> dict[str, tuple[Any, Any]]:
    """``{key: (trained, now)}`` for every key that decides what the run learns and differs.

    The trained config comes from the run's latest checkpoint, else from its record (``"config"``,
    written when the run finished, so deleting checkpoints to save space keeps it checkable).
    Nothing to compare is no drift for a run not finished (it starts again from scratch); for a
    finished one it is refused (:class:`ConfigError`): its numbers could come from anything."""
    trained = trained_config(run_folder) or (record or {}).get("config")
    if trained is None:
        if (record or {}).get("status") == "done":
            raise ConfigError(f"{run_folder}: finished, but neither a checkpoint nor its record "
                              f"{run_folder.name}.json says which config it was trained with; move both away "
                              "to train it again")
        return {}
    return drift(trained, load_config(config, overrides), overrides)


def search_drift(best_config: Path, config: str, overrides: list[str]) -> dict[str, tuple[Any, Any]]:
    """The same comparison for a finished search: the config its best trial ran with
    (``best_config.yaml``, every key written out) against the one the search's overrides and its
    searched values resolve now. A search made under other defaults would hand its values to
    runs that no longer share its setting. ``pscv tune`` wrote the store as an absolute path
    (its trials run in other folders); the same store named relatively is no change."""
    trained = _flat(yaml.safe_load(best_config.read_text()))
    now = load_config(config, overrides)
    if trained.get("data.store") == absolute_local(now.data.store):
        trained["data.store"] = now.data.store
    return drift(trained, now, overrides)


def drift(trained: dict[str, Any], config: Config, overrides: list[str]) -> dict[str, tuple[Any, Any]]:
    """``{key: (trained, now)}`` over the keys that decide what is learned (the module's rules);
    ``config`` is what ``overrides`` resolve now."""
    now = config.flat()
    set_by_overrides = {o.split("=", 1)[0] for o in overrides}
    reads = {"loss.name", *(f"loss.{k}" for k in OBJECTIVES[now["loss.name"]].reads)}
    return {key: (trained[key], value) for key, value in now.items()
            if key in trained and trained[key] != value and key not in set_by_overrides
            and not key.startswith(BOOKKEEPING_KEYS) and (not key.startswith("loss.") or key in reads)}


def describe_drift(drift: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key}={old!r} (now {new!r})" for key, (old, new) in sorted(drift.items()))
