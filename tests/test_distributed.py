"""Distributed helpers on real gloo processes: an existing process group (Ray Train, a harness) is
reused, and the finite flag is agreed by every rank."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pscv_dist.distributed import all_finite, init_distributed, shutdown

pytestmark = pytest.mark.slow


def _worker(rank, world, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    state = init_distributed()
    local = torch.tensor(float("nan") if rank == 1 else 1.0)
    result = (state.rank, state.world_size, state.owns_group, all_finite(local), all_finite(torch.tensor(1.0)))
    shutdown(state)  # does not destroy a group it does not own
    torch.save(result + (dist.is_initialized(),), f"{tmp}/r{rank}.pt")
    dist.destroy_process_group()


def test_existing_group_is_reused_and_flags_agree(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r, w, owns, nan_flag, ok_flag, still_up = torch.load(tmp_path / f"r{rank}.pt")
        assert (r, w, owns) == (rank, 2, False)
        assert nan_flag is False and ok_flag is True  # rank 1's NaN stops both ranks
        assert still_up


def test_single_process_without_environment(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    state = init_distributed()
    assert (state.rank, state.world_size, state.distributed, state.is_main) == (0, 1, False, True)
