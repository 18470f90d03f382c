"""The pscv store format, version 3: the ONE place that says what a store holds, where, and how.

Every writer (:mod:`.prepare`) and reader (:mod:`.store`) goes through the names, the array table
(:class:`ArraySpec`) and the metadata classes here; ``docs/STORE.md`` describes the same format in
prose. A store is a Zarr v3 group::

    <store>/zarr.json               root attributes: {"pscv_store": StoreMeta}  (written LAST: the
                                    store exists only once it is complete)
    <store>/slices/image            (N, S, S) float32  training slices, bilinear-resized to S x S
    <store>/slices/label            (N, S, S) uint8    dense labels, nearest-resized
    <store>/slices/clicks           (P, 4) int32       every annotated training pixel as
                                                       (slice, class, y, x), sorted by slice: any
                                                       number per slice (clicks or scribbles); the
                                                       point-label maps come from :func:`points_maps`
    <store>/slices/case_index       (N,) int32         index into StoreMeta.cases
    <store>/slices/z                (N,) int32         slice position in its native volume
    <store>/slices/present          (N, K) bool        classes annotated in the slice
    <store>/volumes/<case>/image    (Z, H, W) float32  native-resolution, normalised image
    <store>/volumes/<case>/label    (Z, H, W) uint8    native-resolution dense label (all K when the
                                                       case has none: ``CaseMeta.labelled``)
    <store>/volumes/<case>/clicks   (n, 4) int32       imported annotations, native voxels (class, z,
                                                       y, x): the annotation of record (imported only)

Why this layout: training reads slices in whole shards (:mod:`.cache`), evaluation reads whole
volumes. Slice arrays have one slice per chunk and ``SHARD_SLICES`` slices per shard file; a volume
is one shard of one-slice chunks (two files per case). Training images are stored uncompressed
(normalised floats barely compress, and decoding them dominated the read); every other chunk is
blosc-zstd compressed. Every chunk carries a CRC-32C (Zarr's ``crc32c`` codec), so a garbled chunk
fails when decoded instead of reading as other numbers; every file of the store is also listed with
its size and SHA-256 in the root metadata (``checksums``), so a missing file is found by a listing
when the store is opened and a changed one by ``pscv inspect --verify``. Chunks equal to the fill
value are written too (``write_empty_chunks``): the set of files is then a function of the shapes
alone.

Older stores (version 1: no CRC; version 2: a fixed number of click rows per slice, compressed
training images) are refused with the `pscv prepare` command that converts them again.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, StoreError

FORMAT_NAME = "pscv_store"
FORMAT_VERSION = 3
CLICK_CHUNK_ROWS = 1 << 20
SHARD_SLICES = 64
ROOT_METADATA = "zarr.json"

SLICE_IMAGE = "slices/image"
SLICE_LABEL = "slices/label"
SLICE_CLICKS = "slices/clicks"
SLICE_CASE = "slices/case_index"
SLICE_Z = "slices/z"
SLICE_PRESENT = "slices/present"
SLICE_ARRAYS = (SLICE_IMAGE, SLICE_LABEL, SLICE_CLICKS, SLICE_CASE, SLICE_Z, SLICE_PRESENT)
VOLUME_KINDS = ("image", "label", "clicks")

# Case ids become folder names: keep them to a safe alphabet so none can escape the store.
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def codecs(compress: bool = True) -> list:
    """The bytes-to-bytes codecs of a chunk: blosc zstd (byte-shuffled) when ``compress``, then a
    CRC-32C. Training images are stored uncompressed: normalised float images shrink by only ~28%
    under zstd, and decoding them tripled the cost of reading a shard (docs/STORE.md)."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return ([BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")] if compress else []) + [Crc32cCodec()]


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Layout of one array of the store: the writer creates it from this, the reader checks it."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None
    fill_value: int | float = 0
    compress: bool = True

    def create(self, group, data: np.ndarray | None = None):
        """Create the array in ``group`` (and write ``data`` when given)."""
        arr = group.create_array(self.path, shape=self.shape, dtype=self.dtype, chunks=self.chunks,
                                 shards=self.shards, compressors=codecs(self.compress), fill_value=self.fill_value,
                                 config={"write_empty_chunks": True})
        if data is not None:
            if data.shape != self.shape:
                raise StoreError(f"{self.path}: data shape {data.shape} does not match {self.shape}")
            arr[...] = data.astype(self.dtype, copy=False)
        return arr

    def file_keys(self) -> list[str]:
        """Store-relative paths of every chunk (or shard) file the array consists of."""
        grid = self.shards or self.chunks
        counts = [math.ceil(s / g) for s, g in zip(self.shape, grid)]
        return [f"{self.path}/c/" + "/".join(str(i) for i in idx) for idx in np.ndindex(*counts)]

    def check(self, array, where: str) -> None:
        """Raise :class:`StoreError` when an opened array does not have this layout."""
        found = {"dtype": str(array.dtype), "shape": tuple(array.shape), "chunks": tuple(array.chunks),
                 "shards": None if array.shards is None else tuple(array.shards)}
        expected = {"dtype": self.dtype, "shape": self.shape, "chunks": self.chunks, "shards": self.shards}
        for key, value in expected.items():
            if found[key] != value:
                raise StoreError(f"{where}: {self.path}: expected {key} {value}, found {found[key]}; "
                                 f"the array does not match the store metadata")
        names = [type(c).__name__ for c in getattr(array, "compressors", ())]
        if "Crc32cCodec" not in names:
            raise StoreError(f"{where}: {self.path}: chunks carry no crc32c checksum (codecs {names}); "
                             f"re-run `pscv prepare`")


