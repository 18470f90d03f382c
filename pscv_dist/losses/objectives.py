"""The training objectives, chosen by name from one registry.

Each objective maps ``(logits, batch, step)`` to a dict of scalar tensors: ``loss`` (what is
back-propagated) and each weighted-free term (``pce``, ``cv``, ``tv``, ...) for logging. ``batch``
holds ``image`` (B,1,H,W), ``points`` (B,H,W) int64, ``label`` (B,H,W) int64 (only ``fullsup``
reads it) and ``present`` (B,K) bool.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import ContrastiveVarianceLoss
from .functional import (entropy_minimization, mumford_shah, partial_cross_entropy, soft_dice_loss,
                         total_variation)

OBJECTIVES: dict[str, type["Objective"]] = {}


def register(name: str) -> Callable:
    def deco(cls):
        OBJECTIVES[name] = cls
        cls.name = name
        return cls
    return deco


class Objective(nn.Module):
    name = "base"

    def __init__(self, num_classes: int, ignore_index: int):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def pce(self, logits, batch) -> torch.Tensor:
        return partial_cross_entropy(logits, batch["points"], self.ignore_index)


@register("pce")
class PCE(Objective):
    """pCE alone: the lower bound."""

    def forward(self, logits, batch, step):
        pce = self.pce(logits, batch)
        return {"loss": pce, "pce": pce}


@register("entmini")
class EntMini(Objective):
    """pCE + λ_ent · mean per-pixel entropy / log K (Grandvalet & Bengio 2004), λ_ent = 0.1."""

    def __init__(self, num_classes, ignore_index, lambda_ent: float = 0.1):
        super().__init__(num_classes, ignore_index)
        self.lambda_ent = lambda_ent

    def forward(self, logits, batch, step):
        pce, ent = self.pce(logits, batch), entropy_minimization(logits.softmax(1))
        return {"loss": pce + self.lambda_ent * ent, "pce": pce, "entropy": ent}


@register("ms")
class VanillaMS(Objective):
    """pCE + λ_ms · Σ_k Σ_r (I - c_k)² Ŷ_k + μ · TV (Kim & Ye 2019, "vanilla MS" of PSCV Table 3)."""

    def __init__(self, num_classes, ignore_index, lambda_ms: float = 1e-3, mu: float = 1e-5):
        super().__init__(num_classes, ignore_index)
        self.lambda_ms, self.mu = lambda_ms, mu

    def forward(self, logits, batch, step):
        probs = logits.softmax(1)
        pce, ms, tv = self.pce(logits, batch), mumford_shah(probs, batch["image"]), total_variation(probs)
        return {"loss": pce + self.lambda_ms * ms + self.mu * tv, "pce": pce, "ms": ms, "tv": tv}


@register("pscv")
class PSCV(Objective):
    """PSCV: pCE + λ_cv · CV + μ · TV (PSCV Eq. 9 with Eq. 6); CV over the global batch."""

    def __init__(self, num_classes, ignore_index, lambda_cv: float = 1e-3, mu: float = 1e-5, tau: float = 0.07,
                 cv_classes: str = "all", seed: int = 0, gather_dtype: torch.dtype | None = None,
                 process_group=None, compile: bool = False):
        super().__init__(num_classes, ignore_index)
        self.lambda_cv, self.mu = lambda_cv, mu
        self.cv = ContrastiveVarianceLoss(tau=tau, seed=seed, gather_dtype=gather_dtype,
                                          process_group=process_group, classes=cv_classes, compile=compile)

    def forward(self, logits, batch, step):
        probs = logits.float().softmax(1)
        pce = self.pce(logits, batch)
        cv = self.cv(probs, batch["image"].float(), batch["present"], step)
        tv = total_variation(probs)
        return {"loss": pce + self.lambda_cv * cv + self.mu * tv, "pce": pce, "cv": cv, "tv": tv}


@register("fullsup")
class FullySupervised(Objective):
    """0.5 · CE + 0.5 · soft Dice (foreground classes) on the dense label: the upper bound, as the
    literature trains it (plain CE collapses to background on short schedules, METHOD.md)."""

    def forward(self, logits, batch, step):
        ce = F.cross_entropy(logits, batch["label"])
        dice = soft_dice_loss(logits.softmax(1), batch["label"], list(range(1, self.num_classes)))
        return {"loss": 0.5 * ce + 0.5 * dice, "ce": ce, "dice": dice}


def build_objective(name: str, num_classes: int, ignore_index: int, **params) -> Objective:
    """Build an objective by name; ``params`` go to its constructor (unknown ones raise)."""
    if name not in OBJECTIVES:
        raise ValueError(f"loss {name!r} is not known; expected one of {sorted(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](num_classes, ignore_index, **params)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: {exc}") from None
