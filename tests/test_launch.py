"""The launch/ scripts run as written (2 CPU processes, gloo) on a tiny phantom store.

SLURM itself cannot exist here: `srun` and `scontrol` are emulated by two small scripts on PATH
(srun runs its command once, as on a one-node allocation); the sbatch script is otherwise real.
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nothing listens on now (fixed ports collide on a shared machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pscv_dist.data.prepare import PrepareConfig, prepare
    from pscv_dist.data.synthetic import write_phantoms

    root = tmp_path_factory.mktemp("launch")
    src = write_phantoms(root / "ph", 4, seed=5, shape=(4, 32, 32))
    prepare(PrepareConfig(str(src), str(root / "s.zarr"), "nifti", size=32, progress=False))
    cfg = {"data": {"store": str(root / "s.zarr"), "batch_size": 4, "num_workers": 0},
           "model": {"base_width": 4}, "train": {"iterations": 3, "ckpt_every": 3, "log_every": 1, "progress": False},
           "tracking": {"enabled": False}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return root


def run(cmd, root, env_extra=None, out="run"):
    env = {**os.environ, "NPROC": "2", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env_extra or {})}
    proc = subprocess.run([*cmd, str(root / "tiny.yaml"), f"train.out_dir={root / out}"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads(line) for line in (root / out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]
    return proc


def test_torchrun_single(tiny):
    run(["bash", "launch/torchrun_single.sh"], tiny, out="single")


def test_torchrun_multi_one_node(tiny):
    run(["bash", "launch/torchrun_multi.sh"], tiny, {"NNODES": "1", "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}", "JOB_ID": "t1"},
        out="multi")


def test_slurm_script(tiny, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (fake / "scontrol").write_text('#!/usr/bin/env bash\necho localhost\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "RDZV_PORT": str(free_port())}
    run(["bash", "launch/slurm.sbatch"], tiny, env, out="slurm")


def test_deepspeed_launcher(tiny):
    pytest.importorskip("deepspeed")
    run(["bash", "launch/deepspeed.sh"], tiny, {"MASTER_PORT": str(free_port())}, out="ds")


# --- a real multi-node run: two torchrun agents as two nodes --------------------------------------------
#
# launch/torchrun_multi.sh is started twice, each agent a "node" with one gloo process, c10d rendezvous
# hosted by node 0. The references run on loopback; the lost-node test runs with each node in its own
# network namespace joined by a veth pair (the rendezvous and gloo traffic cross a real interface)
# where the machine allows it (root and `ip netns`), otherwise on loopback, and says which. A node
# is lost the way Kubernetes loses a pod: its agent and everything it started get SIGKILL; then it
# is started again, and the run must finish with the weights an uninterrupted run ends with, bit
# for bit (it resumes from the newest complete checkpoint).

ITERS, CKPT_EVERY, KILL_AFTER = 30, 10, 13  # killed between the checkpoints of steps 10 and 20
# a dead node is noticed after keep_alive_interval x keep_alive_max_attempt seconds (torch: 5 x 3)
FAST_RDZV = "keep_alive_interval=2,keep_alive_max_attempt=3,join_timeout=120"


@pytest.fixture(scope="module")
def two_node_cfg(phantom_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    cfg = {"data": {"store": str(phantom_store), "batch_size": 4, "num_workers": 0},
           "model": {"base_width": 4},
           "train": {"iterations": ITERS, "ckpt_every": CKPT_EVERY, "log_every": 1, "val_every": 0, "progress": False},
           "tracking": {"enabled": False}}
    (root / "mn.yaml").write_text(yaml.safe_dump(cfg))
    return root


class Network:
    """Where the two nodes live: loopback, or two network namespaces joined by a veth pair."""

    def __init__(self, kind: str, tag: str):
        self.kind, self.tag = kind, tag
        if kind == "loopback":
            self.addr = ["127.0.0.1", "127.0.0.1"]
            return
        import random

        net = random.randrange(1, 255)
        self.ns = [f"pscv{tag}a", f"pscv{tag}b"]
        self.dev = [f"pscv{tag}va", f"pscv{tag}vb"]
        self.addr = [f"169.254.{net}.1", f"169.254.{net}.2"]  # a link-local /30 of our own
        self._ip("netns", "add", self.ns[0])
        self._ip("netns", "add", self.ns[1])
        self._ip("link", "add", self.dev[0], "type", "veth", "peer", "name", self.dev[1])
        for i in (0, 1):
            self._ip("link", "set", self.dev[i], "netns", self.ns[i])
            self._ip("-n", self.ns[i], "addr", "add", f"{self.addr[i]}/30", "dev", self.dev[i])
            self._ip("-n", self.ns[i], "link", "set", self.dev[i], "up")
            self._ip("-n", self.ns[i], "link", "set", "lo", "up")

    @staticmethod
    def _ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def endpoint(self) -> str:
        return f"{self.addr[0]}:{free_port() if self.kind == 'loopback' else 29400}"

    def wrap(self, node: int, cmd: list[str]) -> list[str]:
        return cmd if self.kind == "loopback" else ["ip", "netns", "exec", self.ns[node], *cmd]

    def node_env(self, node: int) -> dict[str, str]:
        if self.kind == "loopback":
            return {"LOCAL_ADDR": "127.0.0.1"}
        # gloo and the worker store use this node's veth; node 0 hosts the rendezvous store on an
        # address torch cannot match to the machine's host name, so it is told
        return {"LOCAL_ADDR": self.addr[node], "GLOO_SOCKET_IFNAME": self.dev[node],
                **({"RDZV_CONF": f"is_host=1,{FAST_RDZV}"} if node == 0 else {"RDZV_CONF": f"is_host=0,{FAST_RDZV}"})}

    def close(self):
        if self.kind == "netns":
            for ns in self.ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def netns_unavailable() -> str | None:
    if os.environ.get("PSCV_TEST_NO_NETNS"):
        return "PSCV_TEST_NO_NETNS is set; the loopback variant runs instead"
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_SYS_ADMIN; the loopback variant runs instead"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2); the loopback variant runs instead"
    probe = f"pscvprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if made.returncode != 0:
        return f"`ip netns add` failed ({made.stderr.strip()}); the loopback variant runs instead"
    return None


@pytest.fixture(params=["netns", "loopback"])
def network(request):
    """Network namespaces where the machine allows them, else loopback; the variant that does not run
    is skipped with the reason."""
    why = netns_unavailable()
    if request.param == "netns" and why:
        pytest.skip(why)
    if request.param == "loopback" and not why:
        pytest.skip("the network-namespace variant runs instead (root and `ip netns` are available)")
    net = Network(request.param, str(os.getpid() % 10000))
    yield net
    net.close()


class Agent:
    """One node's torchrun agent (launch/torchrun_multi.sh), in its own session so that losing the
    node kills the agent and every process it started."""

    def __init__(self, net: Network, node: int, cfg: Path, out: Path, endpoint: str, log: Path, nnodes="2", nproc="1",
                 extra_env=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "NNODES": nnodes, "NPROC": nproc, "RDZV_ENDPOINT": endpoint, "JOB_ID": "two-nodes",
               "MAX_RESTARTS": "3", "RDZV_CONF": FAST_RDZV, **net.node_env(node), **(extra_env or {})}
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(net.wrap(node, ["bash", "launch/torchrun_multi.sh", str(cfg),
                                                         f"train.out_dir={out}"]),
                                         env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def lose_node(self):
        """SIGKILL the agent and all its descendants (its workers run in sessions of their own)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=30)
        psutil.wait_procs(family, timeout=30)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.lose_node()
            raise AssertionError(f"the agent did not finish in {timeout:.0f} s; its log:\n"
                                 + self.log.read_text()[-4000:]) from None