def slice_specs(n: int, size: int, k: int, n_clicks: int) -> dict[str, ArraySpec]:
    """The six slice arrays of a store with ``n`` slices of ``size``², ``k`` classes and
    ``n_clicks`` annotated training pixels."""
    s, one = size, max(n, 1)
    return {spec.path: spec for spec in (
        ArraySpec(SLICE_IMAGE, "float32", (n, s, s), (1, s, s), (SHARD_SLICES, s, s), compress=False),
        ArraySpec(SLICE_LABEL, "uint8", (n, s, s), (1, s, s), (SHARD_SLICES, s, s)),
        ArraySpec(SLICE_CLICKS, "int32", (n_clicks, 4), (max(1, min(n_clicks, CLICK_CHUNK_ROWS)), 4)),
        ArraySpec(SLICE_CASE, "int32", (n,), (one,)),
        ArraySpec(SLICE_Z, "int32", (n,), (one,)),
        ArraySpec(SLICE_PRESENT, "bool", (n, k), (one, k), fill_value=False),
    )}


def volume_specs(case: str, shape, n_clicks: int | None = None) -> dict[str, ArraySpec]:
    """``{"image": spec, "label": spec}`` of one case of native shape (Z, H, W), and ``"clicks"``
    when the case has ``n_clicks`` imported annotated voxels."""
    z, h, w = (int(v) for v in shape)
    specs = {kind: ArraySpec(volume_path(case, kind), dtype, (z, h, w), (1, h, w), (z, h, w))
             for kind, dtype in (("image", "float32"), ("label", "uint8"))}
    if n_clicks is not None:
        specs["clicks"] = ArraySpec(volume_path(case, "clicks"), "int32", (n_clicks, 4), (max(1, n_clicks), 4))
    return specs


def volume_path(case: str, kind: str) -> str:
    """Path of a case's native ``image`` or ``label`` volume inside the store."""
    if kind not in VOLUME_KINDS:
        raise ConfigError(f"volume kind must be one of {VOLUME_KINDS}, got {kind!r}")
    check_case_id(case)
    return f"volumes/{case}/{kind}"


def array_of(key: str) -> str:
    """The array a store-relative file path belongs to (``slices/image/c/1/0/0`` -> ``slices/image``)."""
    if key == ROOT_METADATA or key.endswith("/" + ROOT_METADATA):
        return key[: -len(ROOT_METADATA)].rstrip("/") or "/"
    head, sep, _ = key.rpartition("/c/")
    return head if sep else key.rpartition("/")[0] or key


def check_case_id(case: str) -> str:
    """Refuse a case id that is not a plain name (``..``, ``/``, spaces, empty)."""
    if not isinstance(case, str) or not CASE_ID_PATTERN.match(case) or ".." in case:
        raise DataError(
            f"case id {case!r} is not a safe name: expected letters, digits, '_', '-', '.' "
            f"(no '..', no '/', at most 128 characters)"
        )
    return case


