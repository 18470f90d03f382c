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


def test_window_order_is_a_permutation_that_stays_inside_its_windows():
    from pscv_dist.data.format import SHARD_SLICES

    items = np.concatenate([np.arange(0, 150), np.arange(200, 420)])  # 370 items over 7 shards
    s = StepBatchSampler(items, 10, 0, 1, seed=2, order="window", window=2)
    for epoch in (0, 1):
        perm = items[s._perm(epoch)]
        assert sorted(perm.tolist()) == items.tolist()
        shards = perm // SHARD_SLICES
        # consecutive runs of the order use at most `window` shards until every slice of them is used
        seen, current = set(), set()
        for sh in shards:
            if sh not in current:
                if len(current) == 2:
                    seen |= current
                    current = set()
                assert sh not in seen, "a shard came back after its window was done"
                current.add(sh)
    assert not np.array_equal(s._perm(0), s._perm(1))


def test_window_order_splits_the_global_batch_exactly_too():
    items = np.arange(0, 300)
    for world in (1, 2, 3):
        parts = [StepBatchSampler(items, 12, r, world, seed=5, order="window", window=3).batch_at(9)
                 for r in range(world)]
        assert sum(parts, []) == StepBatchSampler(items, 12, 0, 1, seed=5, order="window", window=3).batch_at(9)
