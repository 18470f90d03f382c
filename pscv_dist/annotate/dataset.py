"""The cases ``pscv annotate`` shows: a dataset folder in any supported layout, or a pscv store.

Each case has a :class:`~pscv_dist.data.annotations.CaseGrid` (its shape and the affine the
markups are written through) known from the start, and a volume loaded on first use (a few are
kept, least recently used first out). What the page displays:

* a dataset folder: the raw image as the layout loads it (MR signal, CT Hounsfield units), and the
  dense label remapped as ``pscv prepare`` remaps it (BTCV); a ``nifti`` case without a label file
  is shown without a label overlay (``discover(..., labels_optional=True)``);
* a store: the native volumes it keeps (``SliceStore.volume``), normalised as training saw them;
  an unlabelled case (``labelled: false``) has no label overlay.

``presence(case)`` is the (Z, K) table of the classes each slice's dense label holds (None for a
case without one); progress counts a slice done when every class present there has a click.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np

from ..data.annotations import CaseGrid
from ..errors import DataError, StoreError

log = logging.getLogger(__name__)

VOLUME_CACHE = 4  # loaded volumes kept in memory
AUTO_WINDOW = (0.5, 99.5)  # percentiles of the volume that the initial window spans


@dataclasses.dataclass
class Volume:
    """One loaded case as the page shows it."""

    image: np.ndarray  # float32 (Z, H, W): raw intensities (folders) or the store's normalised ones
    label: np.ndarray | None  # uint8 (Z, H, W) class indices, None without a dense label
    level: float  # the initial window: centre ...
    width: float  # ... and width, from the AUTO_WINDOW percentiles
    lo: float  # intensity range
    hi: float


def auto_window(image: np.ndarray) -> tuple[float, float, float, float]:
    """(level, width, min, max): a window over the AUTO_WINDOW percentiles (sampled: 1M voxels at most)."""
    flat = image.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]
    lo, hi = (float(v) for v in np.percentile(sample, AUTO_WINDOW))
    vmin, vmax = float(flat.min()), float(flat.max())
    if hi <= lo:
        lo, hi = vmin, vmax if vmax > vmin else vmin + 1.0
    return (lo + hi) / 2, hi - lo, vmin, vmax


def _label_indices(label: np.ndarray | None, k: int, remap: dict[int, int] | None, shape, case: str):
    """Class indices (uint8) of a dense label, remapped; values outside 0..K-1 are shown as none (K)."""
    if label is None:
        return None
    if tuple(label.shape) != tuple(shape):
        log.warning("case %s: label shape %s differs from the image %s; no label overlay", case, label.shape, shape)
        return None
    label = np.asarray(label)
    if label.dtype.kind == "f":
        label = np.rint(label)
    label = label.astype(np.int64)
    if remap is not None:
        lut = np.zeros(max(int(label.max()) + 1, max(remap) + 1), dtype=np.int64)
        for raw, new in remap.items():
            lut[raw] = new
        label = lut[np.clip(label, 0, None)]
    out = np.where((label >= 0) & (label < k), label, k)
    return out.astype(np.uint8)


class Dataset:
    """Cases, classes, grids and (lazily) volumes of a source; thread-safe."""

    def __init__(self, name: str, kind: str, classes: list[str], grids: dict[str, CaseGrid],
                 labelled: dict[str, bool], loader, normalised: bool):
        self.name = name  # the source path, as given
        self.kind = kind  # "store" or the layout name
        self.classes = list(classes)
        self.grids = grids
        self.cases = list(grids)
        self.labelled = labelled
        self.normalised = normalised  # images are the store's normalised ones (prediction skips normalising)
        self.normalization: str | None = None  # a store's normalisation mode
        self._loader = loader  # case -> (image, label-or-None): raw arrays
        self._volumes: collections.OrderedDict[str, Volume] = collections.OrderedDict()
        self._presence: dict[str, np.ndarray | None] = {}
        self._lock = threading.Lock()
        self._case_locks = {case: threading.Lock() for case in self.cases}

    # --- volumes -----------------------------------------------------------------------------
    def _read(self, case: str) -> Volume:
        image, label = self._loader(case)
        image = np.ascontiguousarray(image, dtype=np.float32)
        grid = self.grids[case]
        if tuple(image.shape) != grid.shape:
            raise DataError(f"case {case}: the image has shape {image.shape}, its header said {grid.shape}")
        if not np.isfinite(image).all():
            image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
        label = label if self.labelled[case] else None
        level, width, lo, hi = auto_window(image)
        return Volume(image, label, level, width, lo, hi)

    def volume(self, case: str) -> Volume:
        """The case's volume, loaded once and kept while recently used."""
        with self._lock:
            if case in self._volumes:
                self._volumes.move_to_end(case)
                return self._volumes[case]
        with self._case_locks[case]:  # one load per case, other cases load in parallel
            with self._lock:
                if case in self._volumes:
                    return self._volumes[case]
            vol = self._read(case)
            present = None if case in self._presence else _presence_of(vol.label, len(self.classes))
            with self._lock:
                self._volumes[case] = vol
                self._presence.setdefault(case, present)
                while len(self._volumes) > VOLUME_CACHE:
                    self._volumes.popitem(last=False)
            return vol

    # --- which classes each slice holds --------------------------------------------------------
    def presence_known(self, case: str) -> bool:
        with self._lock:
            return case in self._presence or not self.labelled[case]

    def presence(self, case: str) -> np.ndarray | None:
        """(Z, K) bool: the classes each slice's dense label holds; None for a case without one."""
        if not self.labelled[case]:
            return None
        with self._lock:
            if case in self._presence:
                return self._presence[case]
            cached = self._volumes.get(case)
        if cached is None:  # read the label without keeping the volume (the background scan)
            with self._case_locks[case]:
                _, label = self._loader(case)
            present = _presence_of(label, len(self.classes))
        else:
            present = _presence_of(cached.label, len(self.classes))
        with self._lock:
            return self._presence.setdefault(case, present)