def wait_listening(host: str, port: int, net: Network, agent: Agent, timeout: float = 60):
    """Node 0 hosts the rendezvous store: start node 1 once it listens (node 0 is then the host)."""
    deadline = time.time() + timeout
    probe = net.wrap(0, [sys.executable, "-c", f"import socket; socket.create_connection(('{host}', {port}), 1).close()"])
    while time.time() < deadline:
        assert agent.proc.poll() is None, agent.log.read_text()[-3000:]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {host}:{port}")


def log_steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def logged(out: Path) -> list[int]:
    """The steps rank 0 has logged so far (complete lines only: it may be writing one now)."""
    try:
        text = (out / "train_log.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in text.split("\n")[:-1]]


def final_state(out: Path) -> dict:
    import torch

    ckpt = out / "checkpoints" / f"step_{ITERS:08d}"
    return {"model": torch.load(ckpt / "model.pt", weights_only=True)["model_state"],
            "optim": torch.load(ckpt / "optim.pt", weights_only=True) if (ckpt / "optim.pt").exists() else None}


def run_two_nodes(net: Network, root: Path, name: str, kill: bool = False) -> Path:
    agents: list[Agent] = []
    try:
        return _run_two_nodes(net, root, name, kill, agents)
    finally:  # whatever happened, no agent or worker outlives the test
        for agent in agents:
            if agent.proc.poll() is None:
                agent.lose_node()


def _run_two_nodes(net: Network, root: Path, name: str, kill: bool, agents: list) -> Path:
    out, endpoint = root / name, net.endpoint()
    host, port = endpoint.rsplit(":", 1)
    a0 = Agent(net, 0, root / "mn.yaml", out, endpoint, root / f"{name}_node0.log")
    agents.append(a0)
    wait_listening(host, int(port), net, a0)
    a1 = Agent(net, 1, root / "mn.yaml", out, endpoint, root / f"{name}_node1.log")
    agents.append(a1)
    if kill:
        deadline = time.time() + 180
        while not logged(out)[-1:] or logged(out)[-1] < KILL_AFTER:
            assert a0.proc.poll() is None and a1.proc.poll() is None, "an agent ended before the kill"
            assert time.time() < deadline, "the run did not reach the kill step"
            time.sleep(0.02)
        a1.lose_node()
        assert (out / "checkpoints" / f"step_{CKPT_EVERY:08d}").is_dir() and logged(out)[-1] < ITERS
        a1 = _restart(net, root, name, out, endpoint, agents)
    assert a1.wait(180) == 0, (root / f"{name}_node1.log").read_text()[-4000:]
    assert a0.wait(120) == 0, (root / f"{name}_node0.log").read_text()[-4000:]
    assert json.loads((out / "summary.json").read_text())["step"] == ITERS
    return out


def _restart(net, root, name, out, endpoint, agents):
    """Node 1 is started again, as Kubernetes restarts a pod; the run must train again soon."""
    try:
        a1 = Agent(net, 1, root / "mn.yaml", out, endpoint, root / f"{name}_node1.log")
        agents.append(a1)
        before, deadline = len(logged(out)), time.time() + 150
        while len(logged(out)) == before and a1.proc.poll() is None:
            assert time.time() < deadline, "no training step within 150 s of the restart"
            time.sleep(0.2)
        return a1
    except AssertionError as exc:
        raise AssertionError(
            "the run did not train again after node 1 was restarted. The restarted node's workers find the "
            "survivor's in the new rendezvous round only if torchrun_multi.sh still gives every round its own "
            "store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) and pscv_dist.distributed still prefixes keys by "
            "TORCHELASTIC_RESTART_COUNT only on the agent's store, never on that per-round one (the count is 1 "
            "on the surviving node, 0 on the restarted one).\n" + str(exc)
            + "\nnode 1's log:\n" + (root / f"{name}_node1.log").read_text()[-3000:]) from None


@pytest.fixture(scope="module")
def one_node_two_procs(two_node_cfg) -> Path:
    """The reference: one agent, two processes."""
    out = two_node_cfg / "one_node"
    endpoint = f"127.0.0.1:{free_port()}"
    agent = Agent(Network("loopback", "ref"), 0, two_node_cfg / "mn.yaml", out, endpoint,
                  two_node_cfg / "one_node.log", nnodes="1", nproc="2")
    assert agent.wait(300) == 0, (two_node_cfg / "one_node.log").read_text()[-4000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted(two_node_cfg) -> Path:
    return run_two_nodes(Network("loopback", "ref"), two_node_cfg, "two_nodes")


def test_two_nodes_match_one_node_with_two_processes(one_node_two_procs, uninterrupted):
    """On loopback; in network namespaces, the lost-node test compares every step's loss with this run."""
    ref, got = log_steps(one_node_two_procs), log_steps(uninterrupted)
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, ITERS + 1))
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7), f"step {a['step']}: {a['loss']} vs {b['loss']}"
    print(f"2 nodes x 1 process == 1 node x 2 processes over {ITERS} steps")


