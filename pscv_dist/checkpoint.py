"""Checkpoints: atomic, complete-or-absent, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a folder ``<dir>/step_NNNNNNNN`` holding:

- ``model.pt``        {"meta": model + data description, "model_state": state_dict}: everything
                      evaluation and prediction need (``load_model``);
- ``train_state.pt``  optimizer, scheduler, step, config, world size (rank 0 writes it);
- ``rng_rank{r}.pt``  each rank's Python / NumPy / torch RNG states;
- ``engine/``         DeepSpeed's own sharded state, when that engine is used;
- ``COMMIT``          written last, inside the temporary folder, before the rename.

The folder is assembled as ``step_NNNNNNNN.tmp`` and renamed once complete, so a crash leaves
either a whole checkpoint or a ``.tmp`` that is ignored and cleaned up.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import UNet

STEP_DIR = re.compile(r"^step_(\d{8})$")
COMMIT = "COMMIT"


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


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(path: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write the model bundle ``{"meta", "model_state"}`` that :func:`load_model` reads, atomically."""
    path = Path(path)
    save_atomic({"meta": meta, "model_state": model.state_dict()}, path)
    return path


def load_model(path: str | os.PathLike, map_location="cpu") -> tuple[UNet, dict[str, Any]]:
    """Rebuild the UNet of a checkpoint folder (or of its ``model.pt``) in eval mode.

    Raises:
        FileNotFoundError / ValueError: missing file or not a pscv model bundle.
    """
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: checkpoint not found")
    try:
        bundle = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{file}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(bundle, dict) or "meta" not in bundle or "model_state" not in bundle:
        raise ValueError(f"{file}: not a pscv model bundle (expected keys 'meta' and 'model_state')")
    meta = bundle["meta"]
    cfg = dict(meta["model"])
    cfg["dropout"] = tuple(cfg["dropout"])
    model = UNet(**cfg)
    model.load_state_dict(bundle["model_state"])
    return model.eval(), meta


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (renamed, with COMMIT), oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if STEP_DIR.match(p.name) and (p / COMMIT).exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    ckpts = complete_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def staging_dir(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.tmp"


def commit(directory: str | os.PathLike, step: int, keep: int) -> Path:
    """Rank 0, after every rank wrote its files into the staging folder: COMMIT, rename, prune."""
    tmp, final = staging_dir(directory, step), Path(directory) / f"step_{step:08d}"
    (tmp / COMMIT).write_text(json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in Path(directory).glob("step_*.tmp"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final
