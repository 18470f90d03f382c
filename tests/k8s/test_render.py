"""Every overlay renders; the configs come from configs/ (no copy of a preset under k8s/); one image,
pinned; every stage is there once, labelled, and the train forms are what each overlay says."""
from __future__ import annotations

from pathlib import Path

import yaml

from pscv_dist.config import PRESETS_DIR, presets

from .manifests import K8S, OVERLAYS, by_kind, get, image_problems, pods

STAGES = {"storage", "mlflow", "prepare", "train", "evaluate", "register", "serve"}
TRAIN_FORMS = {"cpu-smoke": "indexed-job", "gpu-multinode": "pytorchjob", "gpu-multinode-trainjob": "trainjob",
               "gpu-multinode-indexed": "indexed-job"}


def test_the_overlays_that_ship():
    assert {"cpu-smoke", "gpu-multinode"} <= set(OVERLAYS)
    assert set(TRAIN_FORMS) == set(OVERLAYS), "a new overlay: say which train form it runs (TRAIN_FORMS)"


def test_configs_come_from_the_presets_not_a_copy(rendered):
    files = {p.name: p.read_text() for p in PRESETS_DIR.glob("*.yaml")}
    assert sorted(files) == sorted(f"{n}.yaml" for n in presets())
    for overlay, docs in rendered.items():
        cm = get(docs, "ConfigMap", "pscv-configs")
        assert cm["data"] == files, f"{overlay}: pscv-configs differs from configs/"


def test_the_configs_component_lists_every_preset():
    """Kustomize takes no glob for generator files: every preset in pscv_dist/configs must be listed by
    the Component there (pscv_dist/configs/Kustomization), which k8s/base uses; the file is not a preset."""
    component = PRESETS_DIR / "Kustomization"
    k = yaml.safe_load(component.read_text())
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    (gen,) = [g for g in k["configMapGenerator"] if g["name"] == "pscv-configs"]
    listed = gen["files"]
    assert len(listed) == len(set(listed)), f"{component}: a preset listed twice"
    on_disk = sorted(p.name for p in PRESETS_DIR.glob("*.yaml"))
    assert sorted(listed) == on_disk, (f"{component} lists {sorted(listed)} but pscv_dist/configs holds {on_disk}: "
                                       "list every preset file in its pscv-configs configMapGenerator")
    assert "Kustomization" not in presets() and sorted(f"{n}.yaml" for n in presets()) == on_disk
    base = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())
    assert (K8S / "base" / "../../configs").resolve() == PRESETS_DIR.resolve()
    assert "../../configs" in base.get("components", [])
    assert all(g["name"] != "pscv-configs" for g in base.get("configMapGenerator", [])), "one generator, in configs/"


def test_no_copy_of_a_preset_under_k8s():
    presets_text = {p.read_text().strip() for p in PRESETS_DIR.glob("*.yaml")}
    for path in K8S.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text()
        assert text.strip() not in presets_text, f"{path} is a copy of a preset"
        for doc in yaml.safe_load_all(text) if path.suffix == ".yaml" else ():
            for value in ((doc or {}).get("data") or {}).values() if isinstance(doc, dict) else ():
                assert "loss:" not in str(value) and "optim:" not in str(value), f"{path} embeds a config"


def test_every_container_runs_the_one_pinned_image(rendered):
    for overlay, docs in rendered.items():
        images = {c.get("image") for pod in pods(docs) for c in pod.containers()}
        assert len(images) == 1, f"{overlay}: {images}"
        (image,) = images
        assert image_problems(image) == [] and image.startswith("ghcr.io/pscv-dist/pscv-dist:"), image


def test_every_stage_once_and_labelled(rendered):
    for overlay, docs in rendered.items():
        for d in docs:
            labels = d["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/part-of") == "pscv-dist", f"{overlay}: {d['kind']}/{d['metadata']['name']}"
            assert labels.get("app.kubernetes.io/component") in STAGES | {"tune", "config"}, labels
        stages = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in docs}
        assert STAGES <= stages, f"{overlay}: missing {STAGES - stages}"
        train = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "train"
                 and d["kind"] != "Service"]
        assert len(train) == 1, f"{overlay}: one training workload, found {[d['kind'] for d in train]}"
        assert train[0]["metadata"]["labels"]["pscv-dist/train-form"] == TRAIN_FORMS[overlay]
        names = [(d["kind"], d["metadata"]["name"]) for d in docs]
        assert len(names) == len(set(names)), f"{overlay}: duplicate objects"


def test_gpu_overlays_tune_with_a_rayjob_and_the_smoke_needs_no_operator(rendered):
    for overlay, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        if overlay == "cpu-smoke":
            assert {d["apiVersion"] for d in docs} <= {"v1", "apps/v1", "batch/v1"}, "cpu-smoke must run on any cluster"
            assert not any("nvidia.com/gpu" in str(c.get("resources")) for p in pods(docs) for c in p.containers())
        else:
            assert "RayJob" in kinds
            gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for p in pods(docs) for c in p.containers(init=False)
                    if p.doc["metadata"]["labels"].get("app.kubernetes.io/component") == "train"]
            assert gpus and all(g for g in gpus), f"{overlay}: the training pods ask for GPUs"


def test_pvcs_fit_the_overlay(rendered):
    for overlay, docs in rendered.items():
        claims = {d["metadata"]["name"]: d["spec"]["accessModes"] for d in by_kind(docs, "PersistentVolumeClaim")}
        assert {"pscv-data", "pscv-runs", "pscv-mlflow"} <= set(claims)
        for pod in pods(docs):
            for v in pod.spec.get("volumes", []):
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, f"{overlay}: {pod.label} {v}"
        if overlay.startswith("gpu"):  # pods of one job on several nodes share data and runs
            assert claims["pscv-data"] == claims["pscv-runs"] == ["ReadWriteMany"]


def test_the_runtime_failure_policy_patch_is_not_a_resource():
    k = yaml.safe_load((K8S / "components/train-trainjob/kustomization.yaml").read_text())
    assert "runtime-failure-policy.patch.yaml" not in k.get("resources", []) + k.get("patches", [])
    assert Path(K8S / "components/train-trainjob/runtime-failure-policy.patch.yaml").is_file()
