"""The training input path (store -> rank's batch -> augmentation): every slice source returns what
the reader returns, the batches do not depend on where they are made (workers, cache), the global
batch is the same on 1, 2 and 3 ranks, resume is bit-identical, and `pscv bench input` measures the
same object."""
import numpy as np
import pytest
import torch

from pscv_dist.cli import main as cli_main
from pscv_dist.config import AugmentConfig, DataConfig
from pscv_dist.data import SliceStore
from pscv_dist.data.cache import MemorySource, ShardSource, StoreSource, build_source
from pscv_dist.data.pipeline import InputPipeline


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """150 slices over 3 shards (the sources must cross shard boundaries)."""
    from pscv_dist.data.prepare import PrepareConfig, prepare
    from pscv_dist.data.synthetic import write_phantoms

    root = tmp_path_factory.mktemp("pipe")
    src = write_phantoms(root / "src", 6, seed=4, shape=(25, 24, 24))
    out = root / "s.zarr"
    prepare(PrepareConfig(src=str(src), out=str(out), layout="nifti", size=16, seed=2, folds=2, progress=False))
    return str(out)


def _reference(store, idx):
    items = [store[int(i)] for i in idx]
    return (np.stack([it["image"][0].numpy() for it in items]), np.stack([it["label"].numpy() for it in items]),
            np.stack([it["points"].numpy() for it in items]))


def test_every_source_returns_what_the_reader_returns(big_store):
    store = SliceStore(big_store)
    train = store.slice_indices(store.split("fold0/train"))
    idx = np.random.default_rng(0).choice(train, 40)
    ref_image, ref_label, ref_points = _reference(store, idx)
    for source in (MemorySource(store, train), ShardSource(store, window=1), StoreSource(store)):
        image, label = source.fetch(idx)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(label, ref_label)
    np.testing.assert_array_equal(store.points(idx), ref_points)
    with pytest.raises(IndexError, match="not in the cached split"):
        MemorySource(store, train).fetch([int(np.setdiff1d(np.arange(len(store)), train)[0])])


def test_shard_source_decodes_each_shard_once_per_window(big_store):
    from pscv_dist.data.stream import StepBatchSampler

    store = SliceStore(big_store)
    items = np.arange(len(store))
    sampler = StepBatchSampler(items, 10, 0, 1, seed=0, order="window", window=3)
    source = ShardSource(store, window=3)
    for step in range(len(items) // 10):  # one epoch
        source.fetch(sampler.batch_at(step))
    assert source.reads == 3  # 150 slices = 3 shards, each decoded once


def test_auto_cache_picks_memory_when_the_split_fits(big_store):
    store = SliceStore(big_store)
    items = store.slice_indices()
    assert build_source(store, items, "auto", 1.0, 4).mode == "memory"
    assert build_source(store, items, "auto", 1e-9, 4).mode == "shards"


def _batches(store_path, steps, *, start=0, rank=0, world=1, batch=12, augment=True, **data):
    store = SliceStore(store_path)
    items = store.slice_indices(store.split("fold0/train"))
    cfg = DataConfig(store=store_path, batch_size=batch, **{"num_workers": 0, **data})
    aug = AugmentConfig(p_rotate=1.0) if augment else AugmentConfig(backend="none")
    pipe = InputPipeline(store, items, cfg, aug, seed=3, rank=rank, world=world,
                         start_step=start, steps=steps)
    return list(pipe)


def _equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


def test_batches_do_not_depend_on_workers_or_cache(big_store):
    ref = _batches(big_store, 6)
    assert ref[0]["label"].dtype == torch.int64 and ref[0]["points"].dtype == torch.int64
    assert ref[0]["image"].shape == (12, 1, 16, 16)
    _equal(ref, _batches(big_store, 6, num_workers=2))
    for cache in ("shards", "none"):
        _equal(ref, _batches(big_store, 6, cache=cache))


def test_workers_lap_the_shared_slot_ring_without_overwriting_a_batch(big_store):
    """2 workers, prefetch 1: a ring of 4 slots, lapped 5 times while every batch is kept; a slot
    written before the training process copied it out would show as a batch that differs."""
    ref = _batches(big_store, 20)
    _equal(ref, _batches(big_store, 20, num_workers=2, prefetch=1))


def test_resume_gives_the_same_batches(big_store):
    straight = _batches(big_store, 8, shuffle="window", shuffle_window=2, num_workers=1)
    _equal(straight[5:], _batches(big_store, 3, start=5, shuffle="window", shuffle_window=2))


@pytest.mark.parametrize("shuffle", ["global", "window"])
def test_global_batch_is_the_same_on_one_two_and_three_ranks(big_store, shuffle):
    def gather(world):
        per_rank = [_batches(big_store, 3, rank=r, world=world, shuffle=shuffle, augment=False)
                    for r in range(world)]
        return [torch.cat([per_rank[r][s]["image"] for r in range(world)]) for s in range(3)]

    one = gather(1)
    for world in (2, 3):
        for a, b in zip(one, gather(world)):
            assert torch.equal(a, b)


def test_gpu_placement_augments_after_the_copy_with_the_same_draw(big_store, monkeypatch):
    """No GPU here: the device is CPU, but the pipeline is told it is a GPU one (augmentation moved
    out of the dataset into the main process). The batches must not change."""
    ref = _batches(big_store, 4)
    store = SliceStore(big_store)
    items = store.slice_indices(store.split("fold0/train"))
    pipe = InputPipeline(store, items, DataConfig(store=big_store, batch_size=12, num_workers=0),
                         AugmentConfig(p_rotate=1.0), seed=3, steps=4)
    pipe.on_gpu = True  # what device="cuda" sets (pin_memory is then also requested; harmless on CPU)
    pipe.dataset.augmenter = None
    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__",
                        _no_pin(torch.utils.data.DataLoader.__init__))
    _equal(ref, list(pipe))


def _no_pin(init):
    def wrapped(self, *args, **kwargs):
        kwargs["pin_memory"] = False
        return init(self, *args, **kwargs)
    return wrapped


def test_bench_input_cli(big_store, capsys):
    assert cli_main(["bench", "input", big_store, "--workers", "0", "--steps", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "slices/s" in out and "memory / global" in out and "16x16" in out
    assert cli_main(["bench", "input", big_store, "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps must be >= 1" in err[0]
