"""Dataset layouts: how each on-disk convention is discovered, paired and loaded.

A layout turns a source folder into :class:`CaseSource` objects (picklable, loaded one at a time by
a worker). Supported: ``nifti`` (Decathlon / nnU-Net), ``acdc`` (raw challenge), ``wsl4mis-h5``
(preprocessed ACDC), ``btcv`` (raw Synapse CT) and ``transunet`` (preprocessed Synapse).
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .volume_io import DataError, Geometry, nifti_geometry, read_h5, read_nifti, read_npz

log = logging.getLogger(__name__)

ACDC_CLASSES = ["background", "RV", "Myo", "LV"]
SYNAPSE_CLASSES = ["background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver",
                   "pancreas", "spleen", "stomach"]
# Raw BTCV label -> the 8 organs of the literature (TransUNet); everything else -> background.
BTCV_REMAP = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
BTCV_RAW_CLASSES = 14  # 0 + 13 organs
# The Synapse 18/12 split of TransUNet (lists/lists_Synapse), used by every paper since.
SYNAPSE_TEST = ["case0001", "case0002", "case0003", "case0004", "case0008", "case0022", "case0025",
                "case0029", "case0032", "case0035", "case0036", "case0038"]
SYNAPSE_TRAIN = ["case0005", "case0006", "case0007", "case0009", "case0010", "case0021", "case0023",
                 "case0024", "case0026", "case0027", "case0028", "case0030", "case0031", "case0033",
                 "case0034", "case0037", "case0039", "case0040"]


@dataclasses.dataclass
class CaseVolume:
    """One loaded case: raw image and label as (Z, H, W), with their geometries."""

    image: np.ndarray
    label: np.ndarray | None  # None: the case has no dense label (nifti layout with --clicks)
    image_geometry: Geometry
    label_geometry: Geometry


@dataclasses.dataclass
class CaseSource:
    """A case that can be loaded: ``loader()`` returns a :class:`CaseVolume`."""

    case: str
    patient: str
    files: tuple[str, ...]  # for error messages
    loader: Callable[[], CaseVolume]
    header: Callable[[], None] | None = None  # cheap pre-check (reads headers only)
    label_values: int | None = None  # raw label classes expected before any remap

    def load(self) -> CaseVolume:
        return self.loader()


@dataclasses.dataclass
class Layout:
    name: str
    classes: list[str]
    normalization: str
    cases: list[CaseSource]
    splits: dict[str, list[str]]
    remap: dict[int, int] | None = None


def _strip_nii(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name)


def _nii_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.nii*") if re.search(r"\.nii(\.gz)?$", p.name) and not p.name.startswith("."))


def _load_nifti_pair(image: str, label: str | None) -> CaseVolume:
    img, ig = read_nifti(image)
    if label is None:
        return CaseVolume(img, None, ig, ig)
    lab, lg = read_nifti(label)
    return CaseVolume(img, lab, ig, lg)


def _check_nifti_headers(image: str, label: str | None) -> None:
    nifti_geometry(image), label is None or nifti_geometry(label)


def _nifti_source(case: str, patient: str, image: Path, label: Path | None) -> CaseSource:
    return CaseSource(case, patient, (str(image),) if label is None else (str(image), str(label)),
                      functools.partial(_load_nifti_pair, str(image), None if label is None else str(label)),
                      functools.partial(_check_nifti_headers, str(image), None if label is None else str(label)))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: expected the {what} folder, found nothing there")
    return path


def _decathlon_classes(src: Path) -> tuple[list[str] | None, str | None]:
    meta = src / "dataset.json"
    if not meta.exists():
        return None, None
    try:
        raw = json.loads(meta.read_text())
        labels = raw["labels"]
    except Exception as exc:
        raise DataError(f"{meta}: expected JSON with a 'labels' mapping ({type(exc).__name__}: {exc})") from None
    if all(str(k).isdigit() for k in labels):  # MSD: {"0": "background", ...}
        pairs = sorted((int(k), v) for k, v in labels.items())
    else:  # nnU-Net v2: {"background": 0, ...}
        pairs = sorted((int(v), k) for k, v in labels.items())
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise DataError(f"{meta}: label values must be 0..K-1, found {[i for i, _ in pairs]}")
    modality = json.dumps(raw.get("modality", raw.get("channel_names", {})))
    return [str(n) for _, n in pairs], ("ct" if "CT" in modality else "mr")


def nifti_layout(src: Path, labels_optional: bool = False) -> Layout:
    """``imagesTr/*.nii[.gz]`` + ``labelsTr/*.nii[.gz]`` paired by name (``_0000`` suffix allowed).
    With ``labels_optional`` (``prepare --clicks``) an image may come without a label (and
    ``labelsTr`` may be absent): such a case trains from its imported annotations alone."""
    images = _nii_files(_require_dir(src / "imagesTr", "imagesTr"))
    labels = ({} if labels_optional and not (src / "labelsTr").is_dir() else
              {_strip_nii(p.name): p for p in _nii_files(_require_dir(src / "labelsTr", "labelsTr"))})
    classes, norm = _decathlon_classes(src)
    cases, seen = [], set()
    for image in images:
        case = re.sub(r"_0000$", "", _strip_nii(image.name))
        if case not in labels:
            if labels_optional:
                cases.append(_nifti_source(case, case, image, None))
                continue
            raise DataError(f"{image}: no label found; expected {src / 'labelsTr' / (case + '.nii.gz')}")
        seen.add(case)
        cases.append(_nifti_source(case, case, image, labels[case]))
    orphans = sorted(set(labels) - seen)
    if orphans:
        raise DataError(f"{labels[orphans[0]]}: label without an image in {src / 'imagesTr'} ({len(orphans)} such)")
    return Layout("nifti", classes or [], norm or "mr", cases, {})


def acdc_layout(src: Path) -> Layout:
    """Raw ACDC: ``patientNNN/patientNNN_frameFF.nii.gz`` + ``patientNNN_frameFF_gt.nii.gz``."""
    cases = []
    for image in sorted(src.rglob("patient*_frame[0-9][0-9].nii*")):
        case = _strip_nii(image.name)
        label = image.with_name(image.name.replace(case, case + "_gt"))
        if not label.exists():
            raise DataError(f"{image}: no ground truth; expected {label}")
        cases.append(_nifti_source(case, case.split("_frame")[0], image, label))
    if not cases:
        raise DataError(f"{src}: no ACDC frames found (expected patientNNN/patientNNN_frameFF.nii.gz)")
    return Layout("acdc", ACDC_CLASSES, "mr", cases, {})


def _load_h5_volume(path: str) -> CaseVolume:
    d = read_h5(path)
    geom = Geometry(tuple(d["image"].shape), None, None)
    return CaseVolume(d["image"], d["label"], geom, Geometry(tuple(d["label"].shape), None, None))


def wsl4mis_layout(src: Path) -> Layout:
    """Preprocessed ACDC (WSL4MIS): ``patientNNN_frameFF.h5`` with ``image`` and ``label``."""
    files = sorted(src.glob("*.h5")) or sorted(src.glob("*/*.h5"))
    if not files:
        raise DataError(f"{src}: no .h5 volumes found (expected patientNNN_frameFF.h5)")
    cases = [CaseSource(p.stem, p.stem.split("_frame")[0], (str(p),),
                        functools.partial(_load_h5_volume, str(p))) for p in files]
    return Layout("wsl4mis-h5", ACDC_CLASSES, "none", cases, {})


