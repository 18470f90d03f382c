"""The pod security contract (docs/CLUSTER.md), asserted for every pod template of every overlay:
non-root fixed UID, read-only root file system with emptyDirs for /tmp, caches and /dev/shm (inside
the memory limit), no privilege escalation, no capabilities, RuntimeDefault seccomp, CPU and memory
requests and limits (GPUs as limits), read-only mounts where a stage only reads, credentials only
from Secrets, a pinned image."""
from __future__ import annotations

import re

from .manifests import ROOT, UID, by_kind, pods, security_problems


def test_every_pod_of_every_overlay_is_secure(rendered):
    checked = []
    for overlay, docs in rendered.items():
        for pod in pods(docs):
            assert security_problems(pod) == [], overlay
            checked.append(f"{overlay}:{pod.label}")
    assert len(checked) == 6 + 3 * 9, checked


def test_the_uid_is_the_images_user(rendered):
    user = re.search(r"^USER\s+(\d+)(?::(\d+))?\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile sets a numeric USER"
    assert int(user.group(1)) == UID != 0
    for docs in rendered.values():
        for pod in pods(docs):
            for c in pod.containers():
                sc = {**pod.spec.get("securityContext", {}), **c.get("securityContext", {})}
                assert sc["runAsUser"] == UID and sc["runAsGroup"] == int(user.group(2) or UID), pod.label


def test_stages_that_only_read_the_store_mount_it_read_only(rendered):
    for overlay, docs in rendered.items():
        for pod in pods(docs):
            for c in pod.containers():
                for m in c.get("volumeMounts", []):
                    if m["mountPath"] in ("/data", "/raw", "/etc/pscv/configs"):
                        writer = pod.owner == "Job/pscv-prepare" and c["name"] == "prepare" and m["mountPath"] == "/data"
                        assert bool(m.get("readOnly")) != writer, f"{overlay}: {pod.label} {c['name']} {m}"


def test_secrets_are_referenced_never_inlined(rendered):
    for overlay, docs in rendered.items():
        secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
        refs = []
        for pod in pods(docs):
            for c in pod.containers():
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        refs.append((pod.label, e["name"], ref))
        assert refs, overlay
        for label, name, ref in refs:
            assert ref["name"] == "pscv-mlflow", (label, name)
            if overlay == "cpu-smoke":  # generated there; elsewhere the platform team creates it
                data = {**secrets[ref["name"]].get("data", {}), **secrets[ref["name"]].get("stringData", {})}
                assert ref["key"] in data or ref.get("optional"), (label, ref)
        # the MLflow server takes its backend store and artifact destination only from the Secret
        mlflow = next(p for p in pods(docs) if p.owner == "Deployment/mlflow")
        env = {e["name"]: e for e in mlflow.spec["containers"][0]["env"]}
        for var in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"):
            assert "secretKeyRef" in env[var]["valueFrom"], var
        args = " ".join(mlflow.spec["containers"][0]["args"])
        assert "--backend-store-uri" not in args and "--artifacts-destination" not in args


def test_every_pod_opts_out_of_the_service_account_token_where_it_can(rendered):
    for docs in rendered.values():
        for pod in pods(docs):
            if pod.doc["kind"] != "TrainJob":  # runtime patches cannot set it (the runtime owns the pod)
                assert pod.spec.get("automountServiceAccountToken") is False, pod.label