def _presence_of(label: np.ndarray | None, k: int) -> np.ndarray | None:
    if label is None:
        return None
    flat = label.reshape(label.shape[0], -1).astype(np.int64)
    present = np.zeros((label.shape[0], k), dtype=bool)
    for z in range(label.shape[0]):
        present[z] = np.bincount(flat[z], minlength=k + 1)[:k] > 0
    return present


# --- opening a source ---------------------------------------------------------------------------
def _labelled_source(layout: str, source) -> bool:
    return not (layout == "nifti" and len(source.files) == 1)


def open_layout(src: str, layout: str, classes: list[str] | None = None) -> Dataset:
    """A dataset folder in one of :data:`pscv_dist.data.sources.LAYOUTS`."""
    from ..data.clicks import case_grid
    from ..data.sources import discover

    found = discover(src, layout, labels_optional=True)
    names = list(classes) if classes else list(found.classes)
    if not names:
        raise DataError(f"{src}: the {layout} layout names no classes here (no dataset.json); pass --classes "
                        f"background,ORGAN1,ORGAN2,...")
    if found.classes and classes and len(classes) != len(found.classes):
        raise DataError(f"--classes: {len(classes)} names given, but {src} has {len(found.classes)} classes "
                        f"({', '.join(found.classes)})")
    if not found.cases:
        raise DataError(f"{src}: no cases found in the {layout} layout")
    sources = {s.case: s for s in found.cases}
    grids = {case: case_grid(s) for case, s in sources.items()}
    labelled = {case: _labelled_source(layout, s) for case, s in sources.items()}
    k = len(names)

    def load(case: str):
        vol = sources[case].load()
        label = _label_indices(vol.label, k, found.remap, vol.image.shape, case)
        return vol.image, label

    return Dataset(str(src), layout, names, grids, labelled, load, normalised=False)


def open_store(src: str) -> Dataset:
    """A pscv store: its native volumes (normalised), classes, geometry and labelled flags."""
    from ..data.clicks import stored_grid
    from ..data.store import SliceStore

    store = SliceStore(src)
    grids, labelled = {}, {}
    for case, meta in store.meta.cases.items():
        grids[case] = stored_grid(case, meta)
        labelled[case] = bool(meta.labelled)
    k = store.num_classes
    lock = threading.Lock()  # one zarr reader

    def load(case: str):
        with lock:
            vol = store.volume(case)
        label = vol["label"] if vol["labelled"] else None
        return vol["image"], _label_indices(label, k, None, vol["image"].shape, case)

    ds = Dataset(str(src), "store", store.classes, grids, labelled, load, normalised=True)
    ds.normalization = store.meta.normalization.get("mode")
    return ds


def open_dataset(src: str, layout: str | None, classes: list[str] | None = None) -> Dataset:
    """``layout`` None: ``src`` must be a pscv store."""
    if layout is not None:
        return open_layout(src, layout, classes)
    if classes:
        raise DataError("--classes: a store names its own classes; --classes is for a dataset folder (--layout)")
    from ..data.sources import LAYOUTS

    hint = f"for a dataset folder pass --layout ({', '.join(LAYOUTS)})"
    if not Path(src).is_dir():
        raise DataError(f"{src}: not found; expected a pscv store, or a dataset folder with --layout")
    if not (Path(src) / "zarr.json").is_file():
        raise DataError(f"{src}: not a pscv store (no zarr.json); {hint}")
    try:
        return open_store(src)
    except StoreError as exc:
        raise DataError(f"{exc}; {hint}") from None