def _synapse_splits(case_ids: list[str]) -> dict[str, list[str]]:
    have = set(case_ids)
    return {"train": [c for c in SYNAPSE_TRAIN if c in have], "test": [c for c in SYNAPSE_TEST if c in have]}


def btcv_layout(src: Path) -> Layout:
    """Raw Synapse / BTCV CT: ``img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz``; labels remapped."""
    labels = _require_dir(src / "label", "label")
    by_name = {_strip_nii(p.name): p for p in _nii_files(labels)}
    cases = []
    for image in _nii_files(_require_dir(src / "img", "img")):
        num = _strip_nii(image.name)[3:]
        if f"label{num}" not in by_name:
            raise DataError(f"{image}: no label found; expected {labels / f'label{num}.nii.gz'}")
        source = _nifti_source(f"case{num}", f"case{num}", image, by_name[f"label{num}"])
        source.label_values = BTCV_RAW_CLASSES
        cases.append(source)
    if not cases:
        raise DataError(f"{src / 'img'}: no imgNNNN.nii.gz volumes found")
    return Layout("btcv", SYNAPSE_CLASSES, "ct", cases, _synapse_splits([c.case for c in cases]), BTCV_REMAP)


def _load_npz_slices(paths: tuple[str, ...]) -> CaseVolume:
    slices = [read_npz(p) for p in paths]
    for p, s in zip(paths, slices):
        if s["image"].ndim != 2 or s["image"].shape != s["label"].shape:
            raise DataError(f"{p}: expected 2D image and label of equal shape, found "
                            f"{s['image'].shape} and {s['label'].shape}")
    shapes = {s["image"].shape for s in slices}
    if len(shapes) > 1:
        raise DataError(f"{paths[0]}: slices of one case must share a shape, found {sorted(shapes)}")
    image = np.stack([s["image"] for s in slices])
    label = np.stack([s["label"] for s in slices])
    return CaseVolume(image, label, Geometry(image.shape, None, None), Geometry(label.shape, None, None))


