"""The training loop: data stream -> augmentation -> engine -> objective, with validation,
atomic checkpoints and exact resume, the NaN guard, MLflow on rank 0 and a progress bar."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import CheckpointManager
from .config import Config
from .data import SliceStore
from .data.pipeline import InputPipeline
from .data.stream import local_batch_size
from .distributed import DistState, all_finite, all_reduce_mean
from .engine import build_engine
from .errors import ConfigError, NonFiniteLoss, PscvError, unwrap_worker_error
from .model.bundle import model_meta, save_model
from .eval.evaluate import Evaluation, evaluate
from .losses import build_objective
from .model import UNet
from .progress import progress_bar
from .files import write_atomic, write_json_atomic
from .tracking import Tracker
from .tracking.runs import evaluation_metrics

log = logging.getLogger(__name__)
SUMMARY = "summary.json"  # what a finished run reports (the demo, the study and Ray Tune read it)


def _check_output_dir(out: Path) -> None:
    """The run folder must be a folder we can write (checked before anything is created)."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"train.out_dir={out}: {probe} is a file, expected a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"train.out_dir={out}: {probe} is not writable")


def next_batch(it):
    """The next batch; a data error raised in a DataLoader worker arrives as its own one-line message."""
    try:
        return next(it)
    except PscvError as exc:
        raise unwrap_worker_error(exc) from None