def clicks_table(points: np.ndarray, first_slice: int, ignore_index: int) -> np.ndarray:
    """(Z, S, S) point-label maps of consecutive slices -> (P, 4) int32 rows (slice, class, y, x),
    sorted by slice then pixel: the layout of ``slices/clicks``."""
    zs, ys, xs = np.nonzero(points != ignore_index)
    return np.stack([zs + first_slice, points[zs, ys, xs], ys, xs], axis=1).astype(np.int32).reshape(-1, 4)


def click_offsets(clicks: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) offsets: the rows of slice i are ``clicks[offsets[i]:offsets[i + 1]]``."""
    return np.searchsorted(clicks[:, 0], np.arange(n + 1), side="left")


def points_maps(clicks: np.ndarray, offsets: np.ndarray, indices, size: int, ignore_index: int,
                dtype=np.uint8) -> np.ndarray:
    """The (B, S, S) point-label maps of slices ``indices``: ``ignore_index`` except at their
    annotated pixels (METHOD.md: the pCE target). One vectorised gather for the whole batch."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.full((len(indices), size, size), ignore_index, dtype=dtype)
    starts, stops = offsets[indices], offsets[indices + 1]
    counts = stops - starts
    if counts.sum():
        rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        which = np.repeat(np.arange(len(indices)), counts)
        c = clicks[rows]
        out[which, c[:, 2], c[:, 3]] = c[:, 1]
    return out


@dataclasses.dataclass
class CaseMeta:
    """One case (a 3D volume) as the store records it."""

    patient: str
    shape: list[int]  # native (Z, H, W)
    spacing: list[float] | None  # (dz, dy, dx) in mm, None when the source has none
    affine: list[list[float]] | None  # 4x4 voxel->world of the source NIfTI (i, j, k order)
    first_slice: int  # index of its first training slice in slices/*
    n_slices: int
    sha256: str  # of the native image and label arrays (dtype, shape, bytes), for `verify`
    labelled: bool = True  # has a dense label (validation and evaluation need one)
    annotation: dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "simulated"})
    # {"kind": "simulated"} (clicks drawn from the dense label with StoreMeta.points), or
    # {"kind": "imported", "format", "file", "sha256", "points", "per_class", "duplicates", ...}

    @property
    def imported_clicks(self) -> int | None:
        """Number of imported native annotated voxels; None for simulated clicks."""
        return int(self.annotation["points"]) if self.annotation.get("kind") == "imported" else None


