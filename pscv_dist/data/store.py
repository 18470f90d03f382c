"""``SliceStore``: the public reader of a pscv store (the format is in :mod:`.format`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import format as fmt
from .catalog import content_sha256


class SliceStore:
    """Random access to the training slices and native volumes of a store.

    Args:
        path: a local folder or an fsspec URL (``s3://...``, ``memory://...``).
        storage_options: passed to fsspec for URLs.

    ``store[i]`` -> ``{"image": (1,S,S) float32, "label": (S,S) int64, "points": (S,S) int64,
    "present": (K,) bool, "case": str, "z": int}``; ``store.volume(case)`` -> ``{"image": (Z,H,W)
    float32, "label": (Z,H,W) int64, "spacing": (dz,dy,dx) or None, "affine": 4x4 or None}``.

    Raises:
        ValueError: the path holds no complete pscv store, or one of another format version.
    """

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None):
        import zarr

        self.path = str(path)
        try:
            self._group = zarr.open_group(self.path, mode="r", storage_options=storage_options)
        except Exception as exc:  # FileNotFoundError, GroupNotFoundError, JSON errors
            raise ValueError(f"{self.path}: no pscv store found ({type(exc).__name__}: {exc})") from None
        raw = self._group.attrs.get(fmt.FORMAT_NAME)
        if raw is None:
            raise ValueError(f"{self.path}: not a complete pscv store (root attribute "
                             f"{fmt.FORMAT_NAME!r} missing; was `pscv prepare` interrupted?)")
        self.meta = fmt.StoreMeta.from_json(raw, where=self.path)
        self._arrays = {name: self._group[name] for name in
                        (fmt.SLICE_IMAGE, fmt.SLICE_LABEL)}
        self._clicks = np.asarray(self._group[fmt.SLICE_CLICKS][:])
        self._case_index = np.asarray(self._group[fmt.SLICE_CASE][:])
        self._z = np.asarray(self._group[fmt.SLICE_Z][:])
        self._present = np.asarray(self._group[fmt.SLICE_PRESENT][:])
        self.cases: list[str] = list(self.meta.cases)

    # --- metadata -----------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    @property
    def ignore_index(self) -> int:
        return self.meta.ignore_index

    @property
    def size(self) -> int:
        return self.meta.size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta.fingerprint

    @property
    def splits(self) -> dict[str, list[str]]:
        return self.meta.splits

    def split(self, name: str) -> list[str]:
        if name not in self.meta.splits:
            raise KeyError(f"{self.path}: split {name!r} not found; available: {sorted(self.meta.splits)}")
        return list(self.meta.splits[name])

    def slice_indices(self, cases: list[str] | None = None) -> np.ndarray:
        """Indices of the training slices of the given cases (all when None), in store order."""
        if cases is None:
            return np.arange(len(self))
        unknown = [c for c in cases if c not in self.meta.cases]
        if unknown:
            raise KeyError(f"{self.path}: case(s) {unknown[:5]} not in the store")
        parts = [np.arange(self.meta.cases[c].first_slice, self.meta.cases[c].first_slice + self.meta.cases[c].n_slices)
                 for c in cases]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def clicks(self) -> np.ndarray:
        """(N, M, 3) int16: every slice's clicked pixels as (class, y, x), padding rows -1."""
        return self._clicks

    @property
    def present(self) -> np.ndarray:
        """(N, K) bool: classes present in each training slice."""
        return self._present

    # --- data ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta.n_slices

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"slice index {i} out of range for a store of {n} slices")
        i = int(i) % n
        return {
            "image": torch.from_numpy(np.asarray(self._arrays[fmt.SLICE_IMAGE][i]))[None],
            "label": torch.from_numpy(np.asarray(self._arrays[fmt.SLICE_LABEL][i]).astype(np.int64)),
            "points": torch.from_numpy(fmt.points_map(self._clicks[i], (self.size, self.size), self.ignore_index)),
            "present": torch.from_numpy(self._present[i].copy()),
            "case": self.cases[self._case_index[i]],
            "z": int(self._z[i]),
        }

    def volume(self, case: str) -> dict[str, Any]:
        if case not in self.meta.cases:
            raise KeyError(f"{self.path}: case {case!r} not in the store")
        meta = self.meta.cases[case]
        return {
            "image": np.asarray(self._group[fmt.volume_path(case, "image")][:]),
            "label": np.asarray(self._group[fmt.volume_path(case, "label")][:]).astype(np.int64),
            "spacing": None if meta.spacing is None else tuple(meta.spacing),
            "affine": None if meta.affine is None else np.asarray(meta.affine),
        }

    def verify(self) -> list[str]:
        """Recompute every case's content hash; returns the cases whose bytes changed."""
        bad = []
        for case, meta in self.meta.cases.items():
            img = np.asarray(self._group[fmt.volume_path(case, "image")][:])
            lab = np.asarray(self._group[fmt.volume_path(case, "label")][:])
            if content_sha256(img, lab) != meta.sha256:
                bad.append(case)
        return bad

    def summary(self) -> dict[str, Any]:
        fp = self.meta.fingerprint
        return {
            "path": self.path, "format": f"{self.meta.format} v{self.meta.version}", "layout": self.meta.layout,
            "source": self.meta.source, "classes": self.classes, "ignore_index": self.ignore_index,
            "size": self.size, "n_cases": len(self.cases), "n_slices": len(self),
            "normalization": self.meta.normalization, "points": self.meta.points,
            "splits": {k: len(v) for k, v in self.meta.splits.items()},
            "spacing": fp.get("spacing"), "intensity": fp.get("intensity"),
            "voxels_per_class": fp.get("voxels_per_class"), "slices_per_class": fp.get("slices_per_class"),
            "sha256": fp.get("sha256"),
        }
