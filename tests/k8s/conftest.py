"""Fixtures of the k8s tests: the rendered overlays (kubectl kustomize; skipped with a reason where
kubectl is absent) and the operators' CRDs (../shared/k8s-crds, or $PSCV_SHARED/k8s-crds)."""
from __future__ import annotations

import pytest

from .manifests import CRDS, OVERLAYS, CrdValidator, kubectl, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    if kubectl() is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered (kubectl kustomize)")
    return {name: render(name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def crds() -> CrdValidator:
    if not any(CRDS.glob("*.yaml")):
        pytest.skip(f"the operators' CRDs are not at {CRDS} (set PSCV_SHARED to the shared folder)")
    pytest.importorskip("jsonschema", reason="jsonschema validates custom resources against the CRDs")
    return CrdValidator(CRDS)


@pytest.fixture(scope="session")
def kv():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (pip, pinned in constraints.txt) "
                                                            "bundles the Kubernetes OpenAPI schemas")
