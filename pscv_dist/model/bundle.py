"""The portable model bundle: one ``model.pt`` that rebuilds the network and says how to feed it.

``model.pt`` = ``{"meta": {...}, "model_state": state_dict}``, loadable with
``torch.load(weights_only=True)``. ``meta`` holds the architecture (``meta["model"]``: the UNet's
constructor arguments), the class names, the training slice size, the intensity normalisation,
the ignore index and the training config. Checkpoints, the best model, the MLflow artifact and
``pscv predict`` all read and write exactly this; nothing else builds one.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .unet import UNet

ARCH_KEYS = ("in_channels", "num_classes", "base_width", "depth", "dropout", "upsample")
META_KEYS = ("model", "classes", "size", "normalization", "ignore_index")


def model_meta(model: UNet, classes: list[str], size: int, normalization: dict, ignore_index: int,
               config: dict | None = None) -> dict[str, Any]:
    """What a model needs to be rebuilt and fed exactly as in training."""
    return {
        "model": {"in_channels": model.in_channels, "num_classes": model.num_classes,
                  "base_width": model.base_width, "depth": model.depth, "dropout": list(model.dropout),
                  "upsample": model.upsample},
        "classes": list(classes), "size": int(size), "normalization": dict(normalization),
        "ignore_index": int(ignore_index), "config": config or {},
    }


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a sibling ``.part`` file, then rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.part{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cpu_float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state on the CPU with floating tensors in float32 (a bf16-cast DeepSpeed module
    included), copied: the live training module is not touched."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in model.state_dict().items()}


def save_model(path: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write the bundle ``{"meta", "model_state"}`` that :func:`load_model` reads, atomically, in float32."""
    return save_atomic({"meta": meta, "model_state": cpu_float_state(model)}, path)


def _check_meta(meta: Any, file: Path) -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: not a pscv model bundle ('meta' is a {type(meta).__name__}, expected a mapping)")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{file}: not a pscv model bundle (meta lacks {missing}; expected {list(META_KEYS)})")
    arch = meta["model"]
    if not isinstance(arch, dict) or sorted(arch) != sorted(ARCH_KEYS):
        found = sorted(arch) if isinstance(arch, dict) else type(arch).__name__
        raise CheckpointError(f"{file}: meta['model'] must have the keys {sorted(ARCH_KEYS)}, found {found}")


def load_model(path: str | os.PathLike, map_location="cpu") -> tuple[UNet, dict[str, Any]]:
    """Rebuild the UNet of a checkpoint folder (or of its ``model.pt``) in eval mode.

    Raises:
        CheckpointError: missing file, unreadable or truncated file, not a pscv bundle, or weights
            that do not fit the architecture the bundle describes.
    """
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.exists():
        if file.is_symlink():
            try:
                os.stat(file)
            except OSError as exc:
                why = "symlink loop" if exc.errno == errno.ELOOP else f"dangling symlink to {os.readlink(file)!r}"
                raise CheckpointError(f"{file}: {why}; expected a checkpoint folder or its model.pt") from None
        raise CheckpointError(f"{file}: checkpoint not found (expected a checkpoint folder or its model.pt)")
    try:
        bundle = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file}: not a loadable checkpoint, truncated or corrupt "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not isinstance(bundle, dict) or "meta" not in bundle or "model_state" not in bundle:
        found = sorted(bundle) if isinstance(bundle, dict) else type(bundle).__name__
        raise CheckpointError(f"{file}: not a pscv model bundle (expected keys ['meta', 'model_state'], found {found})")
    meta = bundle["meta"]
    _check_meta(meta, file)
    arch = dict(meta["model"])
    arch["dropout"] = tuple(arch["dropout"])
    try:
        model = UNet(**arch)
        model.load_state_dict(bundle["model_state"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{file}: the weights do not fit the architecture it describes {arch} ({first})") from None
    return model.eval(), meta
