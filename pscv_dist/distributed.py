"""Distributed state and the collectives the method needs, in one place.

The state is an explicit object (:class:`DistState`) handed to whoever needs it; nothing here keeps
globals. ``init_distributed`` reuses a process group that already exists (Ray Train, a test
harness), otherwise reads the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
"""
from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistState:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when init_distributed created the group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistState:
    """Join (or create) the default process group: NCCL on CUDA, gloo on CPU, chosen automatically."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_available() and dist.is_initialized():
        return DistState(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), device, False)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistState(device=device)
    backend = backend or ("nccl" if cuda else "gloo")
    timeout = datetime.timedelta(seconds=timeout_s)
    if "TORCHELASTIC_RESTART_COUNT" in os.environ:
        # With the agent's store (one torchrun agent: the default), that store outlives restarts and
        # env:// adds no per-attempt prefix: a restarted rank would read a dead peer's gloo address,
        # so namespace by attempt (all workers of one agent share its restart count). Without it
        # (multi-node: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in launch/torchrun_multi.sh) rank 0
        # hosts a fresh store each rendezvous round, and a prefix would be wrong: a node started
        # again after a loss counts from 0 while the surviving agent counts on.
        rank = int(os.environ["RANK"])
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=not agent and rank == 0, timeout=timeout, multi_tenant=not agent)
        if agent:
            store = dist.PrefixStore(f"pscv/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    return DistState(dist.get_rank(), dist.get_world_size(), local_rank, backend, device, True)


def shutdown(state: DistState) -> None:
    if state.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(state: DistState) -> None:
    """Wait for every rank (a no-op in one process)."""
    if state.distributed:
        dist.barrier()


def gather_objects(local: list, state: DistState | None) -> list:
    """Concatenate every rank's list of picklable objects, in rank order (a copy in one process)."""
    if state is None or not state.distributed:
        return list(local)
    parts: list[list | None] = [None] * state.world_size
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]  # type: ignore[union-attr]


def _active(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for this rank's slice
    (reduce-scatter on NCCL; all-reduce then slice on gloo, which has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        dist.all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        grad = grad.contiguous()
        n = grad.shape[0] // world
        if dist.get_backend(group) == "nccl":
            out = grad.new_empty((n, *grad.shape[1:]))
            dist.reduce_scatter_single(out, grad, group=group)
            return out, None
        dist.all_reduce(grad, group=group)
        return grad[rank * n:(rank + 1) * n].clone(), None


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0 (rank order), with gradients flowing back to
    the rank that owns each row. Identity without a process group. Every rank must pass the same
    shape (the global batch is split exactly)."""
    if not _active(group):
        return x
    return _GatherWithGrad.apply(x, group)


class _AllReduceWithGrad(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's loss depends on the
    sum, so each rank's input gets the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``x`` over the ranks, differentiable (identity without a process group). The bytes
    each rank moves do not depend on the world size (ring all-reduce: 2(W-1)/W of ``x``)."""
    if not _active(group):
        return x
    return _AllReduceWithGrad.apply(x, group)


def gather_no_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    if not _active(group):
        return x
    out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
    dist.all_gather_single(out, x.contiguous(), group=group)
    return out


def rank_in(group=None) -> tuple[int, int]:
    """(rank, world size) within ``group`` (0, 1 without one)."""
    if not _active(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_finite(value: torch.Tensor, group=None) -> bool:
    """True when ``value`` is finite on EVERY rank (all-reduce MIN of the local flags)."""
    flag = torch.isfinite(value.detach()).all().to(torch.int32).reshape(1)
    if _active(group):
        if dist.get_backend(group) == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(flag.item())


def all_reduce_mean(value: torch.Tensor, group=None) -> torch.Tensor:
    out = value.detach().clone()
    if _active(group):
        dist.all_reduce(out, group=group)
        out /= dist.get_world_size(group)
    return out
