"""The training objectives, chosen by name from one registry.

:data:`OBJECTIVES` is THE list of loss names (:func:`objective_names`); the config validates
``loss.name`` against it. An objective builds itself from the ``loss`` section of the config
(:meth:`Objective.from_config`, via :func:`build_objective`) and owns its schedule: the trainer
calls :meth:`Objective.start_step` once per optimizer step, before that step's forward passes.

Each objective maps ``(logits, batch, step)`` to a dict of scalar tensors: ``loss`` (what is
back-propagated) and each weighted-free term (``pce``, ``cv``, ``tv``, ...) for logging. ``batch``
holds ``image`` (B,1,H,W), ``points`` (B,H,W) int64, ``label`` (B,H,W) int64 (only ``fullsup``
reads it) and ``present`` (B,K) bool. ``step`` is the data-stream step (it seeds the CV positives).

Every term is split-invariant over ``process_group`` (None = the default group when initialised):
the mean of the ranks' losses is the one-process loss on the global batch and 1/W times a rank's
gradient is the one-process gradient (METHOD.md; the rules are in :mod:`.functional`). Calling an
objective is therefore collective: every rank calls it once per micro-batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .contrastive import ContrastiveVarianceLoss
from .functional import (entropy_minimization, mumford_shah, partial_cross_entropy, soft_dice_loss,
                         total_variation)

if TYPE_CHECKING:  # the config imports this module (objective_names), not the other way round
    from ..config import LossConfig

OBJECTIVES: dict[str, type["Objective"]] = {}
GATHER_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}


def register(name: str) -> Callable:
    def deco(cls):
        OBJECTIVES[name] = cls
        cls.name = name
        return cls
    return deco


def objective_names() -> tuple[str, ...]:
    """The loss names, in registration order (``pce``, ``entmini``, ``ms``, ``pscv``, ``fullsup``)."""
    return tuple(OBJECTIVES)


class Objective(nn.Module):
    name = "base"
    #: the ``loss`` keys :meth:`from_config` reads (besides ``name``); the others do not change this
    #: objective, so a study does not refuse a run when only those changed (tested against the reads)
    reads: tuple[str, ...] = ()

    def __init__(self, num_classes: int, ignore_index: int, process_group=None):
        super().__init__()
        self.num_classes, self.ignore_index, self.process_group = num_classes, ignore_index, process_group

    @classmethod
    def from_config(cls, loss_cfg: "LossConfig", num_classes: int, ignore_index: int, *, seed: int,
                    compile: bool = False, process_group=None) -> "Objective":
        """Build from the config's ``loss`` section; each objective reads the keys it uses."""
        return cls(num_classes, ignore_index, process_group=process_group)

    def start_step(self, step: int) -> None:
        """Called once per optimizer step (0-based), before its forward passes: schedules live here."""

    def pce(self, logits, batch) -> torch.Tensor:
        return partial_cross_entropy(logits, batch["points"], self.ignore_index, self.process_group)


@register("pce")
class PCE(Objective):
    """pCE alone: the lower bound."""

    def forward(self, logits, batch, step):
        pce = self.pce(logits, batch)
        return {"loss": pce, "pce": pce}


@register("entmini")
class EntMini(Objective):
    """pCE + λ_ent · mean per-pixel entropy / log K (Grandvalet & Bengio 2004), λ_ent = 0.1."""
    reads = ("lambda_ent",)

    def __init__(self, num_classes, ignore_index, lambda_ent: float = 0.1, process_group=None):
        super().__init__(num_classes, ignore_index, process_group)
        self.lambda_ent = lambda_ent

    @classmethod
    def from_config(cls, loss_cfg, num_classes, ignore_index, *, seed, compile=False, process_group=None):
        return cls(num_classes, ignore_index, lambda_ent=loss_cfg.lambda_ent, process_group=process_group)

    def forward(self, logits, batch, step):
        pce, ent = self.pce(logits, batch), entropy_minimization(logits.softmax(1))
        return {"loss": pce + self.lambda_ent * ent, "pce": pce, "entropy": ent}


@register("ms")
class VanillaMS(Objective):
    """pCE + λ_ms · Σ_k Σ_r (I - c_k)² Ŷ_k + μ · TV (Kim & Ye 2019, "vanilla MS" of PSCV Table 3).

    The data term is a sum over every pixel of every class, averaged over images, so its weight
    depends on the slice size: λ_ms = 5e-5 at 128² is the scale public MS trainings use (docs/METHOD.md)."""
    reads = ("lambda_ms", "mu")

    def __init__(self, num_classes, ignore_index, lambda_ms: float = 5e-5, mu: float = 1e-5, process_group=None):
        super().__init__(num_classes, ignore_index, process_group)
        self.lambda_ms, self.mu = lambda_ms, mu

    @classmethod
    def from_config(cls, loss_cfg, num_classes, ignore_index, *, seed, compile=False, process_group=None):
        return cls(num_classes, ignore_index, lambda_ms=loss_cfg.lambda_ms, mu=loss_cfg.mu, process_group=process_group)

    def forward(self, logits, batch, step):
        probs = logits.softmax(1)
        pce, ms, tv = self.pce(logits, batch), mumford_shah(probs, batch["image"]), total_variation(probs)
        return {"loss": pce + self.lambda_ms * ms + self.mu * tv, "pce": pce, "ms": ms, "tv": tv}


