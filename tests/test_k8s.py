"""The Kubernetes manifests parse, run our real entry point, and carry a config our schema accepts."""
from pathlib import Path

import yaml

from pscv_dist.config import from_dict

K8S = Path(__file__).resolve().parents[1] / "k8s"


def _docs(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_configmap_config_is_valid():
    (cm,) = _docs("configmap.yaml")
    cfg = from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.train.out_dir.startswith("/runs") and cfg.data.store.startswith("/data")


def test_pytorchjob_runs_the_trainer_with_the_mounted_config():
    (job,) = _docs("pytorchjob.yaml")
    (cm,) = _docs("configmap.yaml")
    spec = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["command"] == ["torchrun"] and c["args"][:2] == ["-m", "pscv_dist.train"]
    config_path = Path(c["args"][c["args"].index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(config_path.parent) == mounts["config"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert config_path.name in cm["data"]
    claims = {d["metadata"]["name"] for d in _docs("pvc.yaml")}
    assert {volumes["data"]["persistentVolumeClaim"]["claimName"], volumes["runs"]["persistentVolumeClaim"]["claimName"]} <= claims
    assert job["spec"]["elasticPolicy"]["rdzvBackend"] == "c10d"
