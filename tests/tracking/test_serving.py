"""`mlflow models serve` of the registered segmenter, for real: a uvicorn server on a free loopback
port answers POST /invocations with the label volume (the same labels as `pscv predict`), and a
request of the wrong rank or dtype with HTTP 400 and a message saying what was wrong."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pscv_dist.cli import main as cli_main
from pscv_dist.data.volume_io import read_nifti
from pscv_dist.tracking import register_run

from .registry_fixtures import mlflow_store  # noqa: F401  (a fixture)

HEALTH_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"no answer from {url} within {HEALTH_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow and its uvicorn child)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
    else:  # mlflow itself ended; its uvicorn child may not have
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow  # starts a real scoring server (~15-30 s on 2 CPU cores)
def test_served_segmenter_answers_like_pscv_predict_and_refuses_bad_requests(mlflow_store, phantom_src, tmp_path):
    register_run(mlflow_store.runs["A"], "served", "champion", mlflow_store.uri)
    src = sorted((phantom_src / "imagesTr").glob("*.nii.gz"))[0]
    expected = tmp_path / "pscv_predict.nii.gz"
    assert cli_main(["predict", "--checkpoint", str(mlflow_store.checkpoints["A"]), str(src), str(expected)]) == 0
    want, _ = read_nifti(expected)
    image = np.asarray(read_nifti(src)[0], dtype=np.float32)

    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": mlflow_store.uri}
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", "models:/served@champion",
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = post(url, json.dumps({"inputs": image.tolist()}).encode())
        assert status == 200, body[:2000]
        got = np.asarray(json.loads(body)["predictions"])
        assert got.shape == want.shape and len(np.unique(want)) > 1
        np.testing.assert_array_equal(got, want)
        # the wrong rank, and strings: 400 with the reason
        for request, says in (({"inputs": image[0].tolist()}, "Shape of input (40, 48) does not match expected "
                                                               "shape (-1, -1, -1)"),
                              ({"inputs": [[["a", "b"]]]}, "could not convert string to float")):
            status, body = post(url, json.dumps(request).encode())
            assert status == 400, (status, body[:2000])
            message = json.loads(body)["message"]
            assert says in message and "Traceback" not in message, message[-2000:]
    finally:
        stop(proc)
