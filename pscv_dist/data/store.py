"""``SliceStore``: the public reader of a pscv store (the format is in :mod:`.format`).

Opening a store checks what is cheap to check, so a damaged store is refused before a training run
spends hours on it: the root metadata is parsed and checked for consistency, every slice array is
checked against its :class:`~.format.ArraySpec`, the small arrays are read and checked against the
metadata, and a listing shows every file the metadata needs is there with its recorded size (a
missing chunk would otherwise read as zeros). Reading a chunk that fails its CRC raises
:class:`StoreError` naming the array and the case. Deeper checks read data: :meth:`check_cases`
(the trainer runs it on the validation cases) and :meth:`verify` (``pscv inspect --verify``).
"""
from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np
import torch

from . import format as fmt
from .catalog import content_sha256
from .integrity import check_complete, filesystem, listing, verify_files
from .volume_io import check_file
from ..errors import NotInStore, StoreError


class SliceStore:
    """Random access to the training slices and native volumes of a store.

    Args:
        path: a local folder or an fsspec URL (``s3://...``, ``memory://...``).
        storage_options: passed to fsspec for URLs.

    ``store[i]`` -> ``{"image": (1,S,S) float32, "label": (S,S) int64, "points": (S,S) int64,
    "present": (K,) bool, "case": str, "z": int}``; ``store.volume(case)`` -> ``{"image": (Z,H,W)
    float32, "label": (Z,H,W) int64, "labelled": bool, "clicks": (n,4) int32 (class,z,y,x) imported
    annotations, "spacing": (dz,dy,dx) or None, "affine": 4x4 or None}``.

    Raises:
        StoreError: the path holds no complete pscv store, one of another format version, or one
            whose metadata, arrays or files disagree (the message names the array or case).
        KeyError: an unknown split or case name (from :meth:`split`, :meth:`volume`, ...).
    """

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None):
        import zarr

        self.path = str(path)
        self._storage_options = storage_options
        local = None if "://" in self.path else self.path
        if local is not None and not os.path.isdir(local):
            if os.path.islink(local) or os.path.exists(local):
                check_file(local)  # names a symlink loop or a dangling link
                raise StoreError(f"{self.path}: is a file, expected a store folder written by `pscv prepare`")
            raise StoreError(f"{self.path}: no pscv store found (the folder does not exist)")
        try:
            self._group = zarr.open_group(self.path, mode="r", storage_options=storage_options)
        except Exception as exc:  # FileNotFoundError, GroupNotFoundError, JSON errors
            raise StoreError(f"{self.path}: no pscv store found ({type(exc).__name__}: {exc})") from None
        raw = self._group.attrs.get(fmt.FORMAT_NAME)
        if raw is None:
            raise StoreError(f"{self.path}: not a complete pscv store (root attribute "
                             f"{fmt.FORMAT_NAME!r} missing; was `pscv prepare` interrupted?)")
        self.meta = fmt.StoreMeta.from_json(raw, where=self.path)
        self.cases: list[str] = list(self.meta.cases)
        self._specs = self.meta.array_specs()
        self._fs, self._root = filesystem(self.path, storage_options)
        check_complete(self.meta, listing(self._fs, self._root), self.path)
        self._arrays = {name: self._open(name) for name in fmt.SLICE_ARRAYS}
        self._clicks = self._read(fmt.SLICE_CLICKS, ...)
        self._offsets = fmt.click_offsets(self._clicks, self.meta.n_slices)
        self._case_index = self._read(fmt.SLICE_CASE, ...)
        self._z = self._read(fmt.SLICE_Z, ...)
        self._present = self._read(fmt.SLICE_PRESENT, ...)
        self._check_slice_index()
        self._check_clicks()

    # --- checked access -----------------------------------------------------------------------
    def _open(self, name: str):
        """Open one array and check it against its spec (dtype, shape, chunks, shards, CRC)."""
        try:
            arr = self._group[name]
        except Exception as exc:  # KeyError / ArrayNotFoundError / bad JSON
            raise StoreError(f"{self.path}: {name}: array missing or unreadable ({type(exc).__name__}); "
                             f"re-run `pscv prepare`") from None
        self._specs[name].check(arr, self.path)
        return arr

    def _read(self, name: str, selection, array=None, what: str = "") -> np.ndarray:
        """Read ``array[selection]``; a chunk that fails to decode (CRC, codec) is a StoreError."""
        arr = self._arrays[name] if array is None else array
        try:
            return np.asarray(arr[selection])
        except (IndexError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise StoreError(f"{self.path}: {name}{what}: chunk could not be decoded ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]}); the store is damaged, re-run `pscv prepare`") from None

    def _check_clicks(self) -> None:
        """slices/clicks must be sorted by slice, inside the slices, of known classes, and agree
        with slices/present (a class is present exactly where it has an annotated pixel)."""
        c, n, k, s = self._clicks, len(self), self.num_classes, self.size
        bad = None
        if len(c) and (np.any(np.diff(c[:, 0]) < 0) or c[:, 0].min() < 0 or c[:, 0].max() >= n):
            bad = "rows are not sorted by a slice index inside the store"
        elif len(c) and (c[:, 1].min() < 0 or c[:, 1].max() >= k):
            bad = f"a class outside 0..{k - 1}"
        elif len(c) and (c[:, 2:].min() < 0 or c[:, 2:].max() >= s):
            bad = f"a pixel outside the {s}x{s} slices"
        else:
            present = np.zeros((n, k), dtype=bool)
            present[c[:, 0], c[:, 1]] = True
            if not np.array_equal(present, self._present):
                bad = f"disagrees with {fmt.SLICE_PRESENT}"
        if bad:
            raise StoreError(f"{self.path}: {fmt.SLICE_CLICKS}: {bad}; the store is damaged, re-run `pscv prepare`")

    def _check_slice_index(self) -> None:
        """slices/case_index and slices/z must say what the case metadata says."""
        for ci, (case, m) in enumerate(self.meta.cases.items()):
            sl = slice(m.first_slice, m.first_slice + m.n_slices)
            if not (np.all(self._case_index[sl] == ci) and np.array_equal(self._z[sl], np.arange(m.n_slices))):
                raise StoreError(f"{self.path}: case {case!r}: slices {sl.start}..{sl.stop - 1} of "
                                 f"{fmt.SLICE_CASE} / {fmt.SLICE_Z} do not belong to it; metadata and arrays disagree")

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
        """The cases of a split, or of an expression over splits: ``A&B`` (in both), ``A-B`` (in A,
        not in B), read left to right, in A's order. E.g. an inner split of fold 0's training
        patients for a search that must never see fold 0's validation patients:
        ``fold0/train&fold1/train`` to train and ``fold1/val`` to validate (with 4 folds)."""
        import re

        is_expr = name not in self.meta.splits and re.fullmatch(r"[^&-]+([&-][^&-]+)+", name)
        parts = re.split(r"([&-])", name) if is_expr else [name]
        cases = self._named_split(parts[0].strip(), name)
        for op, other in zip(parts[1::2], parts[2::2]):
            keep = set(self._named_split(other.strip(), name))
            cases = [c for c in cases if (c in keep) == (op == "&")]
        return cases

    def _named_split(self, name: str, expression: str) -> list[str]:
        if name not in self.meta.splits:
            where = "" if name == expression else f" (in {expression!r})"
            raise NotInStore(f"{self.path}: split {name!r}{where} not found; available: {sorted(self.meta.splits)}")
        return list(self.meta.splits[name])

    def _known(self, cases: list[str]) -> None:
        unknown = [c for c in cases if c not in self.meta.cases]
        if unknown:
            raise NotInStore(f"{self.path}: case(s) {unknown[:5]} not in the store")

    def slice_indices(self, cases: list[str] | None = None) -> np.ndarray:
        """Indices of the training slices of the given cases (all when None), in store order."""
        if cases is None:
            return np.arange(len(self))
        self._known(cases)
        parts = [np.arange(self.meta.cases[c].first_slice, self.meta.cases[c].first_slice + self.meta.cases[c].n_slices)
                 for c in cases]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def clicks(self) -> np.ndarray:
        """(P, 4) int32: every annotated training pixel as (slice, class, y, x), sorted by slice."""
        return self._clicks

    def points(self, indices) -> np.ndarray:
        """(B, S, S) uint8 point-label maps of the given slices (``ignore_index`` but at the clicks)."""
        return fmt.points_maps(self._clicks, self._offsets, indices, self.size, self.ignore_index)

    def read_slices(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Images (float32) and labels (uint8) of slices ``start..stop-1`` in one read per array:
        the unit the training input reads in (whole shards, :mod:`.cache`)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"slices {start}..{stop - 1} out of range for a store of {len(self)} slices")
        where = f" (slices {start}..{stop - 1})"
        return (self._read(fmt.SLICE_IMAGE, slice(start, stop), what=where),
                self._read(fmt.SLICE_LABEL, slice(start, stop), what=where))

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
        case = self.cases[self._case_index[i]]
        where = f" (slice {i}, case {case!r})"
        return {
            "image": torch.from_numpy(self._read(fmt.SLICE_IMAGE, i, what=where))[None],
            "label": torch.from_numpy(self._read(fmt.SLICE_LABEL, i, what=where).astype(np.int64)),
            "points": torch.from_numpy(self.points([i])[0].astype(np.int64)),
            "present": torch.from_numpy(self._present[i].copy()),
            "case": case,
            "z": int(self._z[i]),
        }

    def _volume_arrays(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for kind in ("image", "label"):
            name = fmt.volume_path(case, kind)
            out.append(self._read(name, ..., array=self._open(name), what=f" (case {case!r})"))
        return out[0], out[1]

    def volume(self, case: str) -> dict[str, Any]:
        if case not in self.meta.cases:
            raise NotInStore(f"{self.path}: case {case!r} not in the store")
        meta = self.meta.cases[case]
        image, label = self._volume_arrays(case)
        return {
            "image": image,
            "label": label.astype(np.int64),
            "labelled": meta.labelled,
            "clicks": self.clicks_of(case),
            "spacing": None if meta.spacing is None else tuple(meta.spacing),
            "affine": None if meta.affine is None else np.asarray(meta.affine),
        }

    def clicks_of(self, case: str) -> np.ndarray:
        """(n, 4) int32 imported annotated voxels of a case as (class, z, y, x) in its native (Z, H, W)
        grid, the annotation of record; (0, 4) for a case whose clicks were simulated."""
        if case not in self.meta.cases:
            raise NotInStore(f"{self.path}: case {case!r} not in the store")
        if self.meta.cases[case].imported_clicks is None:
            return np.zeros((0, 4), dtype=np.int32)
        name = fmt.volume_path(case, "clicks")
        return self._read(name, ..., array=self._open(name), what=f" (case {case!r})")

    def check_cases(self, cases: list[str]) -> None:
        """Read the given cases' native volumes and compare them with the hash recorded at
        conversion; raises :class:`StoreError` naming the first bad case (KeyError: unknown case).

        For callers about to rely on whole volumes (the trainer, on its validation cases, before
        the first step): a damaged volume then stops the run at once, not at the first validation.
        """
        self._known(list(cases))
        for case in cases:
            image, label = self._volume_arrays(case)
            if content_sha256(image, label) != self.meta.cases[case].sha256:
                raise StoreError(f"{self.path}: volumes/{case}: content differs from the hash recorded at "
                                 f"conversion; the store is damaged, re-run `pscv prepare`")

    def verify_report(self) -> dict[str, list[str]]:
        """Everything ``--verify`` checks: every file against its recorded size and SHA-256, and
        every case's decoded volumes against their content hash. Returns {case or array: problems},
        empty when the store is intact."""
        problems = verify_files(self.meta, self._fs, self._root)
        for case in self.cases:
            try:
                self.check_cases([case])
            except StoreError as exc:
                problems.setdefault(case, []).append(str(exc).split(": ", 1)[-1])
        return {k: problems[k] for k in sorted(problems)}

    def verify(self) -> list[str]:
        """The names (case ids, array paths) that fail :meth:`verify_report`; empty when intact."""
        return failed_names(self.verify_report())

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
            "annotations": fp.get("annotations"),
            "annotation_sources": sorted(collections.Counter(
                m.annotation.get("format") for m in self.meta.cases.values()
                if m.annotation.get("kind") == "imported").items()),
            "sha256": fp.get("sha256"),
        }


def failed_names(report: dict[str, list[str]]) -> list[str]:
    """The case ids (for anything under ``volumes/<case>``) and array paths of a verify report."""
    names = set()
    for name in report:
        parts = name.split("/")
        names.add(parts[1] if len(parts) >= 2 and parts[0] == "volumes" else name)
    return sorted(names)
