"""The Kubernetes manifests parse, run our real entry point, and train with the packaged preset (no
drifting copy of a config under k8s/) plus overrides our schema accepts."""
from pathlib import Path

import yaml

from pscv_dist.config import PRESETS_DIR, load_config

K8S = Path(__file__).resolve().parents[1] / "k8s"


def _docs(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_no_copy_of_a_preset_under_k8s():
    presets = {p.read_text() for p in PRESETS_DIR.glob("*.yaml")}
    for path in K8S.rglob("*.yaml"):
        for doc in _docs(path.relative_to(K8S)):
            for value in (doc.get("data") or {}).values() if doc.get("kind") == "ConfigMap" else ():
                assert value not in presets and "loss:" not in value, f"{path} embeds a config copy"


def test_pytorchjob_runs_the_trainer_with_the_packaged_preset():
    (job,) = _docs("pytorchjob.yaml")
    spec = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["name"] == "pytorch" and c["command"] == ["torchrun"] and c["args"][:2] == ["-m", "pscv_dist.train"]
    args = c["args"][2:]
    preset = args[args.index("--config") + 1]
    overrides = [a for a in args if "=" in a]
    cfg = load_config(preset, overrides)  # validates every override against the schema
    assert cfg.data.store.startswith("/data") and cfg.train.out_dir.startswith("/runs")
    assert cfg.train.iterations == load_config(preset).train.iterations == 60000
    ranks = job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] * int(job["spec"]["nprocPerNode"])
    assert cfg.data.batch_size % ranks == 0, f"global batch {cfg.data.batch_size} cannot be split over {ranks} ranks"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == int(job["spec"]["nprocPerNode"])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == "/data" and mounts["runs"] == "/runs"
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {d["metadata"]["name"] for d in _docs("pvc.yaml")}
    assert {volumes["data"]["persistentVolumeClaim"]["claimName"], volumes["runs"]["persistentVolumeClaim"]["claimName"]} <= claims
    assert job["spec"]["elasticPolicy"]["rdzvBackend"] == "c10d"
