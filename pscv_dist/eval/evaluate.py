"""Evaluation of a model on a store's split, distributed over ranks (cases split, results gathered,
no case counted twice)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from ..data import SliceStore
from ..distributed import DistState, gather_objects
from ..errors import CheckpointError, ConfigError
from .inference import predict_volume
from .metrics import CONVENTIONS, case_metrics, check_edge_filter, edge_filter, summarize
from ..progress import progress_bar

log = logging.getLogger(__name__)


def check_compatible(meta: dict[str, Any], store: SliceStore, where: str = "checkpoint") -> None:
    """The model must predict the store's classes."""
    k = meta["model"]["num_classes"]
    if k != store.num_classes:
        raise CheckpointError(f"{where}: model predicts {k} classes {meta.get('classes')}, but store {store.path} "
                              f"has {store.num_classes} classes {store.classes}")


def case_widths(store: SliceStore, cases: list[str]) -> dict[str, int]:
    """{"case 'id'": native width W} of the store's cases (from the metadata; nothing is read)."""
    return {f"case {c!r}": int(store.meta.cases[c].shape[-1]) for c in cases if c in store.meta.cases}


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate` returns: the JSON-ready ``results`` (every rank, gathered) and this
    rank's own ``predictions`` ({case: (Z, H, W) uint8}, empty unless asked for)."""

    results: dict[str, Any]
    predictions: dict[str, np.ndarray]


def evaluate(model: torch.nn.Module, store: SliceStore, cases: list[str], size: int, convention: str = "strict",
             edge_pixels: int = 0, state: DistState | None = None, device="cpu", progress: bool = False,
             keep_predictions: bool = False) -> Evaluation:
    """Per-case and class-averaged 3D Dice / HD95 of ``cases``. Rank r evaluates cases[r::W]; every
    rank gets the gathered results, and keeps its own predictions when ``keep_predictions``."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"--convention must be one of {CONVENTIONS}, got {convention!r}")
    check_edge_filter(edge_pixels, case_widths(store, cases))  # every rank, before any case is run
    rank, world = (state.rank, state.world_size) if state is not None else (0, 1)
    mine = cases[rank::world]
    local, preds = [], {}
    for case in progress_bar(iterable=mine, desc="evaluate", unit="vol", disable=not (progress and rank == 0)):
        vol = store.volume(case)
        pred = edge_filter(predict_volume(model, vol["image"], size, device=device), edge_pixels)
        local.append({"case": case, **case_metrics(pred, vol["label"], store.classes, convention, vol["spacing"])})
        if keep_predictions:
            preds[case] = pred
    order = {c: i for i, c in enumerate(cases)}
    per_case = sorted(gather_objects(local, state), key=lambda r: order[r["case"]])
    if [r["case"] for r in per_case] != list(cases):
        raise RuntimeError("distributed evaluation lost or duplicated a case")
    out = {**summarize(per_case, store.classes), "per_case": per_case, "convention": convention,
           "edge_filter": edge_pixels, "n_cases": len(cases)}
    return Evaluation(out, preds)


def case_mean_dsc(entry: dict[str, Any]) -> float:
    vals = [v["dsc"] for k, v in entry.items() if k != "case" and v is not None]
    return float(np.mean(vals)) if vals else float("nan")
