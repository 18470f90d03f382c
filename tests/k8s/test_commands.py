"""The command line of every container is accepted by the parser of the program it runs, with the
environment the kubelet gives it ($(VAR) expanded from the pscv-run ConfigMap, the operator's
PET_* variables for PyTorchJob and TrainJob), without running anything:

- ``pscv ...``: the pscv CLI parser, then the config loader for train/tune configs and overrides;
- ``torchrun ...`` (and launch/torchrun_multi.sh, run with PSCV_DRY_RUN=1 to print its torchrun
  command): torch's own torchrun parser, then ``pscv_dist.train``'s parser and the config loader
  on the preset file the pod mounts from the pscv-configs ConfigMap;
- ``mlflow server`` / ``mlflow models serve``: MLflow's click commands (parsed, not invoked);
- the RayJob entrypoint: split and expanded as the head's shell does, then the pscv CLI parser;
- the wait-for init containers: launch/wait_for.sh exists and waits on a mounted path.

Then the stages are checked against each other: each one waits for what the previous one writes.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from pscv_dist.config import load_config

from .manifests import IMAGE_ROOT, ROOT, Pod, argv, configmaps, container_env, get, mount_for, pods

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Refused(AssertionError):
    pass


@contextlib.contextmanager
def environ(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parse(parser, args: list[str], what: str):
    """argparse without exiting: a refusal raises Refused with the parser's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        raise Refused(f"{what} refused {args}: {err.getvalue().strip()}") from None


def click_parse(command, args: list[str], what: str) -> dict:
    import click

    try:
        return command.make_context(what, list(args), resilient_parsing=False).params
    except click.ClickException as exc:
        raise Refused(f"{what} refused {args}: {exc.format_message()}") from None


@dataclass
class Stage:
    """What one container's command line amounts to, for the cross-stage checks."""
    pod: str
    container: str
    program: str
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    waits_for: str | None = None
    info: dict = field(default_factory=dict)


