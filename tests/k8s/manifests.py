"""Offline checks of the rendered Kubernetes manifests, as plain functions that return the problems
they find (the tests assert an empty list on what ships, and a non-empty one on broken copies).

- :func:`render` runs ``kubectl kustomize`` on an overlay;
- :func:`core_schema_problems`: kubernetes-validate, strict (unknown fields refused), for core kinds;
- :class:`CrdValidator`: custom resources against their operators' CRD ``openAPIV3Schema``, made
  strict (every object schema with ``properties`` and no ``x-kubernetes-preserve-unknown-fields``
  refuses other fields); CEL rules and webhooks are not evaluated;
- :func:`pods`: every pod a manifest will create, as an effective pod spec (TrainJob: the trainer
  fields and the runtime patches merged into the runtime's ``node`` container);
- :func:`security_problems`: the pod security contract;
- :func:`container_env` / :func:`argv`: a container's environment and its command line as the kubelet
  expands ``$(VAR)``.
"""
from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
SHARED = Path(os.environ.get("PSCV_SHARED", ROOT.parent / "shared"))
CRDS = SHARED / "k8s-crds"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 5 MB of YAML
K8S_VERSION = "1.32.0"  # the Kubernetes API the manifests are validated against (kubectl here: v1.32)
IMAGE_ROOT = "/opt/pscv-dist"  # WORKDIR of the Dockerfile: launch/ scripts live here in the image
UID = 10001  # the Dockerfile's USER
CORE_GROUPS = {"v1", "apps/v1", "batch/v1"}

# Placeholders for values only a running cluster knows.
FIELD_REFS = {"status.podIP": "10.0.0.7", "metadata.namespace": "pscv", "metadata.name": "pod-0"}
SECRET_PLACEHOLDER = "<from-secret>"


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.lru_cache(maxsize=None)
def _render_cached(overlay_dir: str) -> str:
    proc = subprocess.run([kubectl(), "kustomize", overlay_dir],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay_dir} failed: {proc.stderr.strip()}")
    return proc.stdout


def render(overlay: str | Path) -> list[dict]:
    """The documents plain ``kubectl kustomize`` renders for an overlay (a name under k8s/overlays or
    a folder), with kustomize's default load restrictor: no file is read from outside the folder of
    the kustomization that names it (the presets come through the Component in configs/)."""
    path = Path(overlay) if Path(overlay).is_absolute() else K8S / "overlays" / str(overlay)
    return [d for d in yaml.safe_load_all(_render_cached(str(path))) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def get(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def is_core(doc: dict) -> bool:
    return doc["apiVersion"] in CORE_GROUPS


# --- schemas ----------------------------------------------------------------------------------------

def core_schema_problems(doc: dict) -> list[str]:
    """kubernetes-validate in strict mode (unknown fields refused) against K8S_VERSION."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{doc['kind']}/{doc['metadata'].get('name')}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{doc['kind']} {doc['apiVersion']}: no Kubernetes {K8S_VERSION} schema"]
    return []


def _strict(node: Any, top: bool = False) -> Any:
    """An OpenAPI v3 structural schema as a JSON schema that refuses unknown fields."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-validations")}
    if node.get("x-kubernetes-embedded-resource") and "properties" in out:
        out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object"}, **out["properties"]}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


