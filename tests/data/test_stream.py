"""The step-indexed sample stream: exact global-batch split, resumable by step, full epochs."""
import numpy as np
import pytest

from pscv_dist.data.stream import StepBatchSampler


def _sampler(rank=0, world=1, start=0, steps=None, items=np.arange(100, 137), gb=12):
    return StepBatchSampler(items, gb, rank, world, seed=4, start_step=start, steps=steps)


def test_ranks_split_the_global_batch_exactly():
    for world in (2, 3, 4):
        for step in (0, 3, 7):
            one = _sampler().batch_at(step)
            parts = [_sampler(r, world).batch_at(step) for r in range(world)]
            assert sum(parts, []) == one and all(len(p) == 12 // world for p in parts)


def test_resume_by_step_continues_the_stream():
    straight = list(_sampler(steps=10))
    resumed = list(_sampler(start=6, steps=4))
    assert straight[6:] == resumed


def test_each_epoch_is_a_permutation_of_the_items():
    items = np.arange(100, 136)  # 36 items = 3 global batches of 12
    seen = sum(list(StepBatchSampler(items, 12, 0, 1, seed=1, steps=6)), [])
    assert sorted(seen[:36]) == list(items) and sorted(seen[36:]) == list(items)
    assert seen[:36] != seen[36:]  # a new permutation each epoch


def test_batch_not_divisible_by_world():
    with pytest.raises(ValueError, match="cannot be split exactly over 5 ranks"):
        _sampler(0, 5)


def test_empty_split():
    with pytest.raises(ValueError, match="no slices"):
        StepBatchSampler(np.array([], dtype=int), 4, 0, 1, 0)
