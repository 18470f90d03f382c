"""``pscv predict``: NIfTI file(s) in, label NIfTI(s) out with the input's exact geometry."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..data.volume_io import DataError, read_nifti, write_nifti_like
from ..data.volumes import normalize_intensity
from .inference import predict_volume
from ..progress import progress_bar

NII = re.compile(r"\.nii(\.gz)?$")


def _pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    if not src.exists():
        raise DataError(f"{src}: input not found")
    if src.is_file():
        if not NII.search(src.name):
            raise DataError(f"{src}: expected a .nii or .nii.gz file")
        out = dst / src.name if dst.is_dir() or not NII.search(dst.name) else dst
        return [(src, out)]
    files = sorted(p for p in src.iterdir() if NII.search(p.name))
    if not files:
        raise DataError(f"{src}: no .nii / .nii.gz files in this folder")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"{dst}: the input is a folder, so the output must be a folder")
    return [(p, dst / p.name) for p in files]


def predict_files(model: torch.nn.Module, meta: dict[str, Any], src: str | Path, dst: str | Path,
                  device="cpu", progress: bool = True) -> list[Path]:
    """Predict every input volume; each output is written atomically. Returns the outputs."""
    pairs = _pairs(Path(src), Path(dst))
    written = []
    for inp, out in progress_bar(iterable=pairs, desc="predict", unit="vol", disable=not progress):
        image, _ = read_nifti(inp)
        image = normalize_intensity(image, meta["normalization"]["mode"])
        pred = predict_volume(model.to(device), image, meta["size"], device=device)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_nifti_like(pred, inp, out)
        written.append(out)
    return written
