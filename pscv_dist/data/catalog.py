"""What a store says about its dataset: the splits by patient and the dataset fingerprint."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np


@dataclasses.dataclass
class CaseResult:
    """What converting one case hands to the store metadata and the fingerprint (from a worker).

    A typed record rather than a dict so that a renamed or missing field fails where it is made,
    not later in the assembler.
    """

    case: str
    patient: str
    shape: list[int]  # native (Z, H, W)
    spacing: list[float] | None
    affine: list[list[float]] | None
    sha256: str  # content hash of the stored native image and label
    sample: np.ndarray  # seeded sample of raw intensities (all voxels)
    sample_fg: np.ndarray  # the same, foreground voxels only
    voxels_per_class: np.ndarray  # (K,)
    slices_per_class: np.ndarray  # (K,) training slices in which each class is annotated
    labelled: bool = True  # has a dense label
    annotation: dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "simulated"})

    @property
    def n_slices(self) -> int:
        return int(self.shape[0])


def patient_folds(case_patient: dict[str, str], cases: list[str], k: int) -> dict[str, list[str]]:
    """``fold{f}/train`` and ``fold{f}/val`` for f in 0..k-1, by patient.

    Patients are sorted and cut into k contiguous blocks (the ACDC convention: fold f validates
    patients 20f+1 .. 20(f+1) of 100), so all cases of one patient (both ACDC frames) share a fold.
    No folds when there are fewer than 2 patients; k is capped at the number of patients.
    """
    patients = sorted({case_patient[c] for c in cases})
    k = min(k, len(patients))
    splits: dict[str, list[str]] = {}
    if k < 2:
        return splits
    n = len(patients)
    for f in range(k):
        held = set(patients[f * n // k:(f + 1) * n // k])
        splits[f"fold{f}/val"] = [c for c in cases if case_patient[c] in held]
        splits[f"fold{f}/train"] = [c for c in cases if case_patient[c] not in held]
    return splits


def make_splits(case_patient: dict[str, str], explicit: dict[str, list[str]], folds: int,
                unlabelled: set[str] = frozenset()) -> dict[str, list[str]]:
    """``all``, the layout's explicit lists (e.g. Synapse ``train``/``test``), and patient folds
    over the training cases (``train`` when the layout has one, else all cases).

    Explicit lists keep only the converted cases (a ``--cases`` subset or ``--skip-empty`` drops
    some): a split must never name a case the store does not hold.

    Cases without a dense label (trained from imported clicks alone) are never validated on: the
    folds are cut over the labelled cases and every unlabelled case joins every ``fold{f}/train``;
    ``labelled`` lists the cases that have a dense label when some have none."""
    cases = list(case_patient)
    splits = {"all": cases}
    splits.update({k: [c for c in v if c in case_patient] for k, v in explicit.items()})
    pool = splits.get("train") or cases
    folds_ = patient_folds(case_patient, [c for c in pool if c not in unlabelled], folds)
    extra = [c for c in pool if c in unlabelled]
    splits.update({k: v + extra if k.endswith("/train") else v for k, v in folds_.items()})
    if unlabelled:
        splits["labelled"] = [c for c in cases if c not in unlabelled]
    return splits


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    p = np.percentile(values, [0.5, 50, 99.5])
    return {"p00_5": float(p[0]), "p50": float(p[1]), "p99_5": float(p[2]),
            "mean": float(values.mean()), "std": float(values.std())}


def fingerprint(results: list[CaseResult], classes: list[str]) -> dict[str, Any]:
    """Dataset fingerprint (nnU-Net's idea): shapes, spacings, raw intensity percentiles (all voxels
    and foreground, from a seeded sample of each case), voxels and training slices per class, and
    a content hash over every case's native image and label bytes."""
    spacings = np.array([r.spacing for r in results if r.spacing is not None], dtype=np.float64)
    digest = hashlib.sha256()
    for r in results:
        digest.update(f"{r.case}:{r.sha256};".encode())
    k = len(classes)
    voxels = np.sum([r.voxels_per_class for r in results], axis=0) if results else np.zeros(k)
    slices = np.sum([r.slices_per_class for r in results], axis=0) if results else np.zeros(k)
    imported = [r.annotation for r in results if r.annotation.get("kind") == "imported"]
    return {
        "n_cases": len(results),
        "n_slices": int(sum(r.n_slices for r in results)),
        "shapes": {r.case: list(r.shape) for r in results},
        "spacing": None if spacings.size == 0 else {
            "median": np.median(spacings, axis=0).tolist(),
            "min": spacings.min(axis=0).tolist(),
            "max": spacings.max(axis=0).tolist(),
        },
        "intensity": _stats(np.concatenate([r.sample for r in results])),
        "intensity_foreground": _stats(np.concatenate([r.sample_fg for r in results])),
        "voxels_per_class": {c: int(v) for c, v in zip(classes, voxels)},
        "slices_per_class": {c: int(v) for c, v in zip(classes, slices)},
        "annotations": {
            "simulated_cases": len(results) - len(imported), "imported_cases": len(imported),
            "unlabelled_cases": sum(not r.labelled for r in results),
            "imported_voxels_per_class": {c: int(sum(a["per_class"][i] for a in imported))
                                          for i, c in enumerate(classes)},
            "imported_duplicates": int(sum(a["duplicates"] for a in imported)),
            "imported_disagree_with_label": int(sum(a.get("disagree_with_label", 0) for a in imported)),
            "resize_conflicts": int(sum(a["resize_conflicts"] for a in imported)),
        },
        "sha256": digest.hexdigest(),
    }


def content_sha256(image: np.ndarray, label: np.ndarray) -> str:
    """Hash of a case's stored native arrays (dtype, shape and bytes), checked by ``verify``."""
    h = hashlib.sha256()
    for a in (image, label):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
