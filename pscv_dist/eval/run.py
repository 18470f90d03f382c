"""``pscv evaluate``: load a checkpoint, evaluate a split (distributed under torchrun), write
results.json (atomically, rank 0), print the table, draw the plots, log to an active MLflow run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

from ..model.bundle import load_model
from ..data import SliceStore
from ..distributed import DistState, init_distributed, shutdown
from ..errors import DataError, OutputError, describe
from .evaluate import case_widths, check_compatible, evaluate
from .metrics import check_edge_filter
from .paths import check_writable_dir, check_writable_file, same_file
from .report import box_plot, markdown_table, overlays
from ..files import write_json_atomic
from ..tracking import log_evaluation


def _inside(path: Path, folder: Path) -> bool:
    p, d = Path(os.path.realpath(path)), Path(os.path.realpath(folder))  # realpath: no error on a loop
    return p == d or d in p.parents


def check_outputs(out: str | None, plots: str | None, checkpoint: str, store_path: str) -> None:
    """``out`` (results.json) a writable file path that is not the checkpoint; ``plots`` a writable
    or creatable folder; neither inside a local store nor inside the checkpoint's folder (whose
    files — train state, RNG states, COMMIT — a resume verifies and would then refuse).

    Raises:
        OutputError: one line naming the path.
    """
    ckpt = Path(checkpoint)
    ckpt_file = ckpt / "model.pt" if ckpt.is_dir() else ckpt
    store_dir = Path(store_path) if "://" not in str(store_path) and Path(store_path).is_dir() else None
    # a checkpoint folder (also the one around a given model.pt when it is a training checkpoint)
    ckpt_dir = ckpt if ckpt.is_dir() else (ckpt.parent if (ckpt.parent / "COMMIT").exists() else None)
    if out and same_file(out, ckpt_file):
        raise OutputError(f"{out}: --out is the checkpoint {ckpt_file}; the results would replace it")
    for path, option in ((out, "--out"), (plots, "--plots")):
        if path and store_dir is not None and _inside(Path(path), store_dir):
            raise OutputError(f"{path}: {option} is inside the store {store_path}; write it elsewhere")
        if path and ckpt_dir is not None and _inside(Path(path), ckpt_dir):
            raise OutputError(f"{path}: {option} is inside the checkpoint folder {ckpt_dir}; write it elsewhere")
    if out:
        check_writable_file(out)
    if plots:
        check_writable_dir(plots)


def _agreed(check: Callable[[], None], state: DistState) -> None:
    """Run ``check`` on rank 0 (the only writer) and raise its error on every rank (rank 0 its own,
    the others an OutputError with its message), so that no rank waits in a collective for one that
    stopped."""
    error, message = None, None
    if state.is_main:
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks are told
            error, message = exc, describe(exc)
    if state.distributed:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if error is not None:
        raise error
    if message is not None:
        raise OutputError(message)


def run_evaluation(checkpoint: str, store_path: str, split: str, convention: str = "strict", edge_pixels: int = 0,
                   out: str | None = None, plots: str | None = None, progress: bool = True) -> dict[str, Any] | None:
    """Everything that can be refused is refused before the model is loaded: outputs that cannot be
    written (checked by rank 0, the writer, and agreed by every rank), an unknown split, an
    ``edge_pixels`` that is negative or covers a whole case width."""
    state = init_distributed()
    try:
        _agreed(lambda: check_outputs(out, plots, checkpoint, store_path), state)
        store = SliceStore(store_path)
        cases = store.split(split)
        unlabelled = [c for c in cases if not store.meta.cases[c].labelled]
        if unlabelled:
            raise DataError(f"{store_path}: split {split!r} holds {len(unlabelled)} case(s) without a dense label "
                            f"(e.g. {unlabelled[0]!r}), which cannot be scored; evaluate the 'labelled' split")
        check_edge_filter(edge_pixels, case_widths(store, cases))
        model, meta = load_model(checkpoint, map_location=state.device)
        model.to(state.device)
        check_compatible(meta, store, where=str(checkpoint))
        evaluation = evaluate(model, store, cases, meta["size"], convention, edge_pixels, state,
                              device=state.device, progress=progress, keep_predictions=plots is not None)
        if not state.is_main:
            return None
        results, preds = evaluation.results, evaluation.predictions
        results.update({"checkpoint": str(checkpoint), "split": split, "store": store_path})
        if plots:
            Path(plots).mkdir(parents=True, exist_ok=True)
            # rank 0 holds only its own predictions; overlay the best / worst among them
            results["plots"] = [str(box_plot(results, Path(plots) / "dsc_boxplot.png"))]
            results["plots"] += [str(p) for p in overlays(store, preds, results, plots)]
        if out:
            write_json_atomic(results, out)
        log_evaluation(results, results.get("plots", []))  # into the active MLflow run, if there is one
        print(markdown_table(results))
        return results
    finally:
        shutdown(state)

