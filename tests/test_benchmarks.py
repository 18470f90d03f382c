"""The benchmark scripts that CI cannot time still run: the GPU check says there is no GPU, and its
code runs on the CPU at toy sizes; the CV pool benchmark's byte model is the loss's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_gpu_check_says_there_is_no_gpu_and_measures_nothing():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run for real")
    proc = _run("benchmarks/gpu_check.py")
    assert proc.returncode == 0 and "no GPU here" in proc.stdout and "img/s" not in proc.stdout


@pytest.mark.slow
def test_gpu_check_code_runs_on_the_cpu(tmp_path):
    proc = _run("benchmarks/gpu_check.py", "--device", "cpu", "--size", "32", "--batch", "4", "--steps", "2",
                "--skip", "compile", "--workers", "1", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["steps"]) == {"fp32 channels_last eager bare", "fp32 channels_last eager ours"}
    assert all(v["images_per_s"] > 0 for v in res["steps"].values())
    assert 0 <= res["stall"]["kornia"]["waiting_share"] < 1


def test_pool_bytes_follow_the_collectives_sizes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_cv_pool import bytes_per_step

    b, k, d = 12, 4, 256 * 256
    # global: (W-1)·b·K·D fp32 values received forward, as many backward: W=64 -> 2 · 756 MiB
    assert bytes_per_step(64, b, k, d, None) / 2**20 == pytest.approx(2 * 756, rel=1e-12)
    # pool of 12: two ring all-reduces of a (12, K, D) buffer, 2(W-1)/W of it each
    assert bytes_per_step(64, b, k, d, 12) == pytest.approx(2 * 2 * 63 / 64 * 12 * k * d * 4)
    assert bytes_per_step(2, b, k, d, 50) == bytes_per_step(2, b, k, d, None)  # P >= N is the global pool


def test_loss_scales_prints_every_term_against_pce(phantom_store):
    proc = _run("benchmarks/loss_scales.py", str(phantom_store), "--batches", "1", "--batch", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("init ")]
    assert [r[1] for r in rows] == ["pCE", "MS", "CV", "EntMini", "TV"]
    assert rows[0][3:] == ["1", "1", "1"]  # pCE against itself
    for r in rows[1:]:  # λ* is pCE's parameter-gradient norm over the term's: their ratio's inverse
        assert float(r[5]) == pytest.approx(1 / float(r[4]), rel=6e-3)  # λ* printed to 3 digits


@pytest.mark.slow
def test_bench_flops_counts_the_step_and_prints_shares_of_the_measured_peaks():
    proc = subprocess.run([sys.executable, "bench_flops.py", "--size", "32", "--batch", "2", "--steps", "1"],
                          cwd=ROOT / "benchmarks", env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    gflop = float(proc.stdout.split("forward + backward): ")[1].split()[0])
    assert gflop > 0
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith(("bare", "trainer"))}
    assert set(rows) == {"bare", "trainer"}
    # GFLOP/s column = counted FLOPs / step time (printed with rounding)
    ms, rate = float(rows["trainer"][1]), float(rows["trainer"][2])
    assert rate == pytest.approx(gflop / (ms / 1e3), rel=0.05, abs=0.15)


@pytest.mark.slow
def test_bench_scaling_runs_the_trainer_on_1_and_2_ranks_and_counts_ddp_bytes():
    from pscv_dist.model import UNet

    proc = subprocess.run([sys.executable, "bench_scaling.py", "--size", "32", "--batch", "4", "--steps", "2"],
                          cwd=ROOT / "benchmarks", env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rows = [line.rsplit(None, 6) for line in lines if line.startswith(("1 rank", "2 ranks"))]
    assert [(r[1], r[3]) for r in rows] == [("1", "4"), ("1", "4"), ("2", "8"), ("2", "4")]  # ranks, global batch
    for r in rows:  # img/s = global batch / step time (both printed rounded)
        assert float(r[5]) == pytest.approx(int(r[3]) / (float(r[4]) / 1e3), rel=0.05, abs=0.5)
    # DDP's ring all-reduce: 2(W-1)/W of the UNet's fp32 gradients, counted independently here
    n = sum(p.numel() for p in UNet(1, 4).parameters())
    assert f"{n:,} gradients" in proc.stdout
    table = {(int(c[0]), int(c[1])): c[2:] for c in (line.split() for line in lines)
             if len(c) == 7 and c[0] in ("32", "256")}
    assert sorted(table) == [(32, 2), (32, 8), (32, 64), (256, 2), (256, 8), (256, 64)]
    b, k = 4, 4  # the phantoms' background + 3 organs
    for (size, w), (ddp, cv, cv_x, pool, pool_x) in table.items():
        d = size * size
        want_ddp = 2 * (w - 1) / w * n * 4
        want_cv = 2 * (w - 1) * b * k * d * 4  # every other rank's maps, forward and backward
        want_pool = want_cv if w * b <= 12 else 2 * 2 * (w - 1) / w * 12 * k * d * 4
        assert float(ddp) == pytest.approx(want_ddp / 2**20, abs=0.05)
        assert float(cv.replace(",", "")) == pytest.approx(want_cv / 2**20, abs=0.05)
        assert float(pool.replace(",", "")) == pytest.approx(want_pool / 2**20, abs=0.05)
        assert float(cv_x.rstrip("x")) == pytest.approx(want_cv / want_ddp, abs=0.05)
        assert float(pool_x.rstrip("x")) == pytest.approx(want_pool / want_ddp, abs=0.05)


def test_median_times_times_the_functions_in_turns():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from timing import median_times

    calls = []
    got = median_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-up each, then turns
    assert set(got) == {"a", "b"} and all(t >= 0 for t in got.values())


@pytest.mark.slow
def test_bench_cv_prints_its_table_at_toy_size():
    proc = _run("benchmarks/bench_cv.py", "--size", "16", "--batch", "4", "--repeats", "1", "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [row[0] for row in res["rows"]]
    assert "ratio eager CV / floor (goal <= 1.5)" in names and len(res["gather"]) == 6


@pytest.mark.slow
def test_divergence_puts_a_zero_weight_on_pce_and_a_tiny_one_off_it(phantom_store):
    proc = _run("benchmarks/divergence.py", str(phantom_store), "--steps", "4", "--every", "2",
                "--arm", "zero=loss.name=entmini,loss.lambda_ent=0", "--arm", "nudged=loss.name=entmini,loss.lambda_ent=1e-8",
                "--set", "data.train_split=fold0/train", "--set", "data.batch_size=4", "--set", "model.base_width=8",
                "--set", "model.depth=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {(r[0], int(r[1])): (float(r[2]), float(r[3])) for r in map(str.split, proc.stdout.splitlines())
            if len(r) == 4 and r[0] in ("zero", "nudged")}
    assert set(rows) == {(arm, step) for arm in ("zero", "nudged") for step in (2, 4)}
    assert rows["zero", 2] == rows["zero", 4] == (0.0, 0.0)  # the same path: the same bits
    assert rows["nudged", 4][0] > 0  # a 1e-8 term changes the weights


@pytest.mark.parametrize("args,says", [(["--arm", "justaname"], "expected NAME=key=value"),
                                       (["--arm", "pce=loss.name=ms"], "is the reference"),
                                       (["--arm", "../up=loss.name=ms"], "a plain folder name"),
                                       (["--every", "0"], "expected --every >= 1"),
                                       (["--out", "HOLDS_A_FILE"], "is not an empty folder")])
def test_divergence_refuses_bad_input_in_one_line_and_writes_nothing(phantom_store, tmp_path, args, says):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "theirs.txt").write_text("not ours")
    args = [str(out) if a == "HOLDS_A_FILE" else a for a in args]
    proc = _run("benchmarks/divergence.py", str(phantom_store), *args)
    assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
