"""Training engines: DDP (default) and DeepSpeed, behind one protocol.

Every engine has the same methods, and the trainer uses nothing else:

- ``module``                   the bare network (weights, ``state_dict``, evaluation);
- ``forward(x)``               logits (autocast where configured);
- ``no_sync(last_micro)``      context that skips the gradient all-reduce inside an accumulation cycle;
- ``backward(loss, last_micro)``
- ``step(finite) -> bool``     the NaN guard and the optimizer step: ``finite`` (this rank's loss) is
                               all-reduced ONCE per step; False (no update) when any rank saw NaN/inf;
- ``lr``                       the current learning rate;
- ``save(folder)`` / ``load(folder)``  the engine's own state inside a checkpoint folder (collective).

Both get the project's own model, SGD optimizer and poly schedule. bf16 autocast on CUDA
(``train.precision=auto``), fp32 on CPU.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from .checkpoint import read
from .config import Config
from .distributed import DistState, all_finite
from .errors import CheckpointError, ConfigError
from .eval.inference import input_dtype
from .model.bundle import save_atomic

log = logging.getLogger(__name__)


def poly_lambda(iterations: int, power: float):
    """Poly LR (PSCV protocol): lr · (1 - it / max)^power."""
    return lambda it: max(0.0, 1.0 - it / iterations) ** power


def build_optimizer(model: nn.Module, cfg: Config):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(cfg.train.iterations, cfg.optim.poly_power))
    return opt, sched


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    if cfg.train.precision == "fp32" or (cfg.train.precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


class Engine:
    """The engine protocol (see the module docstring); subclasses implement every method."""

    def __init__(self, model: nn.Module, cfg: Config, state: DistState):
        self.cfg, self.state = cfg, state
        self.amp = autocast_dtype(cfg, state.device)

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.state.device.type, dtype=self.amp)

    @property
    def module(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def no_sync(self, last_micro: bool):
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        raise NotImplementedError

    def step(self, loss_finite: torch.Tensor) -> bool:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError

    def load(self, folder: Path) -> None:
        raise NotImplementedError


class DDPEngine(Engine):
    def __init__(self, model: nn.Module, cfg: Config, state: DistState):
        super().__init__(model, cfg, state)
        self.raw = model
        if cfg.model.sync_bn and state.device.type != "cuda":
            raise ConfigError("model.sync_bn=true needs CUDA devices: torch's SyncBatchNorm has no CPU "
                             "implementation; set model.sync_bn=false for CPU runs")
        if cfg.model.sync_bn and state.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.raw = model
        self.optimizer, self.scheduler = build_optimizer(model, cfg)
        self.ddp = None
        if state.distributed:
            kwargs = {"device_ids": [state.device.index]} if state.device.type == "cuda" else {}
            model = self.ddp = nn.parallel.DistributedDataParallel(model, **kwargs)
        self.model = torch.compile(model) if cfg.model.compile else model

    @property
    def module(self) -> nn.Module:
        return self.raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(x)

    def no_sync(self, last_micro: bool):
        if not last_micro and self.ddp is not None:  # also when self.model is its compiled wrapper
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        (loss / self.cfg.train.grad_accum).backward()

    def step(self, loss_finite: torch.Tensor) -> bool:
        if not all_finite(loss_finite):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    OPTIM = "optim.pt"

    def save(self, folder: Path) -> None:
        """Rank 0 writes the optimizer and scheduler (identical on every rank under DDP)."""
        if self.state.is_main:
            save_atomic({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                        folder / self.OPTIM)

    def load(self, folder: Path) -> None:
        sd = read(folder / self.OPTIM)
        try:
            self.optimizer.load_state_dict(sd["optimizer"])
            self.scheduler.load_state_dict(sd["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{folder / self.OPTIM}: optimizer state does not fit this model and optimizer "
                                  f"({type(exc).__name__}: {exc})") from None


class DeepSpeedEngine(Engine):
    """DeepSpeed with the project's own optimizer and scheduler, ZeRO stage 0-2.

    DeepSpeed runs the gradient accumulation itself (``gradient_accumulation_steps``); the NaN guard
    runs before ``engine.step()`` on the accumulation boundary."""

    def __init__(self, model: nn.Module, cfg: Config, state: DistState, local_batch: int):
        super().__init__(model, cfg, state)
        import deepspeed

        # ZeRO flattens parameters as byte views: channels_last weights (non-unit last stride) cannot be
        model = model.to(memory_format=torch.contiguous_format)
        self.raw = model
        optimizer, scheduler = build_optimizer(model, cfg)
        ds_config = {
            "train_micro_batch_size_per_gpu": local_batch,
            "gradient_accumulation_steps": cfg.train.grad_accum,
            "zero_optimization": {"stage": cfg.train.zero_stage},
            "zero_allow_untested_optimizer": True,  # torch SGD: ZeRO 1-2 shard its momentum like any state
            "bf16": {"enabled": self.amp is not None},  # auto on CUDA, or train.precision=bf16 (also on CPU)
            "gradient_clipping": 0.0,  # DeepSpeed may clip by default; the protocol (and the DDP engine) does not
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
            dist_init_required=None)  # joins our group; creates one for a single process
        self.amp = None  # DeepSpeed's bf16 mode casts the model itself

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x.to(input_dtype(self.engine.module)))  # bf16 mode casts the module

    def no_sync(self, last_micro: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        self.engine.backward(loss)  # scales by 1/grad_accum itself
        if not last_micro:
            self.engine.step()  # inside an accumulation cycle: DeepSpeed only counts the micro-step

    def step(self, loss_finite: torch.Tensor) -> bool:
        if not all_finite(loss_finite):  # the run stops: no need to re-align DeepSpeed's counters
            self.engine.zero_grad()
            return False
        self.engine.step()
        return True

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, folder: Path) -> None:
        """DeepSpeed's own sharded state (module, optimizer, scheduler); collective."""
        self.engine.save_checkpoint(str(folder / "engine"), tag="state", save_latest=False)

    def load(self, folder: Path) -> None:
        try:
            path, _ = self.engine.load_checkpoint(str(folder / "engine"), tag="state", load_module_strict=True)
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'engine'}: DeepSpeed state could not be loaded "
                                  f"({type(exc).__name__}: {exc})") from None
        if path is None:
            raise CheckpointError(f"{folder / 'engine'}: no DeepSpeed state found in the checkpoint")


def build_engine(model: nn.Module, cfg: Config, state: DistState, local_batch: int) -> Engine:
    if cfg.train.engine == "deepspeed":
        return DeepSpeedEngine(model, cfg, state, local_batch)
    return DDPEngine(model, cfg, state)