@register("pscv")
class PSCV(Objective):
    """PSCV: pCE + λ_cv(t) · CV + μ · TV (PSCV Eq. 9 with Eq. 6); CV over the global batch.

    λ_cv warm-up (our choice, ``loss.lambda_cv_warmup``): linear over the first ``warmup`` optimizer
    steps, ``λ_cv(t) = λ_cv · min(1, (t + 1) / warmup)`` for step t (0-based); 0 = none. The trainer
    sets t with :meth:`start_step`; until then t = 0.
    """
    reads = ("lambda_cv", "mu", "tau", "cv_classes", "gather_dtype", "lambda_cv_warmup", "cv_pool")

    def __init__(self, num_classes, ignore_index, lambda_cv: float = 1e-3, mu: float = 1e-5, tau: float = 0.07,
                 cv_classes: str = "all", seed: int = 0, gather_dtype: torch.dtype | None = None,
                 process_group=None, compile: bool = False, lambda_cv_warmup: int = 0, cv_pool: int | None = None):
        super().__init__(num_classes, ignore_index, process_group)
        if lambda_cv_warmup < 0:
            raise ValueError(f"lambda_cv_warmup must be >= 0, got {lambda_cv_warmup}")
        self.lambda_cv, self.mu, self.lambda_cv_warmup = lambda_cv, mu, int(lambda_cv_warmup)
        self.cv = ContrastiveVarianceLoss(tau=tau, seed=seed, gather_dtype=gather_dtype,
                                          process_group=process_group, classes=cv_classes, compile=compile,
                                          pool=cv_pool)
        self.start_step(0)

    @classmethod
    def from_config(cls, loss_cfg, num_classes, ignore_index, *, seed, compile=False, process_group=None):
        if loss_cfg.gather_dtype not in GATHER_DTYPES:
            raise ConfigError(f"loss.gather_dtype={loss_cfg.gather_dtype!r}: expected one of {tuple(GATHER_DTYPES)}")
        return cls(num_classes, ignore_index, lambda_cv=loss_cfg.lambda_cv, mu=loss_cfg.mu, tau=loss_cfg.tau,
                   cv_classes=loss_cfg.cv_classes, seed=seed, gather_dtype=GATHER_DTYPES[loss_cfg.gather_dtype],
                   process_group=process_group, compile=compile, lambda_cv_warmup=loss_cfg.lambda_cv_warmup,
                   cv_pool=None if loss_cfg.cv_pool == "global" else int(loss_cfg.cv_pool))

    def lambda_cv_at(self, step: int) -> float:
        """λ_cv(t) = λ_cv · min(1, (t + 1) / warmup), or λ_cv without a warm-up."""
        if not self.lambda_cv_warmup:
            return self.lambda_cv
        return self.lambda_cv * min(1.0, (step + 1) / self.lambda_cv_warmup)

    def start_step(self, step: int) -> None:
        self.current_lambda_cv = self.lambda_cv_at(step)

    def forward(self, logits, batch, step):
        probs = logits.float().softmax(1)
        pce = self.pce(logits, batch)
        cv = self.cv(probs, batch["image"].float(), batch["present"], step)
        tv = total_variation(probs)
        return {"loss": pce + self.current_lambda_cv * cv + self.mu * tv, "pce": pce, "cv": cv, "tv": tv}


@register("fullsup")
class FullySupervised(Objective):
    """0.5 · CE + 0.5 · soft Dice (foreground classes) on the dense label: the upper bound, as the
    literature trains it (plain CE collapses to background on short schedules, METHOD.md).

    CE is a mean over all pixels of equally sized local batches (the global batch is split
    exactly), so it is split-invariant as it is; the Dice sums are all-reduced (:mod:`.functional`).
    """

    def forward(self, logits, batch, step):
        ce = F.cross_entropy(logits, batch["label"])
        dice = soft_dice_loss(logits.softmax(1), batch["label"], list(range(1, self.num_classes)),
                              process_group=self.process_group)
        return {"loss": 0.5 * ce + 0.5 * dice, "ce": ce, "dice": dice}


def build_objective(loss_cfg: "LossConfig", num_classes: int, ignore_index: int, *, seed: int,
                    compile: bool = False, process_group=None) -> Objective:
    """The objective named ``loss_cfg.name``, built from the config's ``loss`` section.

    Args:
        loss_cfg: :class:`pscv_dist.config.LossConfig` (or anything with its fields).
        seed: seeds the CV positive draw (``train.seed``), identical on every rank.
        compile: ``torch.compile`` the CV variance maps (``model.compile``).
        process_group: the group the terms reduce over; None = the default group when initialised.

    Raises:
        ConfigError: ``loss_cfg.name`` is not in :data:`OBJECTIVES`.
    """
    name = loss_cfg.name
    if name not in OBJECTIVES:
        raise ConfigError(f"loss.name={name!r}: expected one of {objective_names()}")
    return OBJECTIVES[name].from_config(loss_cfg, num_classes, ignore_index, seed=seed, compile=compile,
                                        process_group=process_group)
