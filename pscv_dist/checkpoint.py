"""Training checkpoints: atomic, complete-or-absent, verified on load, one manager for all of it.

A checkpoint is a folder ``<dir>/step_NNNNNNNN`` holding:

- ``model.pt``        the portable model bundle (:mod:`pscv_dist.model.bundle`): what evaluation,
                      prediction and the registry need;
- ``train_state.pt``  step, config, world size, best score, validation count, MLflow run id
                      (rank 0 writes it);
- ``rng_rank{r}.pt``  each rank's Python / NumPy / torch RNG states;
- the engine's own files (``optim.pt`` for DDP, ``engine/`` for DeepSpeed's sharded state);
- ``COMMIT``          written last: ``{"step", "files": {relative path: sha256}}``.

Every rank writes its files into ``step_NNNNNNNN.tmp``; after a barrier rank 0 hashes them into
``COMMIT`` and renames the folder, so a crash leaves either a whole checkpoint or a ``.tmp`` folder
that is ignored and removed later. On resume every file is checked against ``COMMIT`` before
anything is loaded: a truncated or edited file is reported by name instead of being unpickled.
Checkpoints assume a file system every rank sees (a shared volume on multi-node runs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distributed import DistState, barrier
from .errors import CheckpointError
from .model.bundle import save_atomic, save_model

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{8})$")
COMMIT = "COMMIT"
TRAIN_STATE = "train_state.pt"
MODEL = "model.pt"
# The architecture keys of the config a checkpoint must share with the run that resumes it.
ARCH_CONFIG_KEYS = ("base_width", "depth", "upsample", "dropout")


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def complete_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (renamed, with COMMIT), oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if STEP_DIR.match(p.name) and (p / COMMIT).exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = complete_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def staging_dir(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.tmp"


def commit(directory: str | Path, step: int, keep: int) -> Path:
    """Rank 0, after every rank wrote its files into the staging folder: hash them into COMMIT,
    rename the folder, prune all but the newest ``keep``, remove stale staging folders."""
    tmp, final = staging_dir(directory, step), Path(directory) / f"step_{step:08d}"
    files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / COMMIT).write_text(json.dumps({"step": step, "files": files}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in Path(directory).glob("step_*.tmp"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def verify(ckpt: Path) -> None:
    """Check every file of a checkpoint against its COMMIT manifest.

    Raises:
        CheckpointError: COMMIT unreadable, a file missing, or a file whose bytes changed.
    """
    try:
        manifest = json.loads((ckpt / COMMIT).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt / COMMIT}: unreadable checkpoint manifest ({type(exc).__name__}: {exc}); "
                              f"remove {ckpt} to resume from the previous checkpoint") from None
    for rel, digest in files.items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint (listed in COMMIT); remove {ckpt} "
                                  f"to resume from the previous checkpoint")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path}: truncated or modified since it was saved (sha256 differs from COMMIT); "
                                  f"remove {ckpt} to resume from the previous checkpoint")


def read(path: Path, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)`` with a one-line error naming the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a loadable checkpoint file, truncated or corrupt "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None


class CheckpointManager:
    """Save and resume the training state of every rank; all methods are collective (every rank
    calls them in the same order).

    Args:
        directory: the checkpoint folder (``<out_dir>/checkpoints``), on a file system all ranks see.
        state: this process's distributed state.
        keep_last: how many complete checkpoints to keep.
    """

    def __init__(self, directory: str | Path, state: DistState, keep_last: int):
        self.directory, self.state, self.keep_last = Path(directory), state, keep_last

    def latest(self) -> Path | None:
        return latest_checkpoint(self.directory)

    def save(self, step: int, engine, model_meta: dict[str, Any], train_state: dict[str, Any]) -> Path:
        """Write the checkpoint of ``step``: rank files, the engine's files, model bundle, train state."""
        tmp = staging_dir(self.directory, step)
        if self.state.is_main and tmp.exists():
            shutil.rmtree(tmp)
        barrier(self.state)
        tmp.mkdir(parents=True, exist_ok=True)
        save_atomic({"step": step, **rng_state()}, tmp / f"rng_rank{self.state.rank}.pt")
        engine.save(tmp)  # collective for DeepSpeed
        if self.state.is_main:
            save_model(tmp / MODEL, engine.module, model_meta)
            save_atomic({"step": step, "world_size": self.state.world_size, **train_state}, tmp / TRAIN_STATE)
        barrier(self.state)
        final = self.directory / f"step_{step:08d}"
        if self.state.is_main:
            commit(self.directory, step, self.keep_last)
        barrier(self.state)
        return final

    def load(self, engine, config: dict[str, Any]) -> dict[str, Any] | None:
        """Resume from the latest complete checkpoint, if any: checks the files and the architecture,
        loads weights, engine state and (at the same world size) this rank's RNG streams.

        Returns:
            the saved train state (``step``, ``best``, ``n_val``, ``mlflow_run_id``, ...) or None.

        Raises:
            CheckpointError: a damaged file, or a checkpoint of another architecture than ``config``.
        """
        latest = self.latest()
        if latest is None:
            return None
        verify(latest)
        ts = read(latest / TRAIN_STATE)
        if not isinstance(ts, dict) or "step" not in ts or "config" not in ts:
            raise CheckpointError(f"{latest / TRAIN_STATE}: not a pscv train state (expected keys 'step', 'config')")
        saved, now = ts["config"].get("model", {}), config["model"]
        for key in ARCH_CONFIG_KEYS:
            if saved.get(key) != now[key]:
                raise CheckpointError(f"{latest}: checkpoint has model.{key}={saved.get(key)!r}, config has "
                                      f"{now[key]!r}; use another train.out_dir or the checkpoint's model settings")
        bundle = read(latest / MODEL, map_location=self.state.device)
        try:
            engine.module.load_state_dict(bundle["model_state"])
        except (KeyError, TypeError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{latest / MODEL}: weights do not fit the configured model ({first})") from None
        engine.load(latest)
        rng = latest / f"rng_rank{self.state.rank}.pt"
        if ts.get("world_size") != self.state.world_size or not rng.exists():
            log.warning("%s: saved with world size %s, resuming with %s: RNG streams are reseeded, the run "
                        "continues but is not bit-identical", latest, ts.get("world_size"), self.state.world_size)
        else:
            state = read(rng)
            try:
                set_rng_state(state)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise CheckpointError(f"{rng}: not a pscv RNG state ({type(exc).__name__}: {exc})") from None
        if self.state.is_main:
            log.info("resumed from %s at step %d", latest, ts["step"])
        return ts
