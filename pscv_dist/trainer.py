"""The training loop: data stream -> augmentation -> engine -> objective, with validation,
atomic checkpoints and exact resume, the NaN guard, MLflow on rank 0 and a progress bar."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .augment import Augmenter
from .config import Config
from .data import SliceStore
from .data.stream import SliceDataset, StepBatchSampler, collate, local_batch_size
from .distributed import DistState, all_finite, all_reduce_mean
from .engine import build_engine
from .errors import NonFiniteLoss
from .eval.evaluate import evaluate
from .losses import build_objective
from .losses.contrastive import NonFiniteInput
from .model import UNet
from .tracking import Tracker
from .progress import progress_bar

log = logging.getLogger(__name__)


def objective_params(cfg: Config) -> dict[str, Any]:
    lc = cfg.loss
    return {
        "pce": {}, "fullsup": {},
        "entmini": {"lambda_ent": lc.lambda_ent},
        "ms": {"lambda_ms": lc.lambda_ms, "mu": lc.mu},
        "pscv": {"lambda_cv": lc.lambda_cv, "mu": lc.mu, "tau": lc.tau, "cv_classes": lc.cv_classes,
                 "seed": cfg.train.seed, "compile": cfg.model.compile,
                 "gather_dtype": torch.bfloat16 if lc.gather_dtype == "bfloat16" else None},
    }[lc.name]


def _barrier(state: DistState) -> None:
    if state.distributed:
        dist.barrier()


class Trainer:
    def __init__(self, cfg: Config, state: DistState):
        self.cfg, self.state = cfg, state
        if not cfg.data.store:
            raise ValueError("data.store is not set: give the path of a store written by `pscv prepare`")
        self.store = SliceStore(cfg.data.store)
        self.local_batch = local_batch_size(cfg.data.batch_size, state.world_size)
        self.train_items = self.store.slice_indices(self.store.split(cfg.data.train_split))
        self.val_cases = self.store.split(cfg.data.val_split) if cfg.data.val_split else []
        self.out = Path(cfg.train.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.out.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        m = cfg.model
        self.model = UNet(1, self.store.num_classes, m.base_width, m.depth,
                          tuple(m.dropout) if m.dropout else None, m.upsample).to(state.device)
        if m.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.engine = build_engine(self.model, cfg, state, self.local_batch)
        # per-rank dropout streams, seeded after the engine (DeepSpeed's init draws random numbers)
        torch.manual_seed(cfg.train.seed * 1000 + state.rank)
        self.objective = build_objective(cfg.loss.name, self.store.num_classes, self.store.ignore_index,
                                         **objective_params(cfg))
        self.augment = Augmenter(cfg.augment, self.store.ignore_index, cfg.train.seed)
        self.step, self.best = 0, {"dsc": None, "step": None}
        run_id = self._resume()
        self.tracker = Tracker(cfg.tracking, str(self.out), cfg.tracking.enabled and state.is_main,
                               cfg.flat(), resume_run_id=run_id)
        self.log_file = self.out / "train_log.jsonl"

    # --- checkpoints ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return ckpt.model_meta(self.engine.module, self.store.classes, self.store.size,
                               self.store.meta.normalization, self.store.ignore_index, self.cfg.to_dict())

    def save(self) -> None:
        state = [t for t in self.engine.module.state_dict().values() if t.is_floating_point()]
        if not all_finite(torch.stack([t.detach().float().abs().max() for t in state]).max()):
            # finite losses can still overflow the weights or BN statistics: never save those
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            raise NonFiniteLoss(f"step {self.step}: the weights became NaN or inf; training stopped without "
                                f"saving them. Last good checkpoint: {last or 'none'}")
        tmp = ckpt.staging_dir(self.ckpt_dir, self.step)
        if self.state.is_main and tmp.exists():
            shutil.rmtree(tmp)
        _barrier(self.state)
        tmp.mkdir(parents=True, exist_ok=True)
        ckpt.save_atomic({"step": self.step, **ckpt.rng_state()}, tmp / f"rng_rank{self.state.rank}.pt")
        self.engine.save_engine(tmp)  # DeepSpeed: collective
        if self.state.is_main:
            ckpt.save_model(tmp / "model.pt", self.engine.module, self.meta())
            ckpt.save_atomic({"step": self.step, "engine": self.engine.state_dict(), "config": self.cfg.to_dict(),
                              "world_size": self.state.world_size, "best": self.best,
                              "mlflow_run_id": getattr(self, "tracker", None) and self.tracker.run_id},
                             tmp / "train_state.pt")
        _barrier(self.state)
        if self.state.is_main:
            ckpt.commit(self.ckpt_dir, self.step, self.cfg.train.keep_last)
        _barrier(self.state)

    def _resume(self) -> str | None:
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if latest is None:
            return None
        ts = torch.load(latest / "train_state.pt", map_location="cpu", weights_only=True)
        saved_model, now_model = ts["config"]["model"], self.cfg.to_dict()["model"]
        for key in ("base_width", "depth", "upsample", "dropout"):
            if saved_model[key] != now_model[key]:
                raise ValueError(f"{latest}: checkpoint has model.{key}={saved_model[key]!r}, config has "
                                 f"{now_model[key]!r}; use another train.out_dir or the same model")
        bundle = torch.load(latest / "model.pt", map_location=self.state.device, weights_only=True)
        self.engine.module.load_state_dict(bundle["model_state"])
        self.engine.load_state_dict(ts["engine"], latest)
        self.step, self.best = int(ts["step"]), ts.get("best", self.best)
        rng = latest / f"rng_rank{self.state.rank}.pt"
        if ts["world_size"] != self.state.world_size or not rng.exists():
            log.warning("%s: saved with world size %s, resuming with %s: RNG streams are reseeded, the run "
                        "continues but is not bit-identical", latest, ts["world_size"], self.state.world_size)
        else:
            ckpt.set_rng_state(torch.load(rng, weights_only=True))
        if self.state.is_main:
            log.info("resumed from %s at step %d", latest, self.step)
        return ts.get("mlflow_run_id")

    # --- data -------------------------------------------------------------------------------------
    def batches(self):
        accum = self.cfg.train.grad_accum
        sampler = StepBatchSampler(self.train_items, self.cfg.data.batch_size, self.state.rank,
                                   self.state.world_size, self.cfg.train.seed, start_step=self.step * accum)
        workers = self.cfg.data.num_workers
        # its own generator: creating the iterator must not draw from the global RNG (dropout's
        # stream), or a resumed run would diverge from the uninterrupted one
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + self.state.rank)
        loader = DataLoader(SliceDataset(self.cfg.data.store), batch_sampler=sampler, collate_fn=collate, generator=gen,
                            num_workers=workers, prefetch_factor=self.cfg.data.prefetch if workers else None,
                            pin_memory=self.state.device.type == "cuda", persistent_workers=False)
        return iter(loader)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.state.device, non_blocking=True) for k, v in batch.items()}

    # --- loop -------------------------------------------------------------------------------------
    def train_step(self, it) -> dict[str, float]:
        accum, terms_sum, finite = self.cfg.train.grad_accum, {}, None
        if self.cfg.loss.name == "pscv" and self.cfg.loss.lambda_cv_warmup:
            self.objective.lambda_cv = self.cfg.loss.lambda_cv * min(1.0, (self.step + 1) / self.cfg.loss.lambda_cv_warmup)
        for micro in range(accum):
            stream_step = self.step * accum + micro
            batch = self.augment(self._to_device(next(it)), stream_step, self.state.rank)
            image = batch["image"]
            if self.cfg.model.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with self.engine.no_sync(micro == accum - 1):
                logits = self.engine.forward(image).float()
                try:
                    terms = self.objective(logits, batch, stream_step)
                except NonFiniteInput:  # the CV term saw NaN/inf network outputs on some rank
                    finite = torch.tensor(float("nan"))
                    break
                self.engine.backward(terms["loss"], micro == accum - 1)
            loss = terms["loss"].detach()
            finite = loss if finite is None else finite + loss
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v.detach() / accum
        if not self.engine.step(finite):
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            raise NonFiniteLoss(f"step {self.step + 1}: the loss is NaN or inf on at least one rank; training "
                                f"stopped before the optimizer step. Last good checkpoint: {last or 'none'}")
        self.step += 1
        return terms_sum

    def _overlays_due(self, n_val: int) -> bool:
        """Overlays are logged at the last validation and every ``tracking.image_every`` validations."""
        every = self.cfg.tracking.image_every
        return self.step >= self.cfg.train.iterations or bool(every and n_val % every == 0)

    def validate(self, keep_predictions: bool = False) -> dict[str, Any] | None:
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

    def _after_validation(self, res: dict[str, Any], n_val: int) -> None:
        dsc = res["mean_dsc"]
        if self.state.is_main:
            values = {"val_mean_dsc": dsc or 0.0, "val_mean_hd95": res["mean_hd95"] or 0.0}
            values.update({f"val_dsc_{k}": v["dsc"] for k, v in res["per_class"].items() if v["dsc"] is not None})
            self._record(values)
            if self._overlays_due(n_val):
                self._log_overlays(res)
        if dsc is not None and (self.best["dsc"] is None or dsc > self.best["dsc"]):
            self.best = {"dsc": dsc, "step": self.step}
            if self.state.is_main:
                best = self.out / "best"
                best.mkdir(parents=True, exist_ok=True)
                ckpt.save_model(best / "model.pt", self.engine.module, self.meta())

    def _log_overlays(self, res: dict[str, Any]) -> None:
        import tempfile

        from .eval.report import overlays

        with tempfile.TemporaryDirectory() as tmp:
            for p in overlays(self.store, res.get("_predictions", {}), res, tmp):
                self.tracker.artifact(str(p), artifact_path=f"overlays/step_{self.step:08d}")

    def fit(self) -> dict[str, Any]:
        cfg, total = self.cfg, self.cfg.train.iterations
        it = self.batches()
        bar = progress_bar(total=total, initial=self.step, desc="train", unit="it",
                   disable=not (self.state.is_main and cfg.train.progress))
        n_val, t0, seen, last_val = 0, time.perf_counter(), 0, None
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
                    bar.set_postfix(loss=f"{mean['loss']:.4f}", img_s=f"{ips:.1f}")
                    t0, seen = time.perf_counter(), 0
                if self.val_cases and ((cfg.train.val_every and self.step % cfg.train.val_every == 0) or done):
                    n_val += 1
                    last_val = self.validate(keep_predictions=self._overlays_due(n_val))
                    self._after_validation(last_val, n_val)
                if (cfg.train.ckpt_every and self.step % cfg.train.ckpt_every == 0) or done:
                    self.save()
                bar.update(1)
            status = "FINISHED"
        finally:
            bar.close()
            if self.state.is_main and status == "FINISHED":
                self.tracker.log_model(self.engine.module, self.meta(), cfg.tracking.register_model)
            self.tracker.end(status)
        summary = {"step": self.step, "best": self.best, "out_dir": str(self.out),
                   "mlflow_run_id": self.tracker.run_id, "tracking_uri": getattr(self.tracker, "uri", None)}
        if last_val is not None:
            summary["val_mean_dsc"] = last_val["mean_dsc"]
        return summary