def _truncate_log(path: Path, step: int) -> None:
    """On resume from ``step``: drop the records of steps after it (the work a killed run did after
    its last checkpoint is done again, and must not be logged twice). Atomic rewrite."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, AttributeError):  # a line cut by the kill
            continue
    write_atomic(path, "".join(line + "\n" for line in keep).encode())


def _check_labels(store: SliceStore, cfg: Config, val_cases: list[str]) -> None:
    """Cases trained from imported clicks alone have no dense label: never validate on them, and
    do not train a dense objective on them."""
    unlabelled = [c for c in store.cases if not store.meta.cases[c].labelled]
    if not unlabelled:
        return
    bad = [c for c in val_cases if c in set(unlabelled)]
    if bad:
        raise ConfigError(f"data.val_split={cfg.data.val_split!r} of {cfg.data.store} holds {len(bad)} case(s) without "
                          f"a dense label (e.g. {bad[0]!r}); validate on labelled cases (the fold*/val splits are)")
    train = set(store.split(cfg.data.train_split))
    if cfg.loss.name == "fullsup" and train & set(unlabelled):
        raise ConfigError(f"loss.name=fullsup needs dense labels, but data.train_split={cfg.data.train_split!r} holds "
                          f"{len(train & set(unlabelled))} case(s) without one; use the 'labelled' split")


class Trainer:
    """One training run: everything is checked before the run folder is created or a step is taken."""

    def __init__(self, cfg: Config, state: DistState,
                 on_validation: Callable[[int, dict[str, float], Path | None], None] | None = None):
        """``on_validation(step, metrics, checkpoint)``, if given, is called on EVERY rank after each
        validation (and after that step's checkpoint, when one is due), with the same values on all
        ranks: the known ``val_*`` metrics (``val_mean_dsc``, ``val_mean_hd95``, per class), the last
        logged training terms (``loss``, ``pce``, ``cv``, ...) and the newest complete checkpoint
        folder (None before the first). Ray Tune and Ray Train report from it (``pscv tune``)."""
        self.cfg, self.state, self.on_validation = cfg, state, on_validation
        self.last_terms: dict[str, float] = {}
        self._started, self._train_s_before = time.perf_counter(), 0.0  # see train_s
        if not cfg.data.store:
            raise ConfigError("data.store is not set: give the path of a store written by `pscv prepare`")
        self.store = SliceStore(cfg.data.store)
        self.local_batch = local_batch_size(cfg.data.batch_size, state.world_size)
        self.train_items = self.store.slice_indices(self.store.split(cfg.data.train_split))
        if cfg.data.batch_size > len(self.train_items):
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training split "
                              f"{cfg.data.train_split!r} of {cfg.data.store} ({len(self.train_items)} slices)")
        self.val_cases = self.store.split(cfg.data.val_split) if cfg.data.val_split else []
        _check_labels(self.store, cfg, self.val_cases)
        if self.store.size % 2 ** cfg.model.depth:
            raise ConfigError(f"model.depth={cfg.model.depth} needs slices divisible by {2 ** cfg.model.depth}; "
                              f"the store {cfg.data.store} has {self.store.size}x{self.store.size}")
        self.out = Path(cfg.train.out_dir)
        _check_output_dir(self.out)

        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        m = cfg.model
        self.model = UNet(1, self.store.num_classes, m.base_width, m.depth,
                          tuple(m.dropout) if m.dropout else None, m.upsample).to(state.device)
        if self.val_cases:  # a damaged validation volume fails now, not after hours of training
            self.store.check_cases(self.val_cases)
        if m.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.engine = build_engine(self.model, cfg, state, self.local_batch)
        # per-rank dropout streams, seeded after the engine (DeepSpeed's init draws random numbers)
        torch.manual_seed(cfg.train.seed * 1000 + state.rank)
        self.objective = build_objective(cfg.loss, self.store.num_classes, self.store.ignore_index,
                                         seed=cfg.train.seed, compile=cfg.model.compile)
        self.out.mkdir(parents=True, exist_ok=True)  # only now: a refused engine / objective leaves nothing
        self.step, self.n_val, self.best = 0, 0, {"dsc": None, "step": None}
        self.checkpoints = CheckpointManager(self.out / "checkpoints", state, cfg.train.keep_last)
        resumed = self.checkpoints.load(self.engine, cfg.to_dict())
        run_id = None
        if resumed is not None:
            self.step, self.best = int(resumed["step"]), resumed.get("best", self.best)
            self.n_val, run_id = int(resumed.get("n_val", 0)), resumed.get("mlflow_run_id")
            self._train_s_before = float(resumed.get("train_s", 0.0))
        self.tracker = Tracker(cfg.tracking, str(self.out), cfg.tracking.enabled and state.is_main,
                               cfg.flat(), resume_run_id=run_id)
        self.log_file = self.out / "train_log.jsonl"
        if resumed is not None and state.is_main:
            _truncate_log(self.log_file, self.step)

    @property
    def train_s(self) -> float:
        """Wall seconds this run has trained, set-up and validations included: this attempt's so far
        plus those of earlier attempts up to the checkpoint it resumed from (work lost after an
        attempt's last checkpoint is not counted; it is done again)."""
        return self._train_s_before + time.perf_counter() - self._started

    # --- checkpoints ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return model_meta(self.engine.module, self.store.classes, self.store.size,
                          self.store.meta.normalization, self.store.ignore_index, self.cfg.to_dict())

    def save(self) -> None:
        state = [t for t in self.engine.module.state_dict().values() if t.is_floating_point()]
        if not all_finite(torch.stack([t.detach().float().abs().max() for t in state]).max()):
            # finite losses can still overflow the weights or BN statistics: never save those
            raise NonFiniteLoss(f"step {self.step}: the weights became NaN or inf; training stopped without "
                                f"saving them. Last good checkpoint: {self.checkpoints.latest() or 'none'}")
        self.checkpoints.save(self.step, self.engine, self.meta(),
                              {"config": self.cfg.to_dict(), "best": self.best, "n_val": self.n_val,
                               "mlflow_run_id": self.tracker.run_id, "train_s": self.train_s})

    # --- data -------------------------------------------------------------------------------------
    def batches(self):
        """This rank's augmented device batches from the current step on (:mod:`.data.pipeline`)."""
        accum = self.cfg.train.grad_accum
        return iter(InputPipeline(self.store, self.train_items, self.cfg.data, self.cfg.augment,
                                  seed=self.cfg.train.seed, rank=self.state.rank, world=self.state.world_size,
                                  device=self.state.device, start_step=self.step * accum,
                                  progress=self.cfg.train.progress and self.state.is_main))

    # --- loop -------------------------------------------------------------------------------------
    def train_step(self, it) -> dict[str, float]:
        accum, terms_sum, finite = self.cfg.train.grad_accum, {}, None
        self.objective.start_step(self.step)  # the objective's own schedule (the λ_cv warm-up)
        for micro in range(accum):
            stream_step = self.step * accum + micro
            batch = next_batch(it)
            image = batch["image"]
            if self.cfg.model.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with self.engine.no_sync(micro == accum - 1):
                logits = self.engine.forward(image).float()
                terms = self.objective(logits, batch, stream_step)
                self.engine.backward(terms["loss"], micro == accum - 1)
            loss = terms["loss"].detach()
            finite = loss if finite is None else finite + loss
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v.detach() / accum
        if not self.engine.step(finite):
            raise NonFiniteLoss(f"step {self.step + 1}: the loss is NaN or inf on at least one rank; training "
                                f"stopped before the optimizer step. Last good checkpoint: "
                                f"{self.checkpoints.latest() or 'none'}")
        self.step += 1
        return terms_sum

    def _overlays_due(self, n_val: int) -> bool:
        """Overlays are logged at the last validation and every ``tracking.image_every`` validations."""
        every = self.cfg.tracking.image_every
        return self.step >= self.cfg.train.iterations or bool(every and n_val % every == 0)

    def validate(self, keep_predictions: bool = False) -> Evaluation | None:
        if not self.val_cases:
            return None
        model = self.engine.module
        was_training = model.training
        res = evaluate(model, self.store, self.val_cases, self.store.size, "strict", 0, self.state,
                       device=self.state.device, keep_predictions=keep_predictions and self.state.is_main)
        model.train(was_training)
        return res

    def _record(self, values: dict[str, float]) -> None:
        if not self.state.is_main:
            return
        self.tracker.metrics(values, self.step)
        with open(self.log_file, "a") as f:
            f.write(json.dumps({"step": self.step, "time": time.time(), **values}) + "\n")

    def _after_validation(self, evaluation: Evaluation) -> None:
        res = evaluation.results
        dsc = res["mean_dsc"]
        if self.state.is_main:
            self._record(evaluation_metrics(res, "val"))
            if self._overlays_due(self.n_val):
                self._log_overlays(evaluation)
        if dsc is not None and (self.best["dsc"] is None or dsc > self.best["dsc"]):
            self.best = {"dsc": dsc, "step": self.step}
            if self.state.is_main:
                best = self.out / "best"
                best.mkdir(parents=True, exist_ok=True)
                save_model(best / "model.pt", self.engine.module, self.meta())

    def _log_overlays(self, evaluation: Evaluation) -> None:
        import tempfile

        from .eval.report import overlays

        with tempfile.TemporaryDirectory() as tmp:
            for p in overlays(self.store, evaluation.predictions, evaluation.results, tmp):
                self.tracker.artifact(str(p), artifact_path=f"overlays/step_{self.step:08d}")

    def fit(self) -> dict[str, Any]:
        cfg, total = self.cfg, self.cfg.train.iterations
        it = self.batches()
        bar = progress_bar(total=total, initial=self.step, desc="train", unit="it",
                   disable=not (self.state.is_main and cfg.train.progress))
        t0, seen, last_val = time.perf_counter(), 0, None
        status = "FAILED"
        try:
            while self.step < total:
                terms = self.train_step(it)
                seen += cfg.data.batch_size * cfg.train.grad_accum
                done = self.step >= total
                if cfg.train.log_every and (self.step % cfg.train.log_every == 0 or done):
                    mean = {k: all_reduce_mean(v).item() for k, v in terms.items()}
                    ips = seen / (time.perf_counter() - t0)
                    self._record({**mean, "lr": self.engine.lr, "images_per_s": ips})
                    self.last_terms = mean
                    bar.set_postfix(loss=f"{mean['loss']:.4f}", img_s=f"{ips:.1f}")
                    t0, seen = time.perf_counter(), 0
                validated = bool(self.val_cases) and (bool(cfg.train.val_every and self.step % cfg.train.val_every == 0)
                                                      or done)
                if validated:
                    self.n_val += 1
                    last_val = self.validate(keep_predictions=self._overlays_due(self.n_val))
                    self._after_validation(last_val)
                if (cfg.train.ckpt_every and self.step % cfg.train.ckpt_every == 0) or done:
                    self.save()
                if validated and self.on_validation is not None:
                    self.on_validation(self.step, {**self.last_terms, **evaluation_metrics(last_val.results, "val")},
                                       self.checkpoints.latest())
                bar.update(1)
            status = "FINISHED"
        finally:
            bar.close()
            if self.state.is_main and status == "FINISHED":
                self.tracker.log_model(self.engine.module, self.meta(), cfg.tracking.register_model)
            self.tracker.end(status)
        summary = {"step": self.step, "best": self.best, "out_dir": str(self.out),
                   "mlflow_run_id": self.tracker.run_id, "tracking_uri": self.tracker.uri,
                   "val_mean_dsc": None if last_val is None else last_val.results["mean_dsc"],
                   "train_s": round(self.train_s, 3)}
        if self.state.is_main:
            write_json_atomic(summary, self.out / SUMMARY)
        return summary
