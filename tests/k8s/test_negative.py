"""The checks fail when they should: each test breaks one thing in a copy of a rendered manifest (or in
an overlay that patches a real one) and asserts that the check that guards it reports it."""
from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest

from pscv_dist.errors import ConfigError

from .manifests import K8S, Pod, core_schema_problems, get, kubectl, pods, security_problems
from .test_commands import Refused, check_container

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Use of conda:UserWarning")]  # the env-manager=conda case


def _pod(docs: list[dict], owner: str, role: str | None = None) -> Pod:
    return next(p for p in pods(docs) if p.owner == owner and (role is None or p.role == role))


def _container(pod: Pod, name: str) -> dict:
    return next(c for c in pod.containers() if c["name"] == name)


# --- typos: the schemas refuse unknown fields ---------------------------------------------------------

@pytest.mark.parametrize("where", ["container", "pod", "securityContext", "job spec", "volume"])
def test_a_typo_in_a_core_manifest_is_refused(rendered, kv, where):
    job = copy.deepcopy(get(rendered["cpu-smoke"], "Job", "pscv-train"))
    pod = job["spec"]["template"]["spec"]
    {"container": lambda: pod["containers"][0].update(resource={"limits": {"cpu": "1"}}),
     "pod": lambda: pod.update(restartPolicyy="Never"),
     "securityContext": lambda: pod["containers"][0]["securityContext"].update(readOnlyRootFileSystem=True),
     "job spec": lambda: job["spec"].update(completion=2),
     "volume": lambda: pod["volumes"][0]["persistentVolumeClaim"].update(readonly=True)}[where]()
    problems = core_schema_problems(job)
    assert problems and "was unexpected" in problems[0], problems


def test_a_wrong_type_in_a_core_manifest_is_refused(rendered, kv):
    job = copy.deepcopy(get(rendered["cpu-smoke"], "Job", "pscv-train"))
    job["spec"]["completions"] = "two"
    assert core_schema_problems(job)


