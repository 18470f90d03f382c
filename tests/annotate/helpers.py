"""A real `pscv annotate` server for the tests: the CLI in its own process on a free loopback port
(``--port 0``: the server binds, then prints its address), plain urllib requests, a clean stop."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

START_TIMEOUT_S = 120


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    proc: subprocess.Popen
    log: Path
    out: Path  # CLICKS_DIR

    def request(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
                timeout: float = 60) -> tuple[int, bytes, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = dict(headers or {})
        if body is not None and raw is None:
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, method: str, path: str, body=None, **kw) -> tuple[int, dict]:
        status, data, _ = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def get(self, path: str) -> dict:
        status, answer = self.json("GET", path)
        assert status == 200, answer
        return answer

    def png(self, path: str) -> np.ndarray:
        from PIL import Image

        status, data, headers = self.request("GET", path)
        assert status == 200 and headers["content-type"] == "image/png", data[:300]
        return np.asarray(Image.open(io.BytesIO(data)))


def start(args: list[str], out: Path, log: Path, env: dict | None = None) -> Server:
    """``pscv annotate ARGS --out OUT --port 0``; waits until the page answers."""
    cmd = [sys.executable, "-m", "pscv_dist.cli", "annotate", *args, "--out", str(out), "--port", "0"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pscv annotate exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        found = re.search(r"page\s+(http://\S+?)/?\s", log.read_text())
        if found:
            url = found.group(1)
            break
        time.sleep(0.1)
    if url is None:
        stop_process(proc)
        raise AssertionError(f"no address printed within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    server = Server(url, proc, log, out)
    status, _, _ = server.request("GET", "/api/info")  # the socket listens before uvicorn accepts: this waits
    assert status == 200
    return server


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGINT (Ctrl-C) to the server's own process group, SIGKILL if it does not stop."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def stop(server: Server) -> int:
    return stop_process(server.proc)


def label_of(src: Path, case: str) -> np.ndarray:
    """The dense label of a phantom case, (Z, H, W) as the store orders it."""
    from pscv_dist.data.volume_io import read_nifti

    return read_nifti(src / "labelsTr" / f"{case}.nii.gz")[0]


def clicks_from_label(label: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """One point per class present on each slice, at a random voxel of that class (slot ids)."""
    points = []
    for z in range(label.shape[0]):
        for c in np.unique(label[z]).tolist():
            ys, xs = np.nonzero(label[z] == c)
            i = int(rng.integers(len(ys)))
            points.append({"id": f"c{c}z{z}", "class": int(c), "z": z, "y": int(ys[i]), "x": int(xs[i])})
    return points
