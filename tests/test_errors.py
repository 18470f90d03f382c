"""The error vocabulary at the CLI boundary: one line, exit 2 (3 for a stopped run), a traceback only
with -v, operating-system errors in words, and data errors from DataLoader workers unwrapped."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pscv_dist.cli import main as cli_main
from pscv_dist.errors import (ConfigError, NonFiniteLoss, NotInStore, StoreError, cli_boundary, describe,
                              unwrap_worker_error)
from pscv_dist.trainer import next_batch


def _raise(exc):
    def fn():
        raise exc
    return fn


def test_user_errors_are_one_line_and_exit_2(capsys):
    assert cli_boundary("x", _raise(StoreError("s.zarr: slices/image: file c/0 is missing"))) == 2
    err = capsys.readouterr().err
    assert err == "pscv x: error: s.zarr: slices/image: file c/0 is missing\n"
    assert cli_boundary("x", _raise(NotInStore("s.zarr: split 'nope' not found"))) == 2
    assert capsys.readouterr().err == "pscv x: error: s.zarr: split 'nope' not found\n"
    assert cli_boundary("x", _raise(ConfigError("two\nlines"))) == 2
    assert capsys.readouterr().err == "pscv x: error: two lines\n"


def test_stopped_run_exits_3_and_verbose_shows_the_traceback(capsys):
    assert cli_boundary("train", _raise(NonFiniteLoss("step 4: NaN")), verbose=True) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("pscv train: stopped: step 4: NaN\n")


@pytest.mark.parametrize("bug", [ZeroDivisionError("bug"), ValueError("bug"), KeyError("bug"), TypeError("bug")])
def test_bugs_keep_their_traceback(bug):
    """Only pscv's own errors and the operating system's are the user's to fix: a stray ValueError
    or KeyError is a bug, and hiding it behind one line would hide where it came from."""
    with pytest.raises(type(bug)):
        cli_boundary("x", _raise(bug))


def test_a_missing_split_or_case_is_a_store_error_and_still_a_key_error(phantom_store):
    from pscv_dist.data import SliceStore

    store = SliceStore(str(phantom_store))
    for ask in (lambda: store.split("fold9/val"), lambda: store.volume("nope")):
        with pytest.raises(NotInStore) as err:
            ask()
        assert isinstance(err.value, KeyError) and str(phantom_store) in describe(err.value)


def test_os_errors_in_words(tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(OSError) as err:
        open(loop)
    assert err.value.errno == errno.ELOOP and describe(err.value) == f"{loop}: symlink loop"
    (tmp_path / "afile").write_text("x")
    rc = cli_main(["inspect", str(loop)])
    out = capsys.readouterr().err
    assert rc == 2 and "symlink loop" in out and "Traceback" not in out


class _Broken(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise StoreError("s.zarr: slices/image (slice 3): chunk could not be decoded")


def test_data_errors_from_a_dataloader_worker_arrive_as_one_line():
    it = iter(DataLoader(_Broken(), batch_size=2, num_workers=1))
    with pytest.raises(StoreError) as err:
        next_batch(it)
    assert str(err.value) == "s.zarr: slices/image (slice 3): chunk could not be decoded"
    plain = StoreError("one line")
    assert unwrap_worker_error(plain) is plain
    assert torch.utils.data.get_worker_info() is None


def test_symlink_loops_are_named_for_predict_input_and_checkpoint(tmp_path, capsys, phantom_src):
    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop, loop)
    ckpt_loop = tmp_path / "ck.pt"
    os.symlink(ckpt_loop, ckpt_loop)
    image = sorted((phantom_src / "imagesTr").glob("*.nii.gz"))[0]
    for args in (["predict", "--checkpoint", str(ckpt_loop), str(loop), str(tmp_path / "o.nii.gz")],
                 ["predict", "--checkpoint", str(ckpt_loop), str(image), str(tmp_path / "o.nii.gz")]):
        rc = cli_main(args)
        err = capsys.readouterr().err
        assert rc == 2 and "symlink loop" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.nii.gz").exists()