def transunet_layout(src: Path) -> Layout:
    """Preprocessed Synapse (TransUNet): ``train_npz/caseNNNN_sliceNNN.npz`` (2D slices, stacked
    back into volumes) and ``test_vol_h5/caseNNNN.npy.h5`` (3D)."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    train_dir, test_dir = src / "train_npz", src / "test_vol_h5"
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise DataError(f"{src}: expected train_npz/ and/or test_vol_h5/, found neither")
    for p in sorted(train_dir.glob("*.npz")) if train_dir.is_dir() else []:
        m = re.fullmatch(r"(case\d+)_slice(\d+)\.npz", p.name)
        if not m:
            raise DataError(f"{p}: expected a name like case0005_slice000.npz")
        groups.setdefault(m.group(1), []).append((int(m.group(2)), p))
    cases = []
    for case, items in sorted(groups.items()):
        items.sort()
        numbers = [n for n, _ in items]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            log.warning("%s: slice numbers are not contiguous (%s..%s, %d files)", case, numbers[0], numbers[-1], len(numbers))
        paths = tuple(str(p) for _, p in items)
        cases.append(CaseSource(case, case, paths, functools.partial(_load_npz_slices, paths)))
    for p in sorted(test_dir.glob("*.npy.h5")) if test_dir.is_dir() else []:
        case = p.name[: -len(".npy.h5")]
        if case in groups:
            raise DataError(f"{p}: case {case} is both in train_npz and test_vol_h5")
        cases.append(CaseSource(case, case, (str(p),), functools.partial(_load_h5_volume, str(p))))
    ids = [c.case for c in cases]
    splits = {"train": sorted(groups), "test": [c for c in ids if c not in groups]}
    return Layout("transunet", SYNAPSE_CLASSES, "none", cases, splits)


LAYOUTS: dict[str, Callable[[Path], Layout]] = {
    "nifti": nifti_layout,
    "acdc": acdc_layout,
    "wsl4mis-h5": wsl4mis_layout,
    "btcv": btcv_layout,
    "transunet": transunet_layout,
}


def discover(src: str | Path, layout: str, labels_optional: bool = False) -> Layout:
    """The cases of ``src`` in ``layout``. ``labels_optional``: the ``nifti`` layout accepts images
    without a label (clicks-only cases); the other layouts always pair an image with its label."""
    if layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r} is not known; expected one of {sorted(LAYOUTS)}")
    src = Path(src)
    try:
        os.stat(src)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{src}: symlink loop (the source folder link points back to itself)") from None
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found")
    return LAYOUTS[layout](src, labels_optional=True) if labels_optional and layout == "nifti" else LAYOUTS[layout](src)