class CrdValidator:
    """Custom resources against the CRDs in ../shared/k8s-crds (strict), metadata against
    Kubernetes' own ObjectMeta schema."""

    def __init__(self, crd_dir: Path = CRDS):
        self.schemas: dict[tuple[str, str], dict] = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
                for version in doc["spec"]["versions"]:
                    schema = _strict(version["schema"]["openAPIV3Schema"], top=True)
                    self.schemas[(f"{group}/{version['name']}", kind)] = schema

    def problems(self, doc: dict) -> list[str]:
        import jsonschema

        key = (doc["apiVersion"], doc["kind"])
        if key not in self.schemas:
            return [f"{doc['kind']} {doc['apiVersion']}: no CRD for it in {CRDS}"]
        validator = jsonschema.Draft202012Validator(self.schemas[key])
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        found = [f"{name}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                 for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
        return found + [f"{name}: metadata: {p}" for p in metadata_problems(doc["metadata"])]


@functools.lru_cache(maxsize=1)
def _object_meta_validator():
    import importlib.resources
    import json

    import jsonschema
    import kubernetes_validate  # noqa: F401  (the package bundles the definitions)

    minor = ".".join(K8S_VERSION.split(".")[:2])
    base = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = next(p for p in base.iterdir() if p.name.startswith(f"v{minor}.") and p.name.endswith("-local-strict"))
    defs = json.loads((folder / "_definitions.json").read_text())["$defs"]
    schema = {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "$defs": defs}
    return jsonschema.Draft202012Validator(schema)


def metadata_problems(meta: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _object_meta_validator().iter_errors(meta)]


# --- pods -------------------------------------------------------------------------------------------

@dataclass
class Pod:
    """One pod template of a manifest: where it is, what it is for, its effective spec."""
    owner: str  # Kind/name
    role: str  # e.g. "template", "Worker", "head", "worker:gpu", "submitter", "node"
    spec: dict
    doc: dict = field(repr=False)
    injected_env: dict[str, str] = field(default_factory=dict)  # what an operator adds

    @property
    def label(self) -> str:
        return f"{self.owner}[{self.role}]"

    def containers(self, init: bool = True) -> list[dict]:
        return (self.spec.get("initContainers", []) if init else []) + self.spec.get("containers", [])


def trainjob_pod(doc: dict) -> dict:
    """The pod a TrainJob's `node` replicated job gets: the runtime's `node` container with the
    trainer's image, command, args, env and resources, and the runtime patches' security context,
    volume mounts and volumes."""
    trainer = doc["spec"]["trainer"]
    spec: dict = {"containers": [{"name": "node"}]}
    for patch in doc["spec"].get("runtimePatches", []):
        for rj in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if rj["name"] != "node":
                continue
            pod = copy.deepcopy(rj["template"]["spec"]["template"]["spec"])
            containers = {c["name"]: c for c in pod.pop("containers", [])}
            spec.update(pod)
            spec["containers"] = [{**containers.get("node", {}), "name": "node"}]
    node = spec["containers"][0]
    node.update({k: copy.deepcopy(trainer[k]) for k in ("image", "command", "args", "env") if k in trainer})
    if "resourcesPerNode" in trainer:
        node["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
    return spec


def pods(docs: list[dict]) -> Iterator[Pod]:
    """Every pod template of the rendered documents."""
    for d in docs:
        owner, spec = f"{d['kind']}/{d['metadata']['name']}", d.get("spec", {})
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield Pod(owner, "template", spec["template"]["spec"], d)
        elif d["kind"] == "PyTorchJob":
            ep = spec.get("elasticPolicy", {})
            for rtype, rs in spec["pytorchReplicaSpecs"].items():
                env = {"PET_RDZV_BACKEND": ep.get("rdzvBackend", "c10d"),
                       "PET_RDZV_ENDPOINT": f"{d['metadata']['name']}-worker-0:29400",
                       "PET_NNODES": (f"{ep['minReplicas']}:{ep['maxReplicas']}" if "minReplicas" in ep
                                      else str(rs.get("replicas", 1))),
                       "PET_NPROC_PER_NODE": str(spec.get("nprocPerNode", "1"))}
                if "maxRestarts" in ep:
                    env["PET_MAX_RESTARTS"] = str(ep["maxRestarts"])
                yield Pod(owner, rtype, rs["template"]["spec"], d, env)
        elif d["kind"] == "TrainJob":
            t = spec["trainer"]
            env = {"PET_NNODES": str(t.get("numNodes", 1)), "PET_NPROC_PER_NODE": str(t.get("numProcPerNode", 1)),
                   "PET_NODE_RANK": "0", "PET_MASTER_ADDR": f"{d['metadata']['name']}-node-0-0.{d['metadata']['name']}",
                   "PET_MASTER_PORT": "29400"}
            yield Pod(owner, "node", trainjob_pod(d), d, env)
        elif d["kind"] == "RayJob":
            if "submitterPodTemplate" in spec:
                yield Pod(owner, "submitter", spec["submitterPodTemplate"]["spec"], d)
            rcs = spec["rayClusterSpec"]
            yield Pod(owner, "head", rcs["headGroupSpec"]["template"]["spec"], d)
            for group in rcs.get("workerGroupSpecs", []):
                yield Pod(owner, f"worker:{group['groupName']}", group["template"]["spec"], d)


# --- quantities -------------------------------------------------------------------------------------

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "k": 1e3, "M": 1e6, "G": 1e9,
           "T": 1e12, "P": 1e15, "m": 1e-3, "": 1}


def quantity(value: Any) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# --- security ---------------------------------------------------------------------------------------

CREDENTIAL_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# Volumes a stage may write (everything else is mounted read-only): the claim, and the owners
# (Kind/name prefixes) allowed to write it.
WRITERS = {"pscv-data": ("Job/pscv-prepare",), "pscv-runs": ("Job/pscv-train", "PyTorchJob/pscv-train",
           "TrainJob/pscv-train", "RayJob/pscv-tune", "Job/pscv-evaluate"),
           "pscv-mlflow": ("Deployment/mlflow",)}
WAITERS = re.compile(r"^wait-for-")


def _effective(pod_sc: dict, c_sc: dict, key: str):
    return c_sc.get(key, pod_sc.get(key))


def image_problems(image: str | None) -> list[str]:
    if not image:
        return ["no image"]
    if "@sha256:" in image:
        return [] if re.search(r"@sha256:[0-9a-f]{64}$", image) else [f"image {image}: malformed digest"]
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or not tag:
        return [f"image {image}: no tag (pin a version or a digest)"]
    if tag == "latest":
        return [f"image {image}: 'latest' is not a pinned tag"]
    return []


def security_problems(pod: Pod) -> list[str]:
    """Everything the pod security contract of docs/CLUSTER.md forbids, for one pod."""
    problems: list[str] = []
    spec, psc = pod.spec, pod.spec.get("securityContext", {})
    say = lambda msg: problems.append(f"{pod.label}: {msg}")  # noqa: E731
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            say(f"{key} is set")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        if "hostPath" in v:
            say(f"volume {v['name']} is a hostPath")
        if "emptyDir" in v and "sizeLimit" not in (v["emptyDir"] or {}):
            say(f"emptyDir {v['name']} has no sizeLimit")
    containers = pod.containers()
    if not containers:
        say("no containers")
    for c in containers:
        cname = f"container {c['name']}"
        csc = c.get("securityContext", {})
        if _effective(psc, csc, "runAsNonRoot") is not True:
            say(f"{cname}: runAsNonRoot is not true")
        uid = _effective(psc, csc, "runAsUser")
        if not isinstance(uid, int) or uid <= 0:
            say(f"{cname}: runAsUser {uid!r} is not a fixed non-root UID")
        if _effective(psc, csc, "runAsGroup") in (0, None):
            say(f"{cname}: runAsGroup is root or unset")
        if csc.get("readOnlyRootFilesystem") is not True:
            say(f"{cname}: readOnlyRootFilesystem is not true")
        if csc.get("allowPrivilegeEscalation") is not False:
            say(f"{cname}: allowPrivilegeEscalation is not false")
        if csc.get("privileged"):
            say(f"{cname}: privileged")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            say(f"{cname}: capabilities are not all dropped")
        if caps.get("add"):
            say(f"{cname}: adds capabilities {caps['add']}")
        if (_effective(psc, csc, "seccompProfile") or {}).get("type") != "RuntimeDefault":
            say(f"{cname}: seccompProfile is not RuntimeDefault")
        problems.extend(f"{pod.label}: {cname}: {p}" for p in image_problems(c.get("image")))
        # resources: CPU and memory requests and limits, GPUs as limits
        res = c.get("resources", {})
        req, lim = res.get("requests", {}), res.get("limits", {})
        for kind in ("cpu", "memory"):
            if kind not in req:
                say(f"{cname}: no {kind} request")
            if kind not in lim:
                say(f"{cname}: no {kind} limit")
            elif kind in req and quantity(req[kind]) > quantity(lim[kind]):
                say(f"{cname}: {kind} request above its limit")
        for key in set(req) | set(lim):
            if key.endswith("/gpu") and (key not in lim or req.get(key, lim[key]) != lim[key]):
                say(f"{cname}: {key} must be a limit (and any request equal to it)")
        # credentials only through secretKeyRef / Secret volumes
        for e in c.get("env", []):
            if "value" in e and (CREDENTIAL_NAME.search(e["name"]) or URL_WITH_PASSWORD.search(str(e["value"]))):
                say(f"{cname}: env {e['name']} holds a credential as a plain value (use secretKeyRef)")
        for a in c.get("command", []) + c.get("args", []):
            if URL_WITH_PASSWORD.search(str(a)):
                say(f"{cname}: a credential on the command line")
        # mounts: writable only where needed
        mounts = c.get("volumeMounts", [])
        paths = {m["mountPath"]: m for m in mounts}
        for m in mounts:
            v = volumes.get(m["name"])
            if v is None:
                say(f"{cname}: mounts {m['name']}, which is not a volume of the pod")
                continue
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is not None and not m.get("readOnly"):
                writers = WRITERS.get(claim, ())
                if not pod.owner.startswith(writers) or WAITERS.match(c["name"]):
                    say(f"{cname}: mounts {claim} writable; this stage only reads it")
            if ("configMap" in v or "secret" in v) and not m.get("readOnly"):
                say(f"{cname}: mounts {m['name']} ({'configMap' if 'configMap' in v else 'secret'}) writable")
        if not WAITERS.match(c["name"]) and "/tmp" not in paths:
            say(f"{cname}: no writable /tmp (the root file system is read-only)")
        for path, m in paths.items():
            v = volumes.get(m["name"], {})
            if path in ("/tmp", "/cache", "/dev/shm") and "emptyDir" not in v:
                say(f"{cname}: {path} is not an emptyDir")
        if "/dev/shm" in paths:
            shm = volumes.get(paths["/dev/shm"]["name"], {}).get("emptyDir") or {}
            if shm.get("medium") != "Memory":
                say(f"{cname}: /dev/shm is not memory-backed")
            elif "memory" in lim and "sizeLimit" in shm and quantity(shm["sizeLimit"]) >= quantity(lim["memory"]):
                say(f"{cname}: /dev/shm ({shm['sizeLimit']}) is not inside the memory limit ({lim['memory']})")
    # a claim mounted only read-only should be claimed read-only too
    for v in volumes.values():
        pvc = v.get("persistentVolumeClaim")
        if pvc is None:
            continue
        ms = [m for c in containers for m in c.get("volumeMounts", []) if m["name"] == v["name"]]
        if ms and all(m.get("readOnly") for m in ms) and not pvc.get("readOnly"):
            say(f"volume {v['name']}: every mount is read-only but the claim is not")
    return problems


# --- environment and command lines --------------------------------------------------------------------

def configmaps(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}


def _expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined names are replaced, $$ is a literal $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def container_env(pod: Pod, container: dict, docs: list[dict]) -> dict[str, str]:
    """The environment the kubelet gives a container: operator-injected variables, envFrom, then env
    (each value expanded with what is defined before it). Secrets and field refs are placeholders."""
    cms = configmaps(docs)
    env = dict(pod.injected_env)
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            assert name in cms or src["configMapRef"].get("optional"), f"{pod.label}: no ConfigMap {name}"
            env.update(cms.get(name, {}))
        elif "secretRef" in src:
            pass  # keys unknown offline
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(str(e["value"]), env)
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                assert ref["name"] in cms and ref["key"] in cms[ref["name"]], f"{pod.label}: no {ref}"
                env[e["name"]] = cms[ref["name"]][ref["key"]]
            elif "secretKeyRef" in vf:
                env[e["name"]] = SECRET_PLACEHOLDER
            elif "fieldRef" in vf:
                env[e["name"]] = FIELD_REFS[vf["fieldRef"]["fieldPath"]]
            else:
                env[e["name"]] = "<resource>"
    return env


def argv(container: dict, env: dict[str, str]) -> list[str]:
    return [_expand(str(a), env) for a in container.get("command", []) + container.get("args", [])]


def mount_for(container: dict, path: str) -> dict | None:
    """The volume mount that holds ``path`` in this container (the longest matching mount path)."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    return best
