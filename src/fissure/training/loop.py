"""The training loop: epochs of optimisation and validation, checkpoints, early stopping.

Batches are dicts from :func:`fissure.data.collate`: ``image`` (N, 3, H, W) normalised
float and ``mask`` (N, 1, H, W) in {0, 1}. IoU is dataset-level: TP, FP and FN are summed
over the whole epoch, then divided once, never averaged over batches.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, make_checkpoint
from ..config import Config
from ..data import CrackDataset, PairSource, crack_fraction, iter_groups
from ..data.loader import default_workers, epoch_indices, make_loader
from ..data.transforms import eval_transform, train_transform
from ..errors import CheckpointError, FissureError
from ..losses import build_loss
from ..metrics import ThresholdSweep, confusion_counts
from ..model import build_model, load_weights
from ..runtime import InputPolicy, autocast_for, forward_logits, select_device
from .distributed import (
    all_reduce_sum,
    any_rank,
    broadcast_flag,
    data_parallel,
    init_distributed,
    shard,
)
from .interruption import Interrupt, TrainingInterrupted
from .optim import build_optimizer, build_scheduler
from .state import TrainState


def _silent(message: str) -> None:
    """Log sink of ranks other than 0: one process speaks for the group."""


def _iou(conf: torch.Tensor) -> float:
    """Dataset-level IoU from summed (tp, fp, fn); NaN when there is nothing to score."""
    tp, fp, fn = (int(v) for v in conf)
    return tp / (tp + fp + fn) if tp + fp + fn else float("nan")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns model, optimiser and state for one run folder."""

    def __init__(
        self,
        cfg: Config,
        source: PairSource,
        run_dir: str | Path,
        progress: bool = True,
        log: Callable[[str], None] = print,
        on_epoch_end: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist, self.device = init_distributed(select_device(cfg.train.device))
        self.progress = progress and self.dist.main
        self.log = log if self.dist.main else _silent
        self.on_epoch_end = on_epoch_end
        seed_everything(cfg.train.seed)
        self.train_set = CrackDataset(source, source.samples("train"),
                                      train_transform(cfg.data, cfg.augment), cfg.data.on_error)
        self.val_set = CrackDataset(source, source.samples("val"), eval_transform(),
                                    cfg.data.on_error)
        self.policy = InputPolicy(cfg.data.mode, cfg.data.size)
        self.model = build_model(cfg.model.encoder, cfg.model.pretrained, cfg.model.n_classes)
        self.model.to(self.device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # model holds the weights (saved, averaged by EMA); forward may be its DDP wrapper
        self.model, self.forward = data_parallel(self.model, self.dist, self.device,
                                                 cfg.train.sync_bn)
        if cfg.train.compile:
            self.forward = torch.compile(self.forward)
        self.batch_size = cfg.train.batch_size // self.dist.world
        self.workers = cfg.train.num_workers
        if self.workers is None:
            self.workers = default_workers(self.device, self.dist.local_world)
        shard([], cfg.train.batch_size, self.dist)  # checks divisibility up front
        loss_params = dict(cfg.train.loss.params)
        fraction = (crack_fraction(self.train_set)
                    if loss_params.get("pos_weight") == "auto" else None)
        self.loss_fn = build_loss(cfg.train.loss.name, loss_params, crack_fraction=fraction)
        self.steps_per_epoch = self._steps_per_epoch()
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.steps_per_epoch)
        use_fp16 = (cfg.train.amp and self.device.type == "cuda"
                    and not torch.cuda.is_bf16_supported())
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
        self.ema = None
        if cfg.train.ema:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.train.ema))
        self.state = TrainState()
        self.interrupt = Interrupt()

    def _steps_per_epoch(self) -> int:
        if self.cfg.train.steps_per_epoch:
            return self.cfg.train.steps_per_epoch
        per_step = self.cfg.train.batch_size * self.cfg.train.accumulate
        return max(1, math.ceil(len(self.train_set) / per_step))

    # -- persistence ---------------------------------------------------------------------

    def _train_state(self, step: int = 0) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": step,
            **self.state.to_dict(),
        }

    def save_last(self, step: int = 0) -> None:
        if not self.dist.main:
            return
        metrics = self.state.history[-1] if self.state.history else {}
        ckpt = make_checkpoint(self.model, self.cfg, epoch=self.state.epoch, metrics=metrics,
                               threshold=metrics.get("threshold", self.cfg.train.threshold),
                               train_state=self._train_state(step))
        ckpt.save(self.run_dir / "last.pt")

    def resume(self) -> int:
        """Restore from ``run_dir/last.pt``; returns the step to continue from in the epoch."""
        path = self.run_dir / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"{self.run_dir}: no last.pt to resume from")
        ckpt = load_checkpoint(path, map_location=self.device)
        if self.dist.main:  # half-written files of a run killed with SIGKILL mid-save
            for stale in self.run_dir.glob(".*.pt.*.tmp"):
                stale.unlink(missing_ok=True)
        state = ckpt.train_state
        if not state:
            raise CheckpointError(f"{path}: holds no training state to resume")
        ckpt.check_encoder(self.cfg.model.encoder)
        load_weights(self.model, ckpt.state_dict, str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.state = TrainState.from_dict(state)
        return int(state.get("step", 0))

    # -- one epoch -----------------------------------------------------------------------

    def _record_skipped(self, batch: dict[str, Any]) -> None:
        self.state.record_skipped(batch["skipped"], self.log)
        self._check_skipped()

    def _pool_skipped(self) -> None:
        self.state.pool_skipped(self.dist, self.log)
        self._check_skipped()

    def _check_skipped(self) -> None:
        total = len(self.train_set) + len(self.val_set)
        self.state.check_skipped(total, self.cfg.data.max_skip_fraction)

    def _check_finite(self, loss: torch.Tensor, step: int) -> bool:
        if torch.isfinite(loss):
            return True
        where = f"epoch {self.state.epoch + 1} step {step + 1}"
        if self.cfg.train.nonfinite == "skip":
            self.log(f"non-finite loss at {where}: step skipped")
            self.optimizer.zero_grad(set_to_none=True)
            return False
        raise FissureError(f"non-finite loss at {where}; lower train.lr, set train.grad_clip, "
                           "or set train.nonfinite=skip")

    def _train_batch(self, batch: dict[str, Any], step: int) -> tuple[float | None, torch.Tensor,
                                                                     bool]:
        """Forward and backward one micro-batch; returns (loss, or None when the step is void;
        tp/fp/fn; whether to stop after it).

        Under DDP, forward and backward are collectives, so the ranks act together: if any
        has an empty batch, none runs the model; if any loss is not finite, all run the
        backward and then all drop the gradients; if any was signalled, all stop after it.
        A rank acting alone would leave the others waiting in a collective for ever.
        """
        cfg = self.cfg
        counts = torch.zeros(3, dtype=torch.int64)
        empty, stop = not batch["name"], self.interrupt.signum is not None
        if self.dist.active:
            empty, stop = any_rank([empty, stop], self.dist)
        if empty:
            self.log(f"epoch {self.state.epoch + 1} step {step + 1}: skipped, a process "
                     "had no readable sample")
            self.optimizer.zero_grad(set_to_none=True)
            return None, counts, stop
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["mask"].to(self.device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, cfg.train.amp):
            logits = self.forward(images)
        loss = self.loss_fn(logits.float(), masks)
        with torch.no_grad():
            found = confusion_counts(logits.detach().float(), masks, 0.5, from_logits=True)
            counts = torch.stack([c.sum() for c in found[:3]]).cpu()
        ok = self._check_finite(loss, step)
        if ok or self.dist.active:
            self.scaler.scale(loss / cfg.train.accumulate).backward()
        if self.dist.active and any_rank([not ok], self.dist)[0]:
            if ok:
                self.log(f"epoch {self.state.epoch + 1} step {step + 1}: skipped, a non-finite "
                         "loss in another process")
            self.optimizer.zero_grad(set_to_none=True)
            ok = False
        return (loss.item() if ok else None), counts, stop

    def train_epoch(self, start_step: int = 0) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        torch.manual_seed(cfg.train.seed + 7919 * self.state.epoch + start_step)
        indices = epoch_indices(len(self.train_set), cfg.train, self.state.epoch)
        per_step = cfg.train.batch_size * cfg.train.accumulate
        mine = shard(indices[start_step * per_step:], cfg.train.batch_size, self.dist)
        if start_step and not mine:
            # resumed from a last.pt saved after the epoch's final step (older versions did)
            return {"train_loss": math.nan, "train_iou": math.nan}
        loader = make_loader(self.train_set, self.batch_size, self.workers, self.device, mine)
        total_loss, seen, conf = 0.0, 0, torch.zeros(3, dtype=torch.int64)  # tp, fp, fn
        step, micro, step_ok = start_step, 0, True
        bar = tqdm(loader, desc=f"epoch {self.state.epoch + 1}/{cfg.train.epochs} train",
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        batches, stop = 0, False
        try:
            for batch in bar:
                batches += 1
                self._record_skipped(batch)
                if not batch["name"] and not self.dist.active:
                    continue
                loss, counts, stop = self._train_batch(batch, step)
                conf += counts
                step_ok = step_ok and loss is not None
                micro += 1
                if micro % cfg.train.accumulate == 0:
                    if step_ok:
                        self._optimizer_step()
                    step, step_ok = step + 1, True
                if loss is not None:
                    total_loss += loss * len(batch["name"])
                    seen += len(batch["name"])
                    bar.set_postfix(loss=f"{loss:.4f}", iou=f"{_iou(conf):.4f}")
                if not self.dist.active:  # one process: no need to wait for the next batch
                    stop = self.interrupt.signum is not None
                if stop:
                    break
        except RuntimeError:
            # A signal sent to the whole process group also kills the loader's workers.
            if self.interrupt.signum is None:
                raise
            stop = True
        finally:
            bar.close()
        # A signal during the epoch's last batch finishes the epoch instead: fit() stops after
        # validation and the end-of-epoch last.pt, so no checkpoint points past the last step.
        if stop and batches < len(loader):
            self.save_last(step)
            raise self._interrupted(f"epoch {self.state.epoch + 1}, step {step}")
        self._pool_skipped()
        total_loss, seen = self._reduce(conf, total_loss, seen)
        if seen == 0:
            raise FissureError("no training batch could be used this epoch")
        return {"train_loss": total_loss / seen, "train_iou": _iou(conf)}

    def _reduce(self, conf: torch.Tensor, total_loss: float, seen: int) -> tuple[float, int]:
        """Sum counts over ranks in place; returns the summed (loss, images)."""
        if not self.dist.active:
            return total_loss, seen
        all_reduce_sum(conf, self.dist)
        sums = all_reduce_sum(torch.tensor([total_loss, float(seen)], dtype=torch.float64),
                              self.dist)
        return float(sums[0]), int(sums[1])

    def _optimizer_step(self) -> None:
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        cfg = self.cfg
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        mine = list(range(len(self.val_set)))[self.dist.rank::self.dist.world]
        loader = make_loader(self.val_set, cfg.eval.batch_size, self.workers, self.device,
                         mine)
        sweep = ThresholdSweep(cfg.eval.thresholds, tolerance=0, per_image=False)
        total_loss, seen, conf = 0.0, 0, torch.zeros(3, dtype=torch.int64)  # tp, fp, fn
        bar = tqdm(loader, desc=f"epoch {self.state.epoch + 1}/{cfg.train.epochs} val",
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        for batch in bar:
            self._record_skipped(batch)
            for images, masks in iter_groups(batch):
                images, masks = images.to(self.device), masks.to(self.device)
                logits = forward_logits(model, images, self.policy, cfg.train.amp)
                total_loss += self.loss_fn(logits, masks).item() * len(images)
                seen += len(images)
                counts = confusion_counts(logits, masks, cfg.train.threshold, from_logits=True)
                conf += torch.stack([c.sum() for c in counts[:3]]).cpu()
                sweep.update(torch.sigmoid(logits).cpu(), masks.cpu())
        self._pool_skipped()
        total_loss, seen = self._reduce(conf, total_loss, seen)
        if self.dist.active:
            sweep.reduce_(lambda t: all_reduce_sum(t, self.dist))
        if seen == 0:
            raise FissureError("no validation image could be used")
        tuned = sweep.compute()["exact"]
        tp, fp, fn = conf.tolist()
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
        threshold = tuned["ods_threshold"] or cfg.train.threshold
        return {"val_loss": total_loss / seen, "val_iou": _iou(conf), "val_f1": f1,
                "val_f1_tuned": tuned["ods_f1"] if tuned["ods_f1"] is not None else float("nan"),
                "threshold": float(threshold)}

    # -- the run -------------------------------------------------------------------------

    def _score(self, row: dict[str, float]) -> float:
        monitor = self.cfg.train.monitor
        if monitor == "loss":
            return -row["val_loss"]
        return row["val_f1_tuned"] if monitor == "f1" else row["val_iou"]

    def fit(self, start_step: int = 0) -> TrainState:
        cfg = self.cfg
        started = time.monotonic()
        with self.interrupt.installed():
            while self.state.epoch < cfg.train.epochs:
                tick = time.monotonic()
                row: dict[str, Any] = {"epoch": self.state.epoch + 1}
                row.update(self.train_epoch(start_step))
                start_step = 0
                row.update(self.validate())
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                row["seconds"] = round(time.monotonic() - tick, 2)
                row["skipped"] = len(self.state.skipped)
                self.state.epoch += 1
                self.state.history.append(row)
                improved = self._update_best(row)
                self.save_last()
                self.log(
                    f"epoch {row['epoch']:3d}/{cfg.train.epochs}  "
                    f"train loss {row['train_loss']:.4f} "
                    f"iou {row['train_iou']:.4f} | val loss {row['val_loss']:.4f} "
                    f"iou {row['val_iou']:.4f} f1@{row['threshold']:.2f} {row['val_f1_tuned']:.4f}"
                    f"  {row['seconds']:.1f}s" + ("  * best" if improved else ""))
                if self.on_epoch_end is not None and self.dist.main:
                    self.on_epoch_end(self.state.history)
                if any_rank([self.interrupt.signum is not None], self.dist)[0]:
                    raise self._interrupted(f"end of epoch {self.state.epoch}")
                reason = self._stop_reason(started)
                if broadcast_flag(reason is not None, self.dist):
                    self.log(reason or "stopping: rank 0 decided so")
                    break
        return self.state

    def _interrupted(self, where: str) -> TrainingInterrupted:
        """The error that ends a run stopped by a signal, once ``last.pt`` is saved."""
        return TrainingInterrupted(
            f"stopped by signal {self.interrupt.signum}; saved {self.run_dir / 'last.pt'} "
            f"({where}); continue with fissure train --resume {self.run_dir}")

    def _stop_reason(self, started: float) -> str | None:
        """Why training should stop after this epoch (decided on rank 0), or None."""
        train = self.cfg.train
        if train.patience and self.state.bad_epochs >= train.patience:
            return f"early stopping: no improvement for {train.patience} epochs"
        if train.max_minutes and (time.monotonic() - started) / 60 >= train.max_minutes:
            return f"time budget of {train.max_minutes} min reached"
        return None

    def _update_best(self, row: dict[str, Any]) -> bool:
        score = self._score(row)
        if not math.isfinite(score):
            self.state.bad_epochs += 1
            return False
        best = self.state.best
        if best is not None and score <= best + self.cfg.train.min_delta:
            self.state.bad_epochs += 1
            return False
        self.state.best, self.state.best_epoch, self.state.bad_epochs = score, row["epoch"], 0
        if not self.dist.main:
            return True
        weights = self.ema.module if self.ema is not None else self.model
        ckpt = make_checkpoint(weights, self.cfg, epoch=row["epoch"], metrics=row,
                               threshold=row["threshold"] if self.cfg.train.tune_threshold
                               else self.cfg.train.threshold)
        ckpt.save(self.run_dir / "best.pt")
        return True
