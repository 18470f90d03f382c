"""Typed, validated training configuration: YAML file + dotted ``key=value`` overrides.

Every section is a dataclass validated in ``__post_init__``; an unknown key or an invalid value is
refused before anything starts, naming the key, the value and what is allowed. ``to_dict`` goes
straight to MLflow params, Ray Tune search spaces and Kubernetes args alike.

Presets ship inside the package (``pscv_dist/configs/*.yaml``; the top-level ``configs/`` is a
link to that folder): ``load_config("acdc")`` and ``pscv train --config acdc`` load one by name,
so the demo, the launchers and the container image all read the same single copy.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; expected one of {list(allowed)}")


def _range(key: str, value, lo=None, hi=None, lo_open=False) -> None:
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        bound = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        bound += (" and " if bound and hi is not None else "") + (f"<= {hi}" if hi is not None else "")
        raise ConfigError(f"{key}={value!r} is out of range; expected {bound}")


@dataclasses.dataclass
class DataConfig:
    store: str = ""
    train_split: str = "all"
    val_split: str | None = None
    batch_size: int = 12  # GLOBAL batch, split exactly across ranks
    num_workers: int = 2
    prefetch: int = 2
    cache: str = "auto"  # auto | memory | shards | none: where training slices are read from (data/cache.py)
    cache_gb: float = 8.0  # auto: hold the split in memory up to this size (per rank), else stream shards
    shuffle: str = "global"  # global | window: the sample order (data/stream.py); window streams shards
    shuffle_window: int = 16  # shards per shuffle window (and decoded shards kept by cache=shards)

    def __post_init__(self):
        _range("data.batch_size", self.batch_size, 1)
        _range("data.num_workers", self.num_workers, 0)
        _range("data.prefetch", self.prefetch, 1)
        _choice("data.cache", self.cache, ("auto", "memory", "shards", "none"))
        _range("data.cache_gb", self.cache_gb, 0)
        _choice("data.shuffle", self.shuffle, ("global", "window"))
        _range("data.shuffle_window", self.shuffle_window, 1)


@dataclasses.dataclass
class AugmentConfig:
    backend: str = "kornia"  # kornia | dali | none
    p_rot90_flip: float = 0.5
    p_rotate: float = 0.5
    max_angle: float = 20.0

    def __post_init__(self):
        _choice("augment.backend", self.backend, ("kornia", "dali", "none"))
        _range("augment.p_rot90_flip", self.p_rot90_flip, 0, 1)
        _range("augment.p_rotate", self.p_rotate, 0, 1)
        _range("augment.max_angle", self.max_angle, 0, 180)


@dataclasses.dataclass
class ModelConfig:
    base_width: int = 16
    depth: int = 4
    dropout: list[float] | None = None
    upsample: str = "transpose"
    channels_last: bool = True
    sync_bn: bool = False
    compile: bool = False

    def __post_init__(self):
        _range("model.base_width", self.base_width, 1)
        _range("model.depth", self.depth, 1, 7)
        _choice("model.upsample", self.upsample, ("transpose", "bilinear"))
        if self.dropout is not None:
            if len(self.dropout) != self.depth + 1:
                raise ConfigError(f"model.dropout={self.dropout!r} has {len(self.dropout)} values; model.depth="
                                  f"{self.depth} needs depth+1 = {self.depth + 1} (one per encoder level)")
            for p in self.dropout:
                _range("model.dropout", p, 0, 1)
                if p >= 1:
                    raise ConfigError(f"model.dropout={self.dropout!r}: each value must be in [0, 1)")


@dataclasses.dataclass
class LossConfig:
    name: str = "pscv"  # pce | entmini | ms | pscv | fullsup
    lambda_cv: float = 1e-3
    lambda_cv_warmup: int = 0  # iterations of linear warm-up of λ_cv (0 = none)
    mu: float = 1e-5
    tau: float = 0.07
    cv_classes: str = "all"
    cv_pool: str = "global"  # or P >= 2: positives and negatives from P images of the global batch
    gather_dtype: str = "float32"
    lambda_ms: float = 5e-5  # the published MS trainings' scale in our reduction (docs/METHOD.md)
    lambda_ent: float = 0.1

    def __post_init__(self):
        from .losses import objective_names  # the objective registry is the one list of names

        _choice("loss.name", self.name, objective_names())
        _range("loss.lambda_cv", self.lambda_cv, 0)
        _range("loss.lambda_cv_warmup", self.lambda_cv_warmup, 0)
        _range("loss.mu", self.mu, 0)
        _range("loss.tau", self.tau, 0, lo_open=True)
        from .losses.contrastive import CV_CLASSES
        from .losses.objectives import GATHER_DTYPES

        _choice("loss.cv_classes", self.cv_classes, CV_CLASSES)
        self.cv_pool = str(self.cv_pool)
        if self.cv_pool != "global" and not (self.cv_pool.isdigit() and int(self.cv_pool) >= 2):
            raise ConfigError(f"loss.cv_pool={self.cv_pool!r}: expected 'global' or an integer >= 2 (images in the pool)")
        _choice("loss.gather_dtype", self.gather_dtype, tuple(GATHER_DTYPES))
        _range("loss.lambda_ms", self.lambda_ms, 0)
        _range("loss.lambda_ent", self.lambda_ent, 0)


@dataclasses.dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    poly_power: float = 0.9

    def __post_init__(self):
        _range("optim.lr", self.lr, 0, lo_open=True)
        _range("optim.momentum", self.momentum, 0, 1)
        _range("optim.weight_decay", self.weight_decay, 0)
        _range("optim.poly_power", self.poly_power, 0)


@dataclasses.dataclass
class TrainConfig:
    iterations: int = 60000
    grad_accum: int = 1
    seed: int = 0
    engine: str = "ddp"  # ddp | deepspeed
    zero_stage: int = 0
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    out_dir: str = "runs/pscv"
    log_every: int = 20
    val_every: int = 1000
    ckpt_every: int = 1000
    keep_last: int = 3
    progress: bool = True

    def __post_init__(self):
        _range("train.iterations", self.iterations, 1)
        _range("train.grad_accum", self.grad_accum, 1)
        _choice("train.engine", self.engine, ("ddp", "deepspeed"))
        _choice("train.zero_stage", self.zero_stage, (0, 1, 2))
        _choice("train.precision", self.precision, ("auto", "fp32", "bf16"))
        for key in ("log_every", "val_every", "ckpt_every"):
            _range(f"train.{key}", getattr(self, key), 0)
        _range("train.keep_last", self.keep_last, 1)


@dataclasses.dataclass
class TrackingConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # default: sqlite:///<out_dir>/mlflow.db
    artifact_location: str | None = None  # default: <out_dir>/mlartifacts
    experiment: str = "pscv"
    run_name: str | None = None
    register_model: str | None = None  # register each finished run as a new version (models:/NAME@latest = newest)
    image_every: int = 0  # log validation overlays every N validations (0 = only the last)

    def __post_init__(self):
        _range("tracking.image_every", self.image_every, 0)
        if not self.experiment:
            raise ConfigError("tracking.experiment must be a non-empty string")


#: How a run is fed, watched and stored, not what it learns (prefixes of flat keys). A study
#: compares a finished run's saved config with the one it resolves today on every other key.
BOOKKEEPING_KEYS = ("data.num_workers", "data.prefetch", "data.cache", "train.out_dir", "train.log_every",
                    "train.val_every", "train.ckpt_every", "train.keep_last", "train.progress", "tracking.")


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"loss.lambda_cv": 0.001, ...}`` for MLflow params and Ray Tune."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


def _coerce(key: str, value: Any, typ) -> Any:
    """Check (and gently convert: YAML ints for floats, strings from the command line) a value."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(key, value, inner)
    if origin is list:
        if isinstance(value, str):
            value = _yaml_value(f"{key}={value}", value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_coerce(key, v, args[0]) for v in value]
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if typ is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: expected an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if typ is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if typ is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # YAML's 8 for a key like loss.cv_pool
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    return value


