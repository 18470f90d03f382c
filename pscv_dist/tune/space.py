"""Search spaces: a YAML file of ``section.key: {type: ..., ...}``, checked against the config.

A space file maps config keys (the dotted names of ``pscv train`` overrides) to distributions::

    loss.lambda_cv: {type: loguniform, low: 1.0e-4, high: 1.0}
    loss.tau:       {type: uniform, low: 0.03, high: 0.3}
    loss.cv_classes: {type: choice, values: [all, foreground]}

Types: ``uniform`` and ``loguniform`` (float keys; ``low < high``, ``loguniform`` needs
``low > 0``), ``randint`` (int keys; ``low`` and ``high`` both included), ``choice`` and ``grid``
(any key; ``grid`` tries every value, random search only). Every key must exist in the config and
every bound or value must be one the config accepts: a :class:`~pscv_dist.config.Config` is built
at each of them (with the base config), so a mistake is refused before Ray starts, in one line.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, _coerce, from_dict
from ..errors import ConfigError

TYPES = ("uniform", "loguniform", "randint", "choice", "grid")
# keys the tuner sets itself for every trial: searching them makes no sense
RESERVED = ("train.out_dir", "tracking.run_name", "tracking.tracking_uri", "tracking.artifact_location",
            "tracking.experiment", "tracking.enabled", "data.store")
DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "tune" / "spaces" / "pscv.yaml"
# the default space, also when the package is installed without the top-level tune/ folder
DEFAULT_SPEC = {"loss.lambda_cv": {"type": "loguniform", "low": 1e-4, "high": 1.0},
                "loss.tau": {"type": "uniform", "low": 0.03, "high": 0.3}}


@dataclasses.dataclass(frozen=True)
class Param:
    key: str  # "loss.lambda_cv"
    type: str  # one of TYPES
    low: Any = None
    high: Any = None
    values: tuple = ()

    def describe(self) -> str:
        if self.type in ("choice", "grid"):
            return f"{self.type}{list(self.values)}"
        return f"{self.type}[{self.low}, {self.high}]"


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    source: str  # the file it came from (for messages)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    @property
    def has_grid(self) -> bool:
        return any(p.type == "grid" for p in self.params)

    def to_tune(self) -> dict[str, Any]:
        """The Ray Tune ``param_space`` (flat dotted keys)."""
        from ray import tune

        out: dict[str, Any] = {}
        for p in self.params:
            if p.type == "uniform":
                out[p.key] = tune.uniform(p.low, p.high)
            elif p.type == "loguniform":
                out[p.key] = tune.loguniform(p.low, p.high)
            elif p.type == "randint":
                out[p.key] = tune.randint(p.low, p.high + 1)  # Tune's upper bound is exclusive
            elif p.type == "choice":
                out[p.key] = tune.choice(list(p.values))
            else:
                out[p.key] = tune.grid_search(list(p.values))
        return out

    def describe(self) -> dict[str, str]:
        return {p.key: p.describe() for p in self.params}


def _key_type(key: str, where: str):
    """The declared type of a ``section.key`` of :class:`Config` (refuses unknown ones)."""
    if key.count(".") != 1:
        raise ConfigError(f"{where}: {key!r} is not a config key; expected section.key (e.g. loss.tau)")
    section, name = key.split(".")
    sections = typing.get_type_hints(Config)
    if section not in sections:
        raise ConfigError(f"{where}: unknown config section {section!r} in {key}; expected one of {sorted(sections)}")
    hints = typing.get_type_hints(sections[section])
    if name not in hints:
        raise ConfigError(f"{where}: unknown config key {key}; {section} has {sorted(hints)}")
    return hints[name]


def _base_type(typ):
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    return args[0] if typing.get_origin(typ) in (typing.Union, type(int | None)) and args else typ


def _check_value(raw: dict[str, Any], key: str, value: Any, what: str, where: str) -> Any:
    """Build a Config from the base with ``key=value``; the value as the config coerces it."""
    section, name = key.split(".")
    trial = {k: dict(v or {}) for k, v in raw.items()}
    trial.setdefault(section, {})[name] = value
    try:
        from_dict(trial)
        return _coerce(key, value, _key_type(key, where))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {key} {what}={value!r} is outside what the config accepts ({exc})") from None


def parse_space(spec: Any, raw_config: dict[str, Any], where: str) -> SearchSpace:
    """Check a space mapping against the base config (raw dict, overrides applied).

    Raises:
        ConfigError: not a mapping, an unknown key, a reserved key, a bad distribution, or a bound
            or value that the config refuses.
    """
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: expected a mapping of section.key to a distribution, found "
                          f"{type(spec).__name__ if spec else 'nothing'}")
    params = []
    for key, dist in spec.items():
        key = str(key)
        typ = _key_type(key, where)
        if key in RESERVED:
            raise ConfigError(f"{where}: {key} is set by pscv tune for every trial and cannot be searched")
        if not isinstance(dist, dict) or dist.get("type") not in TYPES:
            raise ConfigError(f"{where}: {key} must be a mapping with type one of {list(TYPES)}, found {dist!r}")
        kind = dist["type"]
        allowed = {"type", "values"} if kind in ("choice", "grid") else {"type", "low", "high"}
        extra = sorted(set(dist) - allowed)
        missing = sorted(allowed - set(dist))
        if extra or missing:
            raise ConfigError(f"{where}: {key} ({kind}) takes {sorted(allowed)}; "
                              + (f"unexpected {extra}" if extra else f"missing {missing}"))
        base = _base_type(typ)
        if kind in ("choice", "grid"):
            values = dist["values"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: {key} {kind} needs a non-empty list of values, found {values!r}")
            checked = tuple(_check_value(raw_config, key, v, "value", where) for v in values)
            params.append(Param(key, kind, values=checked))
            continue
        want = int if kind == "randint" else float
        if base is not want:
            raise ConfigError(f"{where}: {key} is {getattr(base, '__name__', base)} in the config; {kind} needs "
                              f"{'an integer' if want is int else 'a number'} key (use choice for others)")
        low, high = dist["low"], dist["high"]
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)) \
                    or not math.isfinite(v):
                raise ConfigError(f"{where}: {key} {name}={v!r}: expected {'an integer' if want is int else 'a number'}")
        if not low < high:
            raise ConfigError(f"{where}: {key} needs low < high, found low={low!r} high={high!r}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: {key} loguniform needs low > 0, found low={low!r}")
        low = _check_value(raw_config, key, low, "low", where)
        high = _check_value(raw_config, key, high, "high", where)
        params.append(Param(key, kind, low, high))
    return SearchSpace(tuple(params), where)


def load_space(path: str | Path | None, raw_config: dict[str, Any]) -> SearchSpace:
    """The space of a YAML file (default: ``tune/spaces/pscv.yaml``), checked against the config."""
    if path is None:
        if not DEFAULT_SPACE.is_file():
            return parse_space(DEFAULT_SPEC, raw_config, "default space")
        path = DEFAULT_SPACE
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space {p}: search space file not found")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_space(spec, raw_config, str(p))