@dataclasses.dataclass
class StoreMeta:
    """The root attributes of a store (JSON-serialisable)."""

    classes: list[str]  # background first
    ignore_index: int  # = len(classes)
    size: int  # training slice side S
    layout: str
    source: str
    normalization: dict[str, Any]  # how native images were normalised (reused at prediction)
    points: dict[str, Any]  # {"seed", "per_class", "include_background"}: how clicks were simulated
    cases: dict[str, CaseMeta]
    splits: dict[str, list[str]]
    fingerprint: dict[str, Any]
    n_slices: int
    n_clicks: int  # rows of slices/clicks
    checksums: dict[str, list]  # every file but the root metadata: relative path -> [size, sha256]
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def array_specs(self) -> dict[str, ArraySpec]:
        """Every array the metadata implies: the slice arrays and both volumes of every case."""
        specs = slice_specs(self.n_slices, self.size, len(self.classes), self.n_clicks)
        for case, meta in self.cases.items():
            specs.update({s.path: s for s in volume_specs(case, meta.shape, meta.imported_clicks).values()})
        return specs

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any, where: str = "store") -> "StoreMeta":
        """Parse and check the root attributes; any inconsistency is a one-line :class:`StoreError`."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise StoreError(f"{where}: not a pscv store (root attribute format={found!r})")
        if raw.get("version") != FORMAT_VERSION:
            src, layout = raw.get("source"), raw.get("layout")
            size = f" --size {raw['size']}" if _is_int(raw.get("size")) else ""
            how = (f"`pscv prepare {src} {where} --layout {layout}{size} --overwrite`" if isinstance(src, str)
                   and isinstance(layout, str) else "`pscv prepare SRC OUT --overwrite` from its source")
            raise StoreError(
                f"{where}: store format version {raw.get('version')} is not supported "
                f"(this pscv-dist reads version {FORMAT_VERSION}); convert it again with {how}"
            )
        types = {"classes": list, "ignore_index": int, "size": int, "layout": str, "source": str,
                 "normalization": dict, "points": dict, "cases": dict, "splits": dict, "fingerprint": dict,
                 "n_slices": int, "n_clicks": int, "checksums": dict}
        for name, kind in types.items():
            _expect(raw, name, kind, where)
        if len(raw["classes"]) < 2 or not all(isinstance(c, str) for c in raw["classes"]):
            raise StoreError(f"{where}: metadata 'classes' must list at least 2 names, found {raw['classes']!r}")
        if raw["ignore_index"] != len(raw["classes"]):
            raise StoreError(f"{where}: metadata ignore_index {raw['ignore_index']} is not the number of "
                             f"classes {len(raw['classes'])}")
        for key, entry in raw["checksums"].items():
            if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0]) and isinstance(entry[1], str)):
                raise StoreError(f"{where}: {array_of(key)}: checksum of {key!r} must be [size, sha256], "
                                 f"found {entry!r:.60}")
        kwargs = {k: raw[k] for k in types}
        kwargs["cases"] = {case: _case_meta(case, value, where) for case, value in raw["cases"].items()}
        meta = cls(**kwargs)
        meta._check_consistency(where)
        return meta

    def _check_consistency(self, where: str) -> None:
        first = 0
        for case, m in self.cases.items():
            if m.first_slice != first:
                raise StoreError(f"{where}: case {case!r} first_slice {m.first_slice} does not follow the "
                                 f"previous cases (expected {first})")
            first += m.n_slices
        if first != self.n_slices:
            raise StoreError(f"{where}: metadata n_slices {self.n_slices} is not the sum of the cases' "
                             f"slices ({first})")
        for name, cases in self.splits.items():
            if not isinstance(cases, list):
                raise StoreError(f"{where}: split {name!r} must be a list of case ids, found {type(cases).__name__}")
            unknown = [c for c in cases if c not in self.cases]
            if unknown:
                raise StoreError(f"{where}: split {name!r} names case(s) {unknown[:5]} that are not in the store")


def _expect(raw: dict, name: str, kind: type, where: str) -> None:
    if name not in raw:
        raise StoreError(f"{where}: root metadata misses {name!r}; the store is damaged, re-run `pscv prepare`")
    value = raw[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StoreError(f"{where}: metadata {name!r} must be {kind.__name__}, found {value!r:.60}")


def _case_meta(case: str, value: Any, where: str) -> CaseMeta:
    try:
        check_case_id(case)
    except DataError as exc:
        raise StoreError(f"{where}: {exc}") from None
    at = f"{where}: case {case!r}"
    if not isinstance(value, dict):
        raise StoreError(f"{at}: metadata must be a mapping, found {type(value).__name__}")
    fields = [f.name for f in dataclasses.fields(CaseMeta)]
    missing = [f for f in fields if f not in value]
    if missing:
        raise StoreError(f"{at}: metadata misses field(s) {missing}")
    meta = CaseMeta(**{f: value[f] for f in fields})
    shape = meta.shape
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
        raise StoreError(f"{at}: shape must be 3 positive integers, found {shape!r}")
    for name in ("first_slice", "n_slices"):
        if not _is_int(getattr(meta, name)) or getattr(meta, name) < 0:
            raise StoreError(f"{at}: {name} must be a non-negative integer, found {getattr(meta, name)!r}")
    if meta.n_slices != shape[0]:
        raise StoreError(f"{at}: n_slices {meta.n_slices} does not match its {shape[0]} native slices")
    if not isinstance(meta.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", meta.sha256):
        raise StoreError(f"{at}: sha256 must be 64 hex digits, found {meta.sha256!r:.70}")
    if not isinstance(meta.patient, str):
        raise StoreError(f"{at}: patient must be a string, found {meta.patient!r}")
    if not isinstance(meta.labelled, bool):
        raise StoreError(f"{at}: labelled must be true or false, found {meta.labelled!r}")
    kind = meta.annotation.get("kind") if isinstance(meta.annotation, dict) else None
    if kind not in ("simulated", "imported") or (kind == "imported" and not (
            _is_int(meta.annotation.get("points")) and meta.annotation["points"] >= 0)):
        raise StoreError(f"{at}: annotation must be {{'kind': 'simulated'}} or an imported record with a "
                         f"point count, found {meta.annotation!r:.80}")
    return meta


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