def test_a_lost_node_restarts_and_the_run_ends_bit_identical(network, two_node_cfg, uninterrupted):
    import torch

    name = f"killed_{network.kind}"
    out = run_two_nodes(network, two_node_cfg, name, kill=True)
    # The kill came after step KILL_AFTER was logged (run_two_nodes waits for it); the restarted run
    # went back to checkpoint CKPT_EVERY, trained those steps again and replaced their records.
    steps = [r["step"] for r in log_steps(out)]
    assert steps == list(range(1, ITERS + 1)), f"each step logged once, in order; got {steps}"
    assert f"at step {CKPT_EVERY}" in (two_node_cfg / f"{name}_node0.log").read_text(), "no resume from the checkpoint"
    ref, got = final_state(uninterrupted), final_state(out)
    assert ref["model"].keys() == got["model"].keys()
    for key in ref["model"]:
        assert torch.equal(ref["model"][key], got["model"][key]), f"{key} differs from the uninterrupted run"
    if ref["optim"] is not None:
        assert repr(ref["optim"]) == repr(got["optim"])
    last = {r["step"]: r["loss"] for r in log_steps(out)}  # the replayed steps: their last record
    assert last == {r["step"]: r["loss"] for r in log_steps(uninterrupted)}, "per-step losses differ"
    print(f"[{network.kind}] node 1 SIGKILLed after step {KILL_AFTER}, restarted; final weights bit-identical")
