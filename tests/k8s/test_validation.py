"""Every rendered manifest validates: core kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields refused), custom resources against their operators'
CRDs (strict the same way), plus what the operators check beyond the schema (CEL rules, webhooks)
that these manifests rely on."""
from __future__ import annotations

import copy

import yaml

from .manifests import CRDS, K8S, K8S_VERSION, ROOT, core_schema_problems, get, is_core, pods


def test_core_kinds_validate_strictly(rendered, kv):
    checked = 0
    for overlay, docs in rendered.items():
        for d in docs:
            if is_core(d):
                assert core_schema_problems(d) == [], overlay
                checked += 1
    assert checked >= 4 * 12, checked


def test_every_manifest_is_either_core_or_a_known_custom_resource(rendered):
    known = {("kubeflow.org/v1", "PyTorchJob"), ("trainer.kubeflow.org/v1alpha1", "TrainJob"), ("ray.io/v1", "RayJob")}
    for overlay, docs in rendered.items():
        for d in docs:
            assert is_core(d) or (d["apiVersion"], d["kind"]) in known, f"{overlay}: {d['apiVersion']} {d['kind']}"


def test_custom_resources_validate_against_their_crds(rendered, crds):
    seen = set()
    for overlay, docs in rendered.items():
        for d in docs:
            if not is_core(d):
                assert crds.problems(d) == [], overlay
                seen.add(d["kind"])
    assert seen == {"PyTorchJob", "TrainJob", "RayJob"}


def test_the_validator_accepts_the_operators_own_runtime(crds):
    """The torch-distributed ClusterTrainingRuntime as shipped validates (the strict CRD validator does
    not refuse what the operator itself writes), also with our failure-policy patch merged in."""
    runtime = yaml.safe_load((CRDS / "runtime-torch-distributed.yaml").read_text())
    assert crds.problems(runtime) == []
    patch = yaml.safe_load((K8S / "components/train-trainjob/runtime-failure-policy.patch.yaml").read_text())
    patched = copy.deepcopy(runtime)
    patched["spec"]["template"]["spec"].update(patch["spec"]["template"]["spec"])
    assert patched["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] >= 1
    assert crds.problems(patched) == []


def test_pytorchjob_rules_beyond_the_schema(rendered):
    """The training operator's webhook: container `pytorch`; elasticPolicy needs a Worker replica spec
    and forbids elasticPolicy.nProcPerNode together with spec.nprocPerNode; minReplicas <= maxReplicas;
    its rendezvous port is the container port named pytorchjob-port."""
    job = get(rendered["gpu-multinode"], "PyTorchJob", "pscv-train")
    spec = job["spec"]
    assert set(spec["pytorchReplicaSpecs"]) == {"Worker"}
    ep = spec["elasticPolicy"]
    assert ep["rdzvBackend"] == "c10d" and ep["maxRestarts"] >= 1
    assert not ("nProcPerNode" in ep and "nprocPerNode" in spec)
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    assert ep["minReplicas"] == ep["maxReplicas"] == worker["replicas"], "fixed size: a resumed run is bit-identical"
    assert worker["restartPolicy"] in ("OnFailure", "ExitCode")
    (c,) = worker["template"]["spec"]["containers"]
    assert c["name"] == "pytorch"
    assert [p["name"] for p in c["ports"]] == ["pytorchjob-port"]


def test_trainjob_targets_the_shipped_runtime(rendered, crds):
    """runtimeRef names the torch-distributed ClusterTrainingRuntime, whose replicated job and
    container are both `node` (what the runtime patches must name)."""
    job = get(rendered["gpu-multinode-trainjob"], "TrainJob", "pscv-train")
    ref = job["spec"]["runtimeRef"]
    runtime = yaml.safe_load((CRDS / "runtime-torch-distributed.yaml").read_text())
    assert (ref["name"], ref.get("kind", "ClusterTrainingRuntime")) == (runtime["metadata"]["name"], runtime["kind"])
    assert "torch" in runtime["spec"]["mlPolicy"]
    rjobs = {rj["name"]: rj for rj in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    for patch in job["spec"]["runtimePatches"]:
        for rj in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            assert rj["name"] in rjobs
            runtime_containers = {c["name"] for c in rjobs[rj["name"]]["template"]["spec"]["template"]["spec"]["containers"]}
            patched = {c["name"] for c in rj["template"]["spec"]["template"]["spec"].get("containers", [])}
            assert patched <= runtime_containers, patched
    assert isinstance(job["spec"]["trainer"]["numProcPerNode"], int)  # v2.3: an integer, not "auto"


def test_rayjob_matches_the_ray_in_the_image(rendered):
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    for overlay, docs in rendered.items():
        for job in (d for d in docs if d["kind"] == "RayJob"):
            spec = job["spec"]
            assert spec["rayClusterSpec"]["rayVersion"] == pins["ray"]
            assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
            # KubeRay fills in the submitter's command (ray job submit ... -- entrypoint) only when empty
            sub = spec["submitterPodTemplate"]["spec"]
            assert "command" not in sub["containers"][0] and sub["restartPolicy"] == "Never"
            groups = spec["rayClusterSpec"]["workerGroupSpecs"]
            assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)
            for g in groups:
                assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_kubernetes_version_is_pinned_and_bundled(kv):
    from kubernetes_validate.utils import all_versions

    assert K8S_VERSION in all_versions()
    pins = (ROOT / "constraints.txt").read_text().split()
    assert any(p.startswith("kubernetes-validate==") for p in pins)


def test_pod_templates_are_found_everywhere(rendered):
    """The walk that the security and command tests rely on sees every pod of every kind."""
    counts = {o: len(list(pods(docs))) for o, docs in rendered.items()}
    assert counts["cpu-smoke"] == 6  # mlflow, serve, prepare, train, evaluate, register
    assert all(counts[o] == 9 for o in counts if o.startswith("gpu"))  # + RayJob submitter, head, worker
