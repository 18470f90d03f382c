"""Evaluation end to end: CLI output, W=2 distributed == W=1, bad input."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pscv_dist.model.bundle import load_model
from pscv_dist.cli import main
from pscv_dist.data import SliceStore
from pscv_dist.distributed import DistState
from pscv_dist.eval.evaluate import evaluate
from pscv_dist.eval.metrics import case_metrics

from .helpers import random_checkpoint


def test_cli_evaluate_writes_results_and_plots(phantom_store, tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / "ckpt", num_classes=4, size=32)
    out = tmp_path / "results.json"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--store", str(phantom_store), "--split", "all",
               "--out", str(out), "--plots", str(tmp_path / "plots")])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("mean_dsc", "mean_hd95", "per_class", "per_case", "convention", "checkpoint", "split"):
        assert key in res
    assert res["convention"] == "strict" and res["split"] == "all" and len(res["per_case"]) == 6
    assert set(res["per_class"]) == {"organ", "wall", "cavity"}
    assert "mean_hd95_mm" in res  # the phantoms have a spacing
    assert (tmp_path / "plots" / "dsc_boxplot.png").stat().st_size > 0
    assert (tmp_path / "plots" / "overlay_best.png").exists() and (tmp_path / "plots" / "overlay_worst.png").exists()
    assert "| **mean** |" in capsys.readouterr().out


def test_evaluate_matches_direct_metrics(phantom_store, tmp_path):
    from pscv_dist.eval.inference import predict_volume

    model, meta = load_model(random_checkpoint(tmp_path / "c", size=32))
    store = SliceStore(str(phantom_store))
    res = evaluate(model, store, store.cases[:2], 32, "literature").results
    for entry, case in zip(res["per_case"], store.cases[:2]):
        vol = store.volume(case)
        pred = predict_volume(model, vol["image"], 32)
        expected = case_metrics(pred, vol["label"], store.classes, "literature", vol["spacing"])
        assert {k: v for k, v in entry.items() if k != "case"} == expected


def _worker(rank, world, tmp, store_path, ckpt, cases):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    model, meta = load_model(ckpt)
    state = DistState(rank=rank, world_size=world)
    res = evaluate(model, SliceStore(store_path), cases, meta["size"], "strict", 2, state).results
    torch.save(json.dumps(res), f"{tmp}/res{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(phantom_store, tmp_path):
    ckpt = str(random_checkpoint(tmp_path / "c", size=32, seed=3))
    store = SliceStore(str(phantom_store))
    cases = store.cases[:5]  # odd count: ranks get 3 and 2 cases, none duplicated
    mp.spawn(_worker, args=(2, str(tmp_path), str(phantom_store), ckpt, cases), nprocs=2, join=True)
    model, meta = load_model(ckpt)
    single = evaluate(model, store, cases, meta["size"], "strict", 2).results
    for r in range(2):
        assert json.loads(torch.load(tmp_path / f"res{r}.pt")) == json.loads(json.dumps(single))
    assert [c["case"] for c in single["per_case"]] == cases


def test_checkpoint_of_another_class_count(phantom_store, tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / "c9", num_classes=9)
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--store", str(phantom_store), "--split", "all"])
    err = capsys.readouterr().err
    assert rc == 2 and "model predicts 9 classes" in err and "has 4 classes" in err


def test_missing_checkpoint_and_split(phantom_store, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--store", str(phantom_store), "--split", "all"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    ckpt = random_checkpoint(tmp_path / "c")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--store", str(phantom_store), "--split", "test"]) == 2
    assert "split 'test' not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "junk.pt"), "--store", str(phantom_store), "--split", "all"]) == 2
    assert "not a loadable checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_evaluate_under_torchrun_equals_single_process(phantom_store, tmp_path):
    import os
    import subprocess
    import sys

    ckpt = random_checkpoint(tmp_path / "c", size=32, seed=4)
    args = ["evaluate", "--checkpoint", str(ckpt), "--store", str(phantom_store), "--split", "all"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "pscv_dist.cli", *args, "--out", str(tmp_path / "two.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    for key in ("mean_dsc", "mean_hd95", "per_class", "per_case", "n_empty_prediction"):
        assert one[key] == two[key], key
    assert proc.stdout.count("| **mean** |") == 1  # the table is printed once, by rank 0
