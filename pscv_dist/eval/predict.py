"""``pscv predict``: NIfTI file(s) in, label NIfTI(s) out with the input's exact geometry.

Nothing is written until everything that can be checked has been (:func:`plan_predictions`, run
before the model is even loaded):

* outputs: none may be an input (the same file under another spelling, a symlink or a hard link;
  for a folder input, the output folder may not be the input folder), none may exist unless
  ``overwrite`` is given, and every output folder must exist or be creatable, and be writable;
* inputs: every input is read once and must be a 3D volume of real, finite numbers (no NaN / inf,
  no complex voxels). This reads each input twice in all (once here, once to predict) so that a bad
  file anywhere in a folder stops the run before the first output is written.

Each output is then written atomically (temporary file + rename).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data.volume_io import check_file, read_nifti, write_nifti_like
from ..data.volumes import normalize_intensity
from ..errors import DataError, OutputError
from ..progress import progress_bar
from .inference import predict_volume
from .paths import check_writable_dir, same_file

NII = re.compile(r"\.nii(\.gz)?$")


def _pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    if not src.exists():
        if src.is_symlink():
            check_file(src)  # names a symlink loop or a dangling link
        raise DataError(f"{src}: input not found")
    if src.is_file():
        if not NII.search(src.name):
            raise DataError(f"{src}: expected a .nii or .nii.gz file")
        out = dst / src.name if dst.is_dir() or not NII.search(dst.name) else dst
        return [(src, out)]
    files = sorted(p for p in src.iterdir() if NII.search(p.name))
    if not files:
        raise DataError(f"{src}: no .nii / .nii.gz files in this folder")
    if same_file(src, dst):
        raise OutputError(f"{dst}: is the input folder {src}; the label maps would replace its images "
                          f"(choose another output folder)")
    if dst.exists() and not dst.is_dir():
        raise OutputError(f"{dst}: the input is a folder, so the output must be a folder, found a file")
    return [(p, dst / p.name) for p in files]


def check_outputs(pairs: list[tuple[Path, Path]], overwrite: bool = False) -> None:
    """No output is an input, none exists (unless ``overwrite``), every output folder is writable."""
    inputs = [inp for inp, _ in pairs]
    for _, out in pairs:
        clash = next((inp for inp in inputs if same_file(inp, out)), None)
        if clash is not None:
            raise OutputError(f"{out}: is the input {clash}; the label map would replace the image "
                              f"(choose another output)")
        if out.is_dir():
            raise OutputError(f"{out}: is a folder, expected an output file path")
        if os.path.lexists(out) and not overwrite:
            raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
    for folder in dict.fromkeys(out.parent for _, out in pairs):
        check_writable_dir(folder, target=next(out for _, out in pairs if out.parent == folder))


def check_image(path: Path, image: np.ndarray) -> None:
    """A volume the model can be run on: real numbers, all finite."""
    if np.iscomplexobj(image):
        raise DataError(f"{path}: voxels are complex ({image.dtype}); expected real-valued intensities")
    if image.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a numeric image dtype, found {image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{path}: {bad} voxel(s) are NaN or inf; expected finite intensities")


def check_inputs(pairs: list[tuple[Path, Path]]) -> None:
    for inp, _ in pairs:
        image, _ = read_nifti(inp)  # 3D, non-empty, readable (DataError naming the file otherwise)
        check_image(inp, image)


def plan_predictions(src: str | Path, dst: str | Path, overwrite: bool = False) -> list[tuple[Path, Path]]:
    """The (input, output) pairs of ``pscv predict SRC DST``, every check passed; nothing written.

    Raises:
        DataError: a missing, unreadable, non-3D, complex or non-finite input (the file named).
        OutputError: an output that is an input, exists (without ``overwrite``) or cannot be written.
    """
    pairs = _pairs(Path(src), Path(dst))
    check_outputs(pairs, overwrite)
    check_inputs(pairs)
    return pairs


def segment(model: torch.nn.Module, meta: dict[str, Any], image: np.ndarray, device="cpu") -> np.ndarray:
    """THE prediction of one raw (Z, H, W) volume: the bundle's training normalisation, then
    slice-by-slice at the training size (:func:`predict_volume`); uint8 (Z, H, W) labels.
    ``pscv predict --checkpoint`` and the MLflow pyfunc model (so ``--model-uri`` and the scoring
    server) all call this."""
    image = normalize_intensity(image, meta["normalization"]["mode"])
    return predict_volume(model.to(device), image, meta["size"], device=device)


def write_predictions(segmenter: Callable[[np.ndarray], np.ndarray], pairs: list[tuple[Path, Path]],
                      progress: bool = True) -> list[Path]:
    """Run ``segmenter`` (raw float32 (Z, H, W) volume -> uint8 labels) on each planned pair (see
    :func:`plan_predictions`) and write each output with its input's geometry; returns the outputs."""
    written = []
    for inp, out in progress_bar(iterable=pairs, desc="predict", unit="vol", disable=not progress):
        image, _ = read_nifti(inp)
        check_image(inp, image)  # again: the file may have changed since it was planned
        # float32 is what normalize_intensity computes in anyway, and what the pyfunc accepts
        pred = segmenter(np.ascontiguousarray(image, dtype=np.float32))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_nifti_like(pred, inp, out)
        written.append(out)
    return written


def predict_pairs(model: torch.nn.Module, meta: dict[str, Any], pairs: list[tuple[Path, Path]],
                  device="cpu", progress: bool = True) -> list[Path]:
    """Predict each planned pair (see :func:`plan_predictions`) with a bundle's model; returns the
    outputs written."""
    return write_predictions(lambda image: segment(model, meta, image, device=device), pairs, progress)