def _config_file(pod: Pod, container: dict, docs: list[dict], path: str, tmp: Path) -> Path:
    """The preset a container names by path: mounted from a ConfigMap, materialised under tmp."""
    mount = mount_for(container, path)
    assert mount is not None, f"{pod.label}: --config {path} is on no volume"
    assert mount.get("readOnly"), f"{pod.label}: the configs are mounted writable"
    volume = next(v for v in pod.spec["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"{pod.label}: {path} is not from the configs ConfigMap"
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    data = configmaps(docs)[volume["configMap"]["name"]]
    assert key in data, f"{pod.label}: no {key} in ConfigMap {volume['configMap']['name']}"
    out = tmp / key
    out.write_text(data[key])
    return out


def _check_training(pod: Pod, container: dict, docs: list[dict], env: dict, script_args: list[str], world: int,
                    tmp: Path) -> Stage:
    from pscv_dist.train import build_parser as train_parser

    args = parse(train_parser(), script_args, "pscv_dist.train")
    cfg = load_config(_config_file(pod, container, docs, args.config, tmp), args.overrides)  # refuses bad overrides
    assert cfg.data.store == env["PSCV_STORE"], pod.label
    data, runs = mount_for(container, cfg.data.store), mount_for(container, cfg.train.out_dir)
    assert data is not None and data.get("readOnly"), f"{pod.label}: the store must be on a read-only mount"
    assert runs is not None and not runs.get("readOnly"), f"{pod.label}: train.out_dir must be on a writable volume"
    assert runs["name"] != data["name"]
    assert cfg.tracking.enabled and cfg.tracking.tracking_uri == env["MLFLOW_TRACKING_URI"], pod.label
    assert cfg.tracking.artifact_location == f"mlflow-artifacts:/{cfg.tracking.experiment}", (
        "artifacts go through the tracking server (proxied), not to a path of the training pod")
    assert cfg.data.batch_size % world == 0, f"{pod.label}: global batch {cfg.data.batch_size} over {world} ranks"
    assert cfg.train.ckpt_every > 0, "a restarted pod resumes from a checkpoint: checkpoints must be written"
    return Stage(pod.label, container["name"], "train", reads=[cfg.data.store], writes=[cfg.train.out_dir],
                 info={"experiment": cfg.tracking.experiment, "out_dir": cfg.train.out_dir, "world": world})


def _nodes(value: str) -> int:
    return int(str(value).split(":")[-1])


def _check_torchrun(pod: Pod, container: dict, docs: list[dict], env: dict, args: list[str], tmp: Path) -> Stage:
    with environ({k: v for k, v in env.items() if k.startswith("PET_")}):
        from torch.distributed.run import get_args_parser

        ns = parse(get_args_parser(), args, "torchrun")  # PET_* are read as defaults when the parser is built
    assert ns.module and ns.training_script == "pscv_dist.train", f"{pod.label}: runs {ns.training_script}"
    nnodes, nproc = _nodes(ns.nnodes), int(ns.nproc_per_node)
    kind = pod.doc["kind"]
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    assert gpus in (None, nproc), f"{pod.label}: {nproc} processes per node, {gpus} GPUs"
    if kind == "PyTorchJob":
        spec = pod.doc["spec"]
        assert nnodes == spec["pytorchReplicaSpecs"]["Worker"]["replicas"] and ns.rdzv_backend == "c10d"
        assert ns.rdzv_endpoint == f"{pod.doc['metadata']['name']}-worker-0:29400" and ns.max_restarts >= 1
        assert ns.local_addr == env["POD_IP"] != "", "rank 0's store must be reachable from the other pods"
        assert env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1", "a replaced pod must be able to rejoin"
    elif kind == "TrainJob":
        assert nnodes == pod.doc["spec"]["trainer"]["numNodes"] and ns.master_addr == env["PET_MASTER_ADDR"]
    elif kind == "Job":
        job = pod.doc["spec"]
        assert job["completionMode"] == "Indexed" and nnodes == job["completions"] == job["parallelism"]
        assert ns.rdzv_backend == "c10d" and ns.max_restarts >= 1
        host, port = ns.rdzv_endpoint.rsplit(":", 1)
        svc = get(docs, "Service", pod.spec["subdomain"])
        assert host == f"{pod.doc['metadata']['name']}-0.{svc['metadata']['name']}", "rendezvous on pod 0"
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"].get("publishNotReadyAddresses") is True
        assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": pod.doc["metadata"]["name"]}
        assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
        assert ns.local_addr == FIELD_IP, "rank 0's store must be reachable from the other pods"
    stage = _check_training(pod, container, docs, env, ns.training_script_args, nnodes * nproc, tmp)
    stage.info.update(nnodes=nnodes, nproc=nproc)
    return stage


FIELD_IP = "10.0.0.7"


def _check_launch_script(pod: Pod, container: dict, docs: list[dict], env: dict, cmd: list[str], tmp: Path) -> Stage:
    """Run launch/torchrun_multi.sh in dry-run mode with the container's environment: the torchrun
    command it prints is then checked like any other."""
    script = ROOT / Path(cmd[1]).relative_to(IMAGE_ROOT)
    run_env = {"PATH": os.environ["PATH"], **env, "PSCV_DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(script), *cmd[2:]], env=run_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{pod.label}: {script.name} refused its environment: {proc.stderr.strip()}"
    printed = proc.stdout.split("\0")[:-1]
    assert printed[0] == "torchrun", printed
    return _check_torchrun(pod, container, docs, env, printed[1:], tmp)


def _check_pscv(pod: Pod, container: dict, docs: list[dict], env: dict, args: list[str], tmp: Path) -> Stage:
    from pscv_dist.cli import build_parser

    ns = parse(build_parser(), args, "pscv")
    stage = Stage(pod.label, container["name"], f"pscv {ns.command}")

    def on_mount(path: str, writable: bool) -> None:
        m = mount_for(container, path)
        assert m is not None, f"{pod.label}: {path} is on no volume"
        if writable:
            assert not m.get("readOnly"), f"{pod.label}: {path} must be writable"

    if ns.command == "prepare":
        if ns.synthetic is not None and ns.out is None:  # `prepare --synthetic N OUT`: OUT is the one positional
            ns.out, ns.src = ns.src, None
        assert ns.out == env["PSCV_STORE"]
        on_mount(ns.out, writable=True)
        if ns.synthetic is None:
            on_mount(ns.src, writable=False)
            assert mount_for(container, ns.src).get("readOnly"), "the raw dataset is only read"
            stage.reads.append(ns.src)
        stage.writes.append(ns.out)
    elif ns.command == "evaluate":
        assert ns.store == env["PSCV_STORE"]
        on_mount(ns.store, writable=False)
        on_mount(ns.checkpoint, writable=False)
        on_mount(ns.out, writable=True)
        on_mount(ns.plots, writable=True)
        stage.reads += [ns.store, ns.checkpoint]
        stage.writes += [ns.out]
    elif ns.command == "register":
        assert env.get("MLFLOW_TRACKING_URI") and ns.tracking_uri is None, "the registry through the one setting"
        assert ns.best_of and ns.run is None and ns.version is None and ns.alias == "champion"
        stage.info.update(experiment=ns.best_of, model=ns.name, alias=ns.alias)
    elif ns.command == "tune":
        cfg = load_config(_config_file(pod, container, docs, ns.config, tmp), ns.overrides)
        assert ns.address == "auto", "the driver joins the RayCluster it runs on"
        assert cfg.tracking.tracking_uri == env["MLFLOW_TRACKING_URI"]
        assert cfg.tracking.artifact_location == f"mlflow-artifacts:/{cfg.tracking.experiment}"
        on_mount(ns.out, writable=True)
        on_mount(cfg.data.store, writable=False)
        assert ns.gpus_per_worker > 0
        stage.reads.append(cfg.data.store)
        stage.writes.append(ns.out)
    else:
        raise Refused(f"{pod.label}: pscv {ns.command} is not a stage")
    return stage


def _check_mlflow(pod: Pod, container: dict, docs: list[dict], env: dict, args: list[str]) -> Stage:
    import mlflow.cli
    from mlflow.models.cli import commands as models_commands
    from mlflow.server.security_utils import is_allowed_host_header

    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in container, f"{pod.label}: no {probe}"
    if args[:1] == ["server"]:
        params = click_parse(mlflow.cli.server, args[1:], "mlflow server")
        for name in ("backend_store_uri", "artifacts_destination"):  # the env vars we set are MLflow's
            opt = next(p for p in mlflow.cli.server.params if p.name == name)
            assert opt.envvar in {e["name"] for e in container["env"]}, opt.envvar
        assert params["serve_artifacts"] and params["host"] == "0.0.0.0" and params["port"] == ports["http"]
        allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
        assert "*" not in allowed
        uri = urlparse(configmaps(docs)["pscv-run"]["MLFLOW_TRACKING_URI"])
        ns = env["POD_NAMESPACE"]
        svc = get(docs, "Service", uri.hostname)
        assert uri.port in [p["port"] for p in svc["spec"]["ports"]]
        for host in (uri.hostname, f"{uri.hostname}.{ns}", f"{uri.hostname}.{ns}.svc",
                     f"{uri.hostname}.{ns}.svc.cluster.local"):
            assert is_allowed_host_header(allowed, f"{host}:{uri.port}"), f"MLflow would refuse Host {host}:{uri.port}"
        assert not is_allowed_host_header(allowed, f"evil.example:{uri.port}")
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
        return Stage(pod.label, container["name"], "mlflow server", info={"uri": uri.geturl()})
    if args[:2] == ["models", "serve"]:
        params = click_parse(models_commands.commands["serve"], args[2:], "mlflow models serve")
        assert params["env_manager"] == "local", "the image is the environment (no conda/virtualenv at run time)"
        assert params["host"] == "0.0.0.0" and params["port"] == ports["http"]
        m = re.fullmatch(r"models:/([^@/]+)@([A-Za-z0-9_-]+)", params["model_uri"])
        assert m, params["model_uri"]
        assert env.get("MLFLOW_TRACKING_URI"), "the registry is reached through the tracking server"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["path"] == "/ping"
        return Stage(pod.label, container["name"], "mlflow models serve", info={"model": m.group(1), "alias": m.group(2)})
    raise Refused(f"{pod.label}: mlflow {args[:2]} is not expected")


def _shell_expand(word: str, env: dict[str, str]) -> str:
    def sub(m):
        name = m.group(1) or m.group(2)
        assert name in env, f"${name} is not in the head's environment"
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, word)


def check_container(pod: Pod, container: dict, docs: list[dict], tmp: Path) -> Stage | None:
    """Parse one container's command line; returns what it reads, writes and waits for."""
    env = container_env(pod, container, docs)
    cmd = argv(container, env)
    unresolved = [a for a in cmd if "$(" in a]
    assert not unresolved, f"{pod.label} {container['name']}: undefined $(VAR) in {unresolved}"
    if pod.doc["kind"] == "RayJob" and not cmd:
        # KubeRay runs `ray start` in head and workers and `ray job submit` in the submitter
        if pod.role != "head":
            return None
        words = [_shell_expand(w, env) for w in shlex.split(pod.doc["spec"]["entrypoint"])]
        assert words[0] == "pscv", words
        return _check_pscv(pod, container, docs, env, words[1:], tmp)
    assert cmd, f"{pod.label} {container['name']}: no command (the image's CMD is not a stage)"
    if cmd[0] == "bash" and cmd[1] == f"{IMAGE_ROOT}/launch/wait_for.sh":
        assert (ROOT / "launch/wait_for.sh").is_file() and len(cmd) in (3, 4)
        m = mount_for(container, cmd[2])
        assert m is not None, f"{pod.label} {container['name']}: waits for {cmd[2]}, on no volume"
        return Stage(pod.label, container["name"], "wait", waits_for=cmd[2])
    if cmd[0] == "bash" and cmd[1] == f"{IMAGE_ROOT}/launch/torchrun_multi.sh":
        return _check_launch_script(pod, container, docs, env, cmd, tmp)
    if cmd[0] == "torchrun":
        return _check_torchrun(pod, container, docs, env, cmd[1:], tmp)
    if cmd[0] == "pscv":
        return _check_pscv(pod, container, docs, env, cmd[1:], tmp)
    if cmd[0] == "mlflow":
        return _check_mlflow(pod, container, docs, env, cmd[1:])
    raise Refused(f"{pod.label} {container['name']}: unknown program {cmd[0]}")


def stages_of(docs: list[dict], tmp: Path) -> list[Stage]:
    return [s for pod in pods(docs) for c in pod.containers()
            if (s := check_container(pod, c, docs, tmp)) is not None]


@pytest.fixture(scope="module")
def all_stages(rendered, tmp_path_factory) -> dict[str, list[Stage]]:
    return {o: stages_of(docs, tmp_path_factory.mktemp(o)) for o, docs in rendered.items()}


def test_every_command_line_is_accepted(all_stages):
    for overlay, stages in all_stages.items():
        programs = sorted(s.program for s in stages)
        expected = {"mlflow server", "mlflow models serve", "pscv prepare", "train", "pscv evaluate", "pscv register"}
        assert expected <= set(programs), f"{overlay}: {programs}"
        assert ("pscv tune" in programs) == overlay.startswith("gpu")


def test_the_stages_wait_for_each_other(all_stages):
    from pscv_dist.trainer import SUMMARY

    for overlay, stages in all_stages.items():
        one = lambda program: next(s for s in stages if s.program == program)  # noqa: E731
        prepare, train, evaluate, register = one("pscv prepare"), one("train"), one("pscv evaluate"), one("pscv register")
        serve = one("mlflow models serve")
        waits = {s.pod: s.waits_for for s in stages if s.program == "wait"}
        assert prepare.writes == train.reads == evaluate.reads[:1]
        if not train.pod.startswith("TrainJob"):  # TrainJob patches cannot add an init container
            assert waits[train.pod] == prepare.writes[0]
        assert waits[evaluate.pod] == f"{train.info['out_dir']}/{SUMMARY}"
        assert evaluate.reads[1] == f"{train.info['out_dir']}/best"
        assert waits[register.pod] == evaluate.writes[0]
        assert register.info["experiment"] == train.info["experiment"]
        assert (register.info["model"], register.info["alias"]) == (serve.info["model"], serve.info["alias"])
        if overlay.startswith("gpu"):
            tune = one("pscv tune")
            assert tune.reads == prepare.writes and waits[tune.pod] == prepare.writes[0]
            assert tune.writes[0] != train.info["out_dir"]


def test_ranks_fit_the_overlay(all_stages):
    worlds = {o: next(s for s in stages if s.program == "train").info for o, stages in all_stages.items()}
    assert (worlds["cpu-smoke"]["nnodes"], worlds["cpu-smoke"]["nproc"]) == (2, 1)
    for overlay, info in worlds.items():
        if overlay.startswith("gpu"):
            assert (info["nnodes"], info["nproc"]) == (2, 4), overlay


def test_wait_for_waits_and_times_out(tmp_path):
    script = str(ROOT / "launch/wait_for.sh")
    env = {"PATH": os.environ["PATH"], "WAIT_STEP_S": "0.1"}
    target = tmp_path / "store.zarr"
    late = subprocess.Popen(["bash", "-c", f"sleep 0.5; mkdir {target}"])
    done = subprocess.run(["bash", script, str(target), "30"], env=env, capture_output=True, text=True, timeout=60)
    late.wait()
    assert done.returncode == 0 and f"found {target}" in done.stdout
    missing = subprocess.run(["bash", script, str(tmp_path / "never"), "1"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "did not appear within 1 s" in missing.stderr