def _check_shape(raw: Any) -> None:
    """The top level and every section must be mappings (YAML lists or scalars are refused)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections (data:, model:, ...), found a "
                          f"{type(raw).__name__}")
    for name, body in raw.items():
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"section {name!r} must be a mapping of keys, found a {type(body).__name__}: {body!r}")


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a validated Config; unknown sections or keys raise :class:`ConfigError`."""
    _check_shape(raw)
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built = {}
    for name, body in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown config section {name!r}; expected one of {sorted(sections)}")
        cls = typing.get_type_hints(Config)[name]
        hints = typing.get_type_hints(cls)
        body = body or {}
        for key in body:
            if key not in hints:
                raise ConfigError(f"unknown config key {name}.{key}; {name} has {sorted(hints)}")
        built[name] = cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in body.items()})
    return Config(**built)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) to a raw dict."""
    _check_shape(raw)
    out = {k: dict(v or {}) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = _yaml_value(item, value) if value else ""
    return out


def _yaml_value(where: str, text: str) -> Any:
    """A value written on the command line, read as YAML (``0.1``, ``[0, 1]``, ``true``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where!r}: not a valid value ({' '.join(str(exc).split())})") from None


PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def presets() -> list[str]:
    """Names of the presets that ship with the package (``acdc``, ``synapse``, ``cpu_quick``, ``demo``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a packaged preset (``acdc`` or ``acdc.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name.removesuffix(".yaml")
    if p.parent == Path(".") and name in presets():
        return PRESETS_DIR / f"{name}.yaml"
    if p.exists():
        raise ConfigError(f"{p}: is a folder, expected a YAML config file or a preset name ({', '.join(presets())})")
    raise ConfigError(f"{p}: config file not found (nor a preset; presets: {', '.join(presets())})")


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a config file or preset, its shape checked; errors name the file."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: config file could not be read ({exc})") from None
    raw = {} if raw is None else raw
    try:
        _check_shape(raw)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A validated Config from a YAML file (or preset name) and ``section.key=value`` overrides."""
    raw = read_yaml_config(path) if path is not None else {}
    if path is not None:
        try:
            cfg = from_dict(raw)  # the file on its own first, so its mistakes name the file
        except ConfigError as exc:
            raise ConfigError(f"{resolve_config_path(path)}: {exc}") from None
        if not overrides:
            return cfg
    return from_dict(apply_overrides(raw, overrides or []))
