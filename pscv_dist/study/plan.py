"""A study file: methods × budgets × seeds of normal ``pscv train`` runs, scored on one split.

::

    name: acdc_cpu
    config: cpu_quick                 # the base config of every run (preset name or YAML file)
    overrides: {data.store: acdc128.zarr, train.val_every: 200}   # every run and every search
    train_split: fold0/train          # what every method trains on
    eval_split: fold0/val             # the patients every method is scored on (3D, both conventions)
    seeds: [0, 1, 2]
    budgets: [800, 3000]              # train.iterations
    reference: pce                    # paired differences are against this method
    upper: fullsup                    # "share of the gap closed" is towards this one
    searches:                         # Ray Tune searches, run before the methods that use them
      pscv:
        space: tune/spaces/pscv.yaml
        train_split: fold0/train&fold1/train   # inner split of the training patients:
        val_split: fold1/val                   # a search never sees the eval patients
        overrides: {train.iterations: 800}
        args: [--num-samples, "12", --grace-steps, "200"]
    methods:
      pce: {loss.name: pce}
      pscv_searched: {loss.name: pscv, search: pscv}   # the searched keys from the best trial
    paper:                            # published numbers to print beside ours (optional)
      pce: {dsc: 0.722}
    comparisons:                      # pairs a - b to difference seed by seed besides "vs reference" (optional)
      - [pscv_searched, pscv_paper]
      - [pscv_searched, [pce, pce_nudged]]     # a list: the per-seed mean of those methods' runs

Every value is checked before anything runs: each run's config is built (unknown keys, bad values
and the splits against the store are refused in one line naming the study file and the method).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

Side = str | tuple[str, ...]  # one side of a comparison: a method, or methods pooled seed by seed

RUN_KEYS = ("train.iterations", "train.seed", "train.out_dir", "data.train_split", "data.val_split",
            "tracking.tracking_uri", "tracking.artifact_location", "tracking.experiment", "tracking.run_name")
TOP = {"name", "config", "overrides", "train_split", "eval_split", "seeds", "budgets", "reference", "upper",
       "searches", "methods", "paper", "comparisons", "description"}


@dataclasses.dataclass(frozen=True)
class Search:
    name: str
    space: str
    train_split: str
    val_split: str
    overrides: tuple[str, ...]
    args: tuple[str, ...]

    def folder(self, out: Path) -> Path:
        return out / "searches" / self.name

    def fingerprint(self, study_overrides: tuple[str, ...]) -> str:
        """What makes a finished search the one asked for now: its space file's text, splits,
        overrides (the study's and its own) and ``pscv tune`` options."""
        space = Path(self.space).read_text() if Path(self.space).is_file() else ""
        what = {"space": space, "train_split": self.train_split, "val_split": self.val_split,
                "overrides": [*study_overrides, *self.overrides], "args": list(self.args)}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Run:
    method: str
    budget: int
    seed: int
    overrides: tuple[str, ...]  # the method's, then the study's fixed ones (without the search's keys)
    search: str | None

    @property
    def key(self) -> str:
        return f"{self.method}/b{self.budget}_s{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.method / f"b{self.budget}_s{self.seed}"


@dataclasses.dataclass
class Study:
    source: Path
    name: str
    config: str
    overrides: tuple[str, ...]
    train_split: str
    eval_split: str
    seeds: tuple[int, ...]
    budgets: tuple[int, ...]
    reference: str
    upper: str | None
    searches: dict[str, Search]
    methods: dict[str, dict[str, Any]]
    paper: dict[str, dict[str, Any]]
    comparisons: tuple[tuple[Side, Side], ...] = ()

    def runs(self, methods: list[str] | None = None, budgets: list[int] | None = None,
             seeds: list[int] | None = None) -> list[Run]:
        """Every run, shortest budgets first (so a partial study has every method at one budget)."""
        out = []
        for budget in budgets or self.budgets:
            for seed in seeds or self.seeds:
                for m in methods or list(self.methods):
                    spec = self.methods[m]
                    own = tuple(as_overrides({k: v for k, v in spec.items() if k != "search"}))
                    out.append(Run(m, budget, seed, own, spec.get("search")))
        return out

    @property
    def experiment(self) -> str:
        return f"study-{self.name}"

    @staticmethod
    def tracking(out: Path) -> tuple[str, str]:
        """The study's MLflow store and artifact location, in its folder."""
        out = out.resolve()
        return f"sqlite:///{out / 'mlflow.db'}", (out / "mlartifacts").as_uri()

    def run_overrides(self, run: Run, out: Path, searched: dict[str, Any] | None = None) -> list[str]:
        """The ``pscv train`` overrides of a run: study, method, searched values, then the run's own."""
        folder = run.folder(out)
        fixed = [f"data.train_split={self.train_split}", f"data.val_split={self.eval_split}",
                 f"train.iterations={run.budget}", f"train.seed={run.seed}", f"train.out_dir={folder}",
                 f"tracking.tracking_uri={self.tracking(out)[0]}", f"tracking.artifact_location={self.tracking(out)[1]}",
                 f"tracking.experiment={self.experiment}", f"tracking.run_name={run.key}"]
        return [*self.overrides, *run.overrides, *as_overrides(searched or {}), *fixed]


def override_value(v: Any) -> str:
    """A value as ``key=value`` on the command line writes it (YAML reads JSON)."""
    return v if isinstance(v, str) else json.dumps(v)


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``{key: value}`` as ``key=value`` overrides."""
    return [f"{k}={override_value(v)}" for k, v in values.items()]


WHERE_KEYS = ("train.out_dir=", "tracking.")  # where a run is written, not what it is


def fingerprint(overrides: list[str]) -> str:
    """What makes a finished run the run the study asks for now: its config overrides, except
    where it is written (a study folder can be moved), in any order."""
    what = dict(o.split("=", 1) for o in overrides if not o.startswith(WHERE_KEYS))  # the last value wins
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


SEARCH_KEYS = tuple(k for k in RUN_KEYS if k not in ("train.iterations", "train.seed"))  # a search's budget is its own


def _overrides(raw: Any, where: str, reserved: tuple[str, ...] = RUN_KEYS) -> tuple[str, ...]:
    _need(raw is None or isinstance(raw, dict), where, f"expected a mapping of section.key: value, found {raw!r}")
    items = (raw or {}).items()
    for k, _ in items:
        _need(isinstance(k, str) and "." in k, where, f"expected section.key names, found {k!r}")
        _need(k not in reserved, where, f"{k} is set by the study for every run; it cannot be overridden")
    return tuple(as_overrides(dict(items)))


def _ints(raw: Any, where: str, lo: int) -> tuple[int, ...]:
    ok = isinstance(raw, list) and raw and all(isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in raw)
    _need(bool(ok), where, f"expected a non-empty list of integers >= {lo}, found {raw!r}")
    _need(len(set(raw)) == len(raw), where, f"expected distinct values, found {raw!r}")
    return tuple(raw)


def load_study(path: str | Path) -> Study:
    """Read and check a study file (its shape here; the configs in :func:`check_study`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: study file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    _need(isinstance(raw, dict), str(path), f"expected a mapping at the top, found {type(raw).__name__}")
    unknown = sorted(set(raw) - TOP)
    _need(not unknown, str(path), f"unknown key(s) {unknown}; expected some of {sorted(TOP)}")
    for key in ("name", "config", "train_split", "eval_split", "methods"):
        _need(key in raw, str(path), f"missing required key {key!r}")
    name = raw["name"]
    _need(isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum(), f"{path}: name",
          f"expected letters, digits, '-' or '_', found {name!r}")
    searches = {}
    for s, spec in (raw.get("searches") or {}).items():
        where = f"{path}: searches.{s}"
        _need(isinstance(spec, dict), where, f"expected a mapping, found {spec!r}")
        extra = sorted(set(spec) - {"space", "train_split", "val_split", "overrides", "args"})
        _need(not extra, where, f"unknown key(s) {extra}")
        for key in ("space", "train_split", "val_split"):
            _need(isinstance(spec.get(key), str), where, f"{key} must be given as a string")
        args = spec.get("args") or []
        _need(isinstance(args, list) and all(isinstance(a, str) for a in args), where,
              f"args must be a list of strings (pscv tune options), found {args!r}")
        for bad in ("--out", "--config", "--space", "--resume"):
            _need(bad not in args, where, f"{bad} is set by the study")
        searches[s] = Search(s, spec["space"], spec["train_split"], spec["val_split"],
                             _overrides(spec.get("overrides"), f"{where}.overrides", SEARCH_KEYS), tuple(args))
    methods = raw["methods"]
    _need(isinstance(methods, dict) and methods, f"{path}: methods", f"expected a non-empty mapping, found {methods!r}")
    for m, spec in methods.items():
        where = f"{path}: methods.{m}"
        _need(isinstance(m, str) and m.replace("_", "").replace("-", "").isalnum(), where,
              "a method name is letters, digits, '-' or '_'")
        _overrides({k: v for k, v in (spec or {}).items() if k != "search"}, where)
        if (spec or {}).get("search") is not None:
            _need(spec["search"] in searches, where, f"search {spec['search']!r} is not in searches ({sorted(searches)})")
        methods[m] = dict(spec or {})
    reference, upper = raw.get("reference", "pce"), raw.get("upper")
    _need(reference in methods, f"{path}: reference", f"{reference!r} is not a method ({sorted(methods)})")
    _need(upper is None or upper in methods, f"{path}: upper", f"{upper!r} is not a method ({sorted(methods)})")
    paper = raw.get("paper") or {}
    _need(isinstance(paper, dict), f"{path}: paper", "expected a mapping of method: {dsc: ..., hd95: ...}")
    return Study(path, name, str(raw["config"]), _overrides(raw.get("overrides"), f"{path}: overrides"),
                 str(raw["train_split"]), str(raw["eval_split"]), _ints(raw.get("seeds", [0]), f"{path}: seeds", 0),
                 _ints(raw.get("budgets"), f"{path}: budgets", 1), reference, upper, searches, methods, paper,
                 _pairs(raw.get("comparisons"), f"{path}: comparisons", methods))


def _pairs(raw: Any, where: str, methods: dict[str, Any]) -> tuple[tuple[Side, Side], ...]:
    """The study file's ``comparisons``: a list of [a, b] pairs. Each side is a method, or a list of
    two or more methods pooled seed by seed (their runs' per-seed mean: a steadier reference than
    one run per seed when training is chaotic); the two sides share no method."""
    raw = [] if raw is None else raw
    _need(isinstance(raw, list), where, f"expected a list of [a, b] method pairs, found {raw!r}")
    pairs = []
    for k, pair in enumerate(raw):
        at = f"{where}[{k}]"
        _need(isinstance(pair, list) and len(pair) == 2, at, f"expected [a, b], a pair of two sides, found {pair!r}")
        sides = []
        for side in pair:
            pooled = isinstance(side, list)
            _need(isinstance(side, str) or (pooled and len(side) >= 2 and all(isinstance(m, str) for m in side)
                                            and len(set(side)) == len(side)),
                  at, f"expected [a, b], each a method or a list of two or more different methods, found {pair!r}")
            unknown = [m for m in (side if pooled else [side]) if m not in methods]
            _need(not unknown, at, f"{unknown[0]!r} is not a method ({sorted(methods)})" if unknown else "")
            sides.append(tuple(side) if pooled else side)
        a, b = sides
        shared = sorted(set(members(a)) & set(members(b)))
        _need(not shared, at, f"expected [a, b] with no method on both sides, found {pair!r} (both have {shared})")
        pairs.append((a, b))
    return tuple(pairs)


def members(side: Side) -> tuple[str, ...]:
    """The methods a comparison's side pools: one, or the list the study file gave."""
    return (side,) if isinstance(side, str) else side


def check_study(study: Study, out: Path, methods: list[str] | None = None) -> None:
    """Build every run's and every search's config (nothing runs): a bad key or value is refused
    now rather than hours into the study. The stores, splits and space files are checked for the
    ``methods`` about to run (all by default) and the searches they need, so a subset runs without
    the stores of the methods it leaves out."""
    from ..config import load_config
    from ..data import SliceStore

    stores: dict[str, Any] = {}
    selected = set(methods or study.methods)

    def config(overrides, where, open_store=True):
        try:
            cfg = load_config(study.config, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return cfg, stores.setdefault(cfg.data.store, SliceStore(cfg.data.store)) if open_store else None

    def cases(store, split, where):
        try:
            found = store.split(split)
        except KeyError as exc:
            raise ConfigError(f"{where}: {exc.args[0]}") from None
        _need(bool(found), where, f"split {split!r} holds no case in {store.path}")
        return found

    for run in study.runs(seeds=[study.seeds[0]], budgets=[study.budgets[0]]):
        where = f"{study.source}: methods.{run.method}"
        _, store = config(study.run_overrides(run, out), where, open_store=run.method in selected)
        for split in (study.train_split, study.eval_split) if store is not None else ():
            cases(store, split, where)
    needed = {study.methods[m].get("search") for m in selected} - {None}
    for s in study.searches.values():
        where = f"{study.source}: searches.{s.name}"
        if s.name not in needed:
            config([*study.overrides, *s.overrides], where, open_store=False)
            continue
        _need(Path(s.space).is_file(), where, f"space file {s.space} not found")
        _, store = config([*study.overrides, *s.overrides], where)
        evaluated = set(store.split(study.eval_split))
        for split in (s.train_split, s.val_split):
            seen = sorted(evaluated.intersection(cases(store, split, where)))
            _need(not seen, where, f"{split} holds {len(seen)} case(s) of the eval split {study.eval_split} "
                                   f"(e.g. {seen[0] if seen else ''}): a search must never see the patients it is scored on")
