"""The pscv store format, version 1: the ONE place that says what a store holds and where.

Every writer (:mod:`pscv_dist.data.writer`) and reader (:mod:`pscv_dist.data.store`) goes through
the names and helpers here. A store is a Zarr v3 group::

    <store>/zarr.json               root attributes: {"pscv_store": StoreMeta}  (written LAST: the
                                    store exists only once it is complete)
    <store>/slices/image            (N, S, S) float32  training slices, bilinear-resized to S x S
    <store>/slices/label            (N, S, S) uint8    dense labels, nearest-resized
    <store>/slices/clicks           (N, M, 3) int16    the clicked pixels (class, y, x), M = K x
                                                       points-per-class, unused rows class = -1; the
                                                       point-label map (ignore_index except one seeded
                                                       pixel per present class, METHOD.md) is built
                                                       from them by :func:`points_map`
    <store>/slices/case_index       (N,) int32         index into StoreMeta.cases
    <store>/slices/z                (N,) int32         slice position in its native volume
    <store>/slices/present          (N, K) bool        classes present (= classes with a point)
    <store>/volumes/<case>/image    (Z, H, W) float32  native-resolution, normalised image
    <store>/volumes/<case>/label    (Z, H, W) uint8    native-resolution dense label

Slice arrays use one slice per chunk and ``SHARD_SLICES`` slices per shard (a random read decodes
one chunk; the file count stays small). Volumes use one slice per chunk, unsharded.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

FORMAT_NAME = "pscv_store"
FORMAT_VERSION = 1
SHARD_SLICES = 64

SLICE_IMAGE = "slices/image"
SLICE_LABEL = "slices/label"
SLICE_CLICKS = "slices/clicks"
SLICE_CASE = "slices/case_index"
SLICE_Z = "slices/z"
SLICE_PRESENT = "slices/present"

# Case ids become folder names: keep them to a safe alphabet so none can escape the store.
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def volume_path(case: str, kind: str) -> str:
    """Path of a case's native ``image`` or ``label`` volume inside the store."""
    if kind not in ("image", "label"):
        raise ValueError(f"volume kind must be 'image' or 'label', got {kind!r}")
    check_case_id(case)
    return f"volumes/{case}/{kind}"


def check_case_id(case: str) -> str:
    """Refuse a case id that is not a plain name (``..``, ``/``, spaces, empty)."""
    if not isinstance(case, str) or not CASE_ID_PATTERN.match(case) or ".." in case:
        raise ValueError(
            f"case id {case!r} is not a safe name: expected letters, digits, '_', '-', '.' "
            f"(no '..', no '/', at most 128 characters)"
        )
    return case


def clicks_from_map(points, ignore_index: int, rows: int):
    """(H, W) point-label map -> (rows, 3) int16 array of (class, y, x), padded with -1."""
    ys, xs = np.nonzero(points != ignore_index)
    if len(ys) > rows:
        raise ValueError(f"{len(ys)} clicks do not fit {rows} rows")
    out = np.full((rows, 3), -1, dtype=np.int16)
    out[: len(ys)] = np.stack([points[ys, xs], ys, xs], axis=1)
    return out


def points_map(clicks, shape: tuple[int, int], ignore_index: int):
    """(M, 3) clicks -> (H, W) int64 point-label map: ``ignore_index`` except at the clicks."""
    points = np.full(shape, ignore_index, dtype=np.int64)
    used = clicks[clicks[:, 0] >= 0]
    points[used[:, 1], used[:, 2]] = used[:, 0]
    return points


def blosc():
    """The compressor every array uses (zstd, byte-shuffled)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


@dataclasses.dataclass
class CaseMeta:
    """One case (a 3D volume) as the store records it."""

    patient: str
    shape: list[int]  # native (Z, H, W)
    spacing: list[float] | None  # (dz, dy, dx) in mm, None when the source has none
    affine: list[list[float]] | None  # 4x4 voxel->world of the source NIfTI (i, j, k order)
    first_slice: int  # index of its first training slice in slices/*
    n_slices: int
    sha256: str  # of the native image and label bytes, for `verify`


@dataclasses.dataclass
class StoreMeta:
    """The root attributes of a store (JSON-serialisable)."""

    classes: list[str]  # background first
    ignore_index: int  # = len(classes)
    size: int  # training slice side S
    layout: str
    source: str
    normalization: dict[str, Any]  # how native images were normalised (reused at prediction)
    points: dict[str, Any]  # {"seed", "per_class", "include_background"}
    cases: dict[str, CaseMeta]
    splits: dict[str, list[str]]
    fingerprint: dict[str, Any]
    n_slices: int
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "store") -> "StoreMeta":
        if raw.get("format") != FORMAT_NAME:
            raise ValueError(f"{where}: not a pscv store (root attribute format={raw.get('format')!r})")
        if raw.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{where}: store format version {raw.get('version')} is not supported "
                f"(this pscv-dist reads version {FORMAT_VERSION}); re-run `pscv prepare`"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields}
        kwargs["cases"] = {k: CaseMeta(**v) for k, v in raw["cases"].items()}
        return cls(**kwargs)