@pytest.mark.parametrize("kind, overlay, mutate", [
    ("PyTorchJob", "gpu-multinode", lambda s: s["elasticPolicy"].update(rdzvBackEnd="c10d")),
    ("PyTorchJob", "gpu-multinode", lambda s: s["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
     .update(securityContex={})),
    ("PyTorchJob", "gpu-multinode", lambda s: s.update(nprocPerNode=4)),  # a string in the v1 API
    ("TrainJob", "gpu-multinode-trainjob", lambda s: s["trainer"].update(numProcsPerNode=4)),
    ("TrainJob", "gpu-multinode-trainjob", lambda s: s["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
     ["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0].update(image="x:1")),
    ("RayJob", "gpu-multinode", lambda s: s["rayClusterSpec"]["headGroupSpec"].update(rayStartParam={})),
    ("RayJob", "gpu-multinode", lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
     ["volumes"][0].update(persistentVolumeClain={})),
    ("RayJob", "gpu-multinode", lambda s: s.update(shutdownAfterJobFinish=True)),
], ids=["pytorchjob-elastic", "pytorchjob-container", "pytorchjob-type", "trainjob-trainer", "trainjob-patch-image",
        "rayjob-head", "rayjob-worker-volume", "rayjob-spec"])
def test_a_typo_in_a_custom_resource_is_refused(rendered, crds, kind, overlay, mutate):
    doc = copy.deepcopy(next(d for d in rendered[overlay] if d["kind"] == kind))
    mutate(doc["spec"])
    assert crds.problems(doc), f"{kind}: the broken copy validated"


def test_a_typo_in_custom_resource_metadata_is_refused(rendered, crds):
    doc = copy.deepcopy(get(rendered["gpu-multinode"], "RayJob", "pscv-tune"))
    doc["metadata"]["lables"] = {"a": "b"}
    assert crds.problems(doc)


def test_a_typo_in_an_overlay_patch_is_caught_after_rendering(tmp_path, kv):
    """The whole path: an overlay whose patch misspells a field renders fine, and validation refuses it."""
    if kubectl() is None:
        pytest.skip("kubectl is not installed")
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {os.path.relpath(K8S / 'overlays/cpu-smoke', tmp_path)}\n"
        "patches:\n  - target: {kind: Job, name: pscv-evaluate}\n"
        "    patch: |-\n      - {op: add, path: /spec/template/spec/containers/0/imagePullPolicey, value: Always}\n")
    proc = subprocess.run([kubectl(), "kustomize", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import yaml

    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert core_schema_problems(get(docs, "Job", "pscv-evaluate"))
    assert all(core_schema_problems(d) == [] for d in docs if d["metadata"]["name"] != "pscv-evaluate")


# --- security -----------------------------------------------------------------------------------------

def _broken(rendered, overlay: str, owner: str, mutate, role: str | None = None) -> list[str]:
    docs = copy.deepcopy(rendered[overlay])
    pod = _pod(docs, owner, role)
    mutate(pod.spec)
    return security_problems(pod)


@pytest.mark.parametrize("overlay, owner, mutate, expected", [
    ("cpu-smoke", "Job/pscv-train", lambda s: s["containers"][0]["resources"]["limits"].pop("memory"), "no memory limit"),
    ("cpu-smoke", "Deployment/mlflow", lambda s: s["containers"][0]["resources"].pop("limits"), "no cpu limit"),
    ("cpu-smoke", "Job/pscv-evaluate", lambda s: s["initContainers"][0]["resources"]["requests"].pop("cpu"),
     "no cpu request"),
    ("gpu-multinode", "PyTorchJob/pscv-train", lambda s: s["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"),
     "nvidia.com/gpu must be a limit"),
], ids=["memory-limit", "all-limits", "init-request", "gpu-limit"])
def test_a_missing_limit_is_refused(rendered, overlay, owner, mutate, expected):
    problems = _broken(rendered, overlay, owner, mutate)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s["containers"][0]["securityContext"].update(runAsUser=0), "not a fixed non-root UID"),
    (lambda s: (s["securityContext"].pop("runAsUser"), s["containers"][0]["securityContext"].pop("runAsUser")),
     "not a fixed non-root UID"),
    (lambda s: (s["securityContext"].pop("runAsNonRoot"), s["containers"][0]["securityContext"].pop("runAsNonRoot")),
     "runAsNonRoot is not true"),
    (lambda s: s["containers"][0].pop("securityContext"), "readOnlyRootFilesystem is not true"),
    (lambda s: s["containers"][0]["securityContext"].update(runAsGroup=0), "runAsGroup is root"),
], ids=["uid-0", "no-uid", "no-runAsNonRoot", "no-securityContext", "gid-0"])
def test_a_root_container_is_refused(rendered, mutate, expected):
    problems = _broken(rendered, "cpu-smoke", "Job/pscv-prepare", mutate)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda s: s["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "not all dropped"),
    (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds capabilities"),
    (lambda s: s["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"),
    (lambda s: s["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda s: s["containers"][0].update(image="ghcr.io/pscv-dist/pscv-dist:latest"), "'latest'"),
    (lambda s: s["containers"][0].update(image="ghcr.io/pscv-dist/pscv-dist"), "no tag"),
    (lambda s: next(m for m in s["containers"][0]["volumeMounts"] if m["name"] == "data").pop("readOnly"),
     "mounts pscv-data writable"),
    (lambda s: next(m for m in s["containers"][0]["volumeMounts"] if m["name"] == "configs").pop("readOnly"),
     "(configMap) writable"),
    (lambda s: next(v for v in s["volumes"] if v["name"] == "shm")["emptyDir"].update(sizeLimit="8Gi"),
     "not inside the memory limit"),
    (lambda s: next(v for v in s["volumes"] if v["name"] == "shm")["emptyDir"].pop("medium"), "not memory-backed"),
    (lambda s: next(v for v in s["volumes"] if v["name"] == "tmp")["emptyDir"].pop("sizeLimit"), "no sizeLimit"),
    (lambda s: s["containers"][0]["volumeMounts"].remove(
        next(m for m in s["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp")), "no writable /tmp"),
    (lambda s: s["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}), "credential"),
    (lambda s: s["containers"][0]["env"].append({"name": "DB", "value": "postgresql://u:pw@db/mlflow"}), "credential"),
    (lambda s: next(v for v in s["volumes"] if v["name"] == "data")["persistentVolumeClaim"].pop("readOnly"),
     "the claim is not"),
], ids=["escalation", "privileged", "caps-not-dropped", "caps-added", "seccomp", "rw-root", "host-network",
        "host-path", "latest", "untagged", "rw-store", "rw-configs", "shm-too-big", "shm-on-disk", "tmp-unbounded",
        "no-tmp", "secret-value", "password-in-url", "rw-claim"])
def test_each_rule_of_the_contract_is_enforced(rendered, mutate, expected):
    problems = _broken(rendered, "cpu-smoke", "Job/pscv-train", mutate)
    assert any(expected in p for p in problems), problems


def test_a_waiter_may_not_write(rendered):
    def mutate(s):
        s["initContainers"][0]["volumeMounts"][0].pop("readOnly")
        next(v for v in s["volumes"] if v["name"] == "runs")["persistentVolumeClaim"].pop("readOnly")
    problems = _broken(rendered, "cpu-smoke", "Job/pscv-register", mutate)
    assert any("mounts pscv-runs writable" in p for p in problems), problems


def test_trainjob_security_comes_from_its_runtime_patch(rendered):
    def mutate(doc):
        rj = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        rj["template"]["spec"]["template"]["spec"]["containers"][0].pop("securityContext")
    docs = copy.deepcopy(rendered["gpu-multinode-trainjob"])
    mutate(get(docs, "TrainJob", "pscv-train"))
    problems = security_problems(_pod(docs, "TrainJob/pscv-train"))
    assert any("readOnlyRootFilesystem" in p for p in problems), problems


# --- command lines ------------------------------------------------------------------------------------

def _check(rendered, tmp_path, overlay, owner, container, mutate, role=None):
    docs = copy.deepcopy(rendered[overlay])
    pod = _pod(docs, owner, role)
    c = _container(pod, container)
    mutate(c, pod.doc)
    return check_container(pod, c, docs, tmp_path)


@pytest.mark.parametrize("overlay, owner, container, mutate, error", [
    ("cpu-smoke", "Job/pscv-train", "train", lambda c, d: c["args"].append("loss.lambda_cvv=0.1"), ConfigError),
    ("cpu-smoke", "Job/pscv-train", "train", lambda c, d: c["args"].append("optim.lr=-1"), ConfigError),
    ("gpu-multinode", "PyTorchJob/pscv-train", "pytorch", lambda c, d: c["args"].insert(0, "--nprocs-per-gpu=4"), Refused),
    ("gpu-multinode", "PyTorchJob/pscv-train", "pytorch", lambda c, d: c["args"].__setitem__(2, "pscv_dist.trian"),
     AssertionError),
    ("gpu-multinode", "PyTorchJob/pscv-train", "pytorch",
     lambda c, d: c["resources"]["limits"].update({"nvidia.com/gpu": 2}), AssertionError),  # 4 processes, 2 GPUs
    ("cpu-smoke", "Job/pscv-train", "train", lambda c, d: c["env"].pop(0), AssertionError),  # NNODES unset
    ("cpu-smoke", "Job/pscv-evaluate", "evaluate", lambda c, d: c["args"].append("--convention=loose"), Refused),
    ("cpu-smoke", "Job/pscv-prepare", "prepare", lambda c, d: c["args"].append("--sizes=64"), Refused),
    ("cpu-smoke", "Job/pscv-register", "register", lambda c, d: c["args"].extend(["--run", "abc"]), AssertionError),
    ("cpu-smoke", "Job/pscv-train", "train", lambda c, d: c["args"].append("data.store=$(PSCV_STOR)"), AssertionError),
    ("cpu-smoke", "Deployment/mlflow", "mlflow", lambda c, d: c["args"].append("--wokers=2"), Refused),
    ("cpu-smoke", "Deployment/mlflow", "mlflow",
     lambda c, d: c["args"].__setitem__(4, "--allowed-hosts=localhost:5000"), AssertionError),
    ("cpu-smoke", "Deployment/pscv-segmenter", "segmenter",
     lambda c, d: c["args"].__setitem__(1, "--env-manager=conda"), AssertionError),
    ("cpu-smoke", "Deployment/pscv-segmenter", "segmenter", lambda c, d: c["args"].append("--prot=1"), Refused),
    ("gpu-multinode", "RayJob/pscv-tune", "ray-head",
     lambda c, d: d["spec"].update(entrypoint=d["spec"]["entrypoint"] + " --num-trials 3"), Refused),
    ("gpu-multinode", "RayJob/pscv-tune", "ray-head",
     lambda c, d: d["spec"].update(entrypoint=d["spec"]["entrypoint"] + " loss.taux=1"), ConfigError),
], ids=["unknown-config-key", "bad-config-value", "torchrun-flag", "wrong-module", "nproc-vs-gpus", "launcher-env",
        "evaluate-choice", "prepare-flag", "register-two-sources", "undefined-var", "mlflow-flag", "mlflow-hosts",
        "serve-env-manager", "serve-flag", "tune-flag", "tune-override"])
def test_a_broken_command_line_is_refused(rendered, tmp_path, overlay, owner, container, mutate, error):
    role = "head" if owner.startswith("RayJob") else None
    with pytest.raises(error):
        _check(rendered, tmp_path, overlay, owner, container, mutate, role)


def test_the_launcher_is_checked_by_running_it(rendered, tmp_path):
    """launch/torchrun_multi.sh is run (dry) with the pod's environment: an interface change shows."""
    with pytest.raises(AssertionError, match="refused its environment"):
        _check(rendered, tmp_path, "cpu-smoke", "Job/pscv-train", "train",
               lambda c, d: c["env"].__setitem__(3, {"name": "JOB_ID", "value": ""}))
    assert Path(K8S.parent / "launch/torchrun_multi.sh").is_file()
