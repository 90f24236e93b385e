"""The one training loop. Tasks (`tasks.py`) plug in data, model, loss and metrics; this module owns
the schedule, precision, accumulation, evaluation, checkpoints, resume, cancellation and the run folder.

Entry point: `execute(run_folder)` trains the run described by its `run.toml` (and nothing else), so a
run started from the command line, the queue or Slurm behaves the same.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import random
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fmae.atomic_write import write_bytes_atomic
from fmae.data.torch.datasets import EpochBatches, ImageSet
from fmae.data.image_decode import set_max_pixels
from fmae.errors import FmaeError, WorkFailed, failure_hint
from fmae.run_spec import Execution, RunSpec
from fmae.models.checkpoint import extract_state_dict, read_checkpoint, save_checkpoint
from fmae.models.encoders import set_fused_attn
from fmae.run_lock import exec_lock
from fmae.runs import RunDir, one_line
from fmae.summary import AU_FLAGS, Summary
from fmae.train.loader import make_loader
from fmae.train.run_log import au_epoch_line, close_logging, finish_records, setup_logging
from fmae.train.resume import restore, save_last
from fmae.train.dist import DistInfo, all_reduce_mean, gather_by_index, init_distributed, shutdown
from fmae.train.optim import Schedule, effective_lr, make_optimizer
from fmae.train.tasks import Batch, Task, make_task

log = logging.getLogger("fmae.train")

EXIT_CANCELLED = 143  # 128 + SIGTERM, as a shell reports a process ended by it
STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}  # each a cancel: 128 + its number
LIVE_EVERY_S = 2.0  # the longest gap between train records (and heartbeats) while training


class Cancelled(Exception):
    pass


def execute(path: Path, resume: bool = False, quiet: bool = False) -> int:
    """Run the run folder at `path`; returns the process exit code (0 done, 143 cancelled).
    Bad input raises FmaeError and a failed run WorkFailed, after status.json says so."""
    run = RunDir.open(path)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 holds the run's lock for all ranks
        return _execute_locked(run, resume, quiet)
    with exec_lock(run.path):  # one trainer per run folder, for this process's whole life (issue 22)
        return _execute_locked(run, resume, quiet)


def _execute_locked(run: RunDir, resume: bool, quiet: bool) -> int:
    cfg = run.read_config()
    if run.read_status().get("state") == "done":  # it ended while this process waited for the lock
        from fmae.predict.job import TASK, again_hint

        if cfg.get("task") == TASK:
            raise FmaeError(f"{run.path}: {again_hint(run.path, dict(cfg))}")
        raise FmaeError(f"{run.path}: this run is done — start a new one (`fmae train --from {run.path}/run.toml`)")
    if cfg.get("task") == "predict":  # `fmae predict` queued as a run (fmae/predict/job.py): no training
        from fmae.predict.run_task import execute_predict

        return execute_predict(run, cfg, quiet)
    spec = RunSpec.from_flat(cfg)
    set_max_pixels(spec.data.max_image_pixels or None)  # [data] max_image_pixels, before any image opens
    device = pick_device(spec.execution)
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.distributed else (device.index or 0))
    handlers = setup_logging(run, info, quiet)
    try:
        return Trainer(run, cfg, info, device).main(resume)
    finally:
        close_logging(run, handlers)
        shutdown()


def pick_device(execution: Execution) -> torch.device:
    want = execution.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise FmaeError("device = cuda, but no CUDA GPU is visible to this process — use --device cpu")
    return torch.device(want)


def amp_dtype(execution: Execution, device: torch.device) -> torch.dtype | None:
    amp = execution.amp
    if device.type == "cpu":
        return torch.bfloat16 if amp == "bf16" else None  # fp16 autocast on the CPU gains nothing
    if amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Trainer:
    def __init__(self, run: RunDir, cfg: dict, info: DistInfo, device: torch.device) -> None:
        self.run, self.cfg, self.info, self.device = run, cfg, info, device  # cfg: flat, into checkpoints
        self.spec = RunSpec.from_flat(cfg)  # what every component reads, each its own section
        self.stop_requested = False
        self.stop_signal = signal.SIGTERM  # the one that asked (a cancel, or Ctrl-C in a terminal)
        self.task: Task = make_task(cfg)
        self.best: dict[str, Any] = {"epoch": None, "value": None}
        self.step = 0
        self.position = (0, 0)  # (epoch, next batch) right after the last optimizer update
        self.meters: dict[str, dict[str, float]] = {"interval": {}, "epoch": {}}
        self.tb = None

    # --- lifecycle -----------------------------------------------------------------------------
    def main(self, resume: bool) -> int:
        main = self.info.is_main
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in STOP_SIGNALS}
        try:
            if main:
                self.run.mark_running(pid=os.getpid(), pgid=os.getpgid(0), host=socket.gethostname(),
                                      gpus=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
            if self.spec.identity.eval_checkpoint:
                self._evaluate_only()
            else:
                self._setup(resume)
                self._fit()
            finish_records(self.run, self.tb)  # events and metrics whole on disk before the status says done
            if main:
                self._final_progress()
                self.run.mark_ended("done", exit_code=0)
            log.info("done: %s", self.run.path)
            return 0
        except (Cancelled, KeyboardInterrupt) as e:  # KeyboardInterrupt: a second Ctrl-C, not waiting for the step
            code = 128 + self.stop_signal
            if main:
                self._final_progress()
                where = (f"from epoch {self.position[0] + 1}, step {self.step}" if isinstance(e, Cancelled)
                         else "from its last checkpoint")
                self.run.mark_ended("cancelled", exit_code=code, error=f"cancelled ({STOP_SIGNALS[self.stop_signal]}); "
                                    f"resume continues {where}")
            log.warning("cancelled at step %d; the last checkpoint resumes from here", self.step)
            return code
        except (FmaeError, WorkFailed) as e:
            log.error("%s", e)
            if main:
                self._final_progress()
                self.run.mark_ended("failed", exit_code=e.exit_code, error=str(e))
            raise
        except Exception as e:  # a bug or the environment (CUDA OOM…): the run fails, with the reason
            log.error("%s", traceback.format_exc(), extra={"traceback": True})  # train.log; the terminal gets one line
            hint = failure_hint(e)  # out of memory, disk full: what to do, kept whole within the 300
            reason = _one_line(e)[: 300 - len(hint)] + hint
            if main:
                self._final_progress()
                self.run.mark_ended("failed", exit_code=1, error=reason)
            raise WorkFailed(f"run {self.run.id} failed: {reason} (traceback in {self.run.log_path})") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.tb is not None:
                self.tb.close()

    def _final_progress(self) -> None:
        """status.json says where the run stopped (the step of its last checkpoint after a cancel), not
        the last periodic heartbeat's step."""
        if self.step:
            self.run.update_status(step=self.step)

    def _on_stop_signal(self, signum, frame) -> None:
        # Finish the current optimizer step, write a checkpoint, end as cancelled. A second Ctrl-C is
        # someone who will not wait for the step: stop now (the last checkpoint still resumes exactly).
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested, self.stop_signal = True, signum

    # --- setup ---------------------------------------------------------------------------------
    def _setup(self, resume: bool) -> None:
        spec, info = self.spec, self.info
        seed = spec.identity.seed
        # The same seed on every rank makes identical initial weights; after the model is built each
        # rank draws its own stream (drop-path, MAE masks) — see below.
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        self.data = self.task.build_data()
        log.info("%s", self.data.describe)
        self.raw_model, depth = self.task.build_model()
        set_fused_attn(self.raw_model, spec.model.fused_attn)
        self.raw_model.to(self.device)
        if info.distributed:
            torch.manual_seed(seed * 1000 + info.rank)
        self.model = self.raw_model
        if spec.execution.compile:
            self.model = torch.compile(self.model)
        if info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(self.raw_model, spec.optim, depth, self.device,
                                        no_decay_tokens=spec.identity.task != "pretrain")
        self.dtype = amp_dtype(spec.execution, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

        sched = spec.schedule
        bs, accum = sched.batch_size, sched.accum_iter
        self.sampler = EpochBatches(len(self.data.train), bs, seed, shuffle=True, drop_last=True,
                                    rank=info.rank, world_size=info.world_size)
        self.batches_per_epoch = len(self.sampler.batches())
        if self.batches_per_epoch < accum:
            raise FmaeError(f"the train split has {len(self.data.train)} items: fewer than one step of "
                            f"batch_size {bs} × accum_iter {accum} × {info.world_size} process(es) — lower --batch-size")
        lr = effective_lr(spec.optim.blr, bs, accum, info.world_size)
        self.schedule = Schedule(lr, sched.min_lr, float(sched.warmup_epochs), float(sched.epochs))
        self.updates_per_epoch = self.batches_per_epoch // accum
        log.info("lr = blr %g × batch %d × accum %d × %d process(es) / 256 = %.3g; %d steps/epoch × %d epochs; "
                 "device %s, precision %s", spec.optim.blr, bs, accum, info.world_size, lr,
                 self.updates_per_epoch, sched.epochs, self.device, self.dtype or "fp32")
        from fmae.run_config import config_warnings

        for warning in config_warnings(self.cfg, self.updates_per_epoch):
            log.warning("%s", warning)
        self.start = (0, 0)
        if resume:
            self._resume()
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run.path), purge_step=self.step + 1 if resume else None)

    def _resume(self) -> None:
        restore(self)  # fmae/train/resume.py: the checkpoint, or a clean start when there is none

    # --- the loop ------------------------------------------------------------------------------
    def _fit(self) -> None:
        epochs = self.spec.schedule.epochs
        first_epoch, first_batch = self.start
        for epoch in range(first_epoch, epochs):
            train_record = self._train_epoch(epoch, first_batch if epoch == first_epoch else 0)
            if self.task.has_test:
                self._after_eval(epoch, self._evaluate(epoch))
            elif self.info.is_main:
                self._after_pretrain_epoch(epoch, train_record)
            self.position = (epoch + 1, 0)
            self._save_last()
            if self.stop_requested and epoch + 1 < epochs:
                raise Cancelled()

    def _loader(self, data: ImageSet, batch_sampler) -> DataLoader:
        workers = self.spec.execution.num_workers
        if workers < 0:
            workers = max(0, min(8, (os.cpu_count() or 1) - 1))
        return make_loader(data, batch_sampler, workers, pin_memory=self.device.type == "cuda")

    def _train_epoch(self, epoch: int, first_batch: int) -> None:
        spec = self.spec
        accum, log_every, clip = spec.schedule.accum_iter, spec.execution.log_every, spec.optim.clip_grad
        self.model.train()
        self.sampler.epoch, self.sampler.start_batch, self.data.train.epoch = epoch, first_batch, epoch
        if first_batch == 0:
            self.meters["epoch"] = {}
        tick, images = time.perf_counter(), 0
        # This process's first step is logged at once: a queue shows progress right after the start.
        first_step = self.step + 1 if (epoch, first_batch) == self.start else 0
        # The lr of the last update made: resumed at an epoch's very end (a cancel after its last step),
        # the loop below makes none, and the epoch's records must say the lr an unbroken run's say.
        lr = self.schedule.at(epoch + max(0, first_batch - accum) / self.batches_per_epoch)
        try:
            for i, (x, y, subject) in enumerate(self._loader(self.data.train, self.sampler), start=first_batch):
                if i // accum >= self.updates_per_epoch:
                    break  # a trailing partial accumulation is dropped, like the last partial batch
                if i % accum == 0:
                    lr = self.schedule.apply(self.optimizer, epoch + i / self.batches_per_epoch)
                x = self.data.train.to_device(x, self.device)  # normalised (and erased) float [B, 3, H, W]
                batch = Batch(x, y.to(self.device, non_blocking=True), subject.to(self.device, non_blocking=True))
                last_micro = (i + 1) % accum == 0
                sync = contextlib.nullcontext() if last_micro or not self.info.distributed else self.model.no_sync()
                with sync:
                    with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                        loss, parts = self.task.loss(self.model, batch)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise WorkFailed(f"loss is {value} at epoch {epoch + 1}, step {self.step + 1} — lower "
                                         "blr (--set blr=…) or check the data")
                    self.scaler.scale(loss / accum).backward()
                self._meter({"loss": value, **{k: float(v.item()) for k, v in parts.items()}})
                images += x.shape[0]
                if not last_micro:
                    continue
                if clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.position = (epoch, i + 1)
                # Every log_every steps, and by time too (LIVE_EVERY_S), so status.json's heartbeat and
                # the live curves move on slow steps and in short runs. Not by time under DDP: a record
                # averages over ranks (a collective), so every rank must log at the same steps.
                by_time = not self.info.distributed and time.perf_counter() - tick >= LIVE_EVERY_S
                if self.step % log_every == 0 or self.step == first_step or by_time:
                    rate = images * self.info.world_size / max(time.perf_counter() - tick, 1e-9)
                    self._log_train(epoch, i + 1, lr, rate)
                    tick, images = time.perf_counter(), 0
                if self._stop_agreed():
                    self._save_last()
                    raise Cancelled()
        except RuntimeError:
            if self.stop_requested:  # the loader's workers were signalled with us
                self._save_last()
                raise Cancelled() from None
            raise
        if self.meters["interval"]:
            self._log_train(epoch, self.batches_per_epoch, lr, None)
        return self._log_epoch(epoch, lr)

    def _stop_agreed(self) -> bool:
        """Every rank stops after the same step (a rank leaving early would hang the others in DDP)."""
        if not self.info.distributed:
            return self.stop_requested
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.stop_requested else 0.0],
                            device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop_requested = bool(flag.item())
        return self.stop_requested

    def _meter(self, values: dict[str, float]) -> None:
        for scope in ("interval", "epoch"):
            m = self.meters[scope]
            for k, v in values.items():
                m[k] = m.get(k, 0.0) + v
            m["_n"] = m.get("_n", 0.0) + 1

    def _take(self, scope: str) -> dict[str, float]:
        m = self.meters[scope]
        n = m.pop("_n", 0.0)
        out = {k: all_reduce_mean(v / n, self.info) for k, v in sorted(m.items())} if n else {}
        self.meters[scope] = {}
        return out

    def _log_train(self, epoch: int, batch: int, lr: float, rate: float | None) -> None:
        values = self._take("interval")
        if not self.info.is_main or not values:
            return
        record = {"split": "train", "epoch": epoch + 1, "step": self.step,
                  "epoch_frac": round(epoch + batch / self.batches_per_epoch, 6), "lr": lr, **values}
        if rate is not None:
            record["images_per_s"] = round(rate, 1)
        self.run.append_metrics(record)
        for k, v in values.items():
            self.tb.add_scalar(f"train/{k}", v, self.step)
        self.tb.add_scalar("train/lr", lr, self.step)
        epochs = self.spec.schedule.epochs
        total = self.updates_per_epoch * epochs
        self.run.heartbeat(epoch=epoch + 1, step=self.step, total_steps=total, epochs=epochs)
        log.info("epoch %d/%d step %d/%d loss %.4f lr %.3g%s", epoch + 1, epochs, self.step, total,
                 values["loss"], lr, f" {rate:.0f} img/s" if rate else "")

    def _log_epoch(self, epoch: int, lr: float) -> dict[str, Any] | None:
        values = self._take("epoch")
        if not (self.info.is_main and values):
            return None
        record = {"split": "train_epoch", "epoch": epoch + 1, "step": self.step, "lr": lr, **values}
        self.run.append_metrics(record)
        self.tb.add_scalar("train/epoch_loss", values["loss"], epoch + 1)
        return record

    def _after_pretrain_epoch(self, epoch: int, record: dict[str, Any] | None) -> None:
        """Pretraining has no test split: show what the model reconstructs, export the weights."""
        from fmae.visualize import reconstruction_grid

        grid = reconstruction_grid(self.raw_model, self.task.preview_images(), self.spec.model.mask_ratio,
                                   seed=self.spec.identity.seed)
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        write_bytes_atomic(self.run.predictions / f"reconstructions-e{epoch + 1:03d}.png", buf.getvalue())
        # The official {"model": …} layout, weights only: `fmae train --init` and other MAE code read it.
        save_checkpoint(self.run.checkpoints / "pretrained.pth", {"model": self.raw_model.state_dict(),
                                                                 "epoch": epoch + 1, "config": dict(self.cfg)})
        if record is not None:
            self._write_summary(epoch, record)
            log.info("epoch %d: reconstruction loss %.4f", epoch + 1, record["loss"])

    # --- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, data: ImageSet) -> np.ndarray | None:
        self.raw_model.eval()
        sampler = EpochBatches(len(data), self.spec.schedule.batch_size, 0, shuffle=False, drop_last=False,
                               rank=self.info.rank, world_size=self.info.world_size)
        indices = np.array([i for b in sampler.batches() for i in b], dtype=np.int64)
        outs = []
        for x, _, _ in self._loader(data, sampler):
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                outs.append(self.task.scores(self.raw_model, data.to_device(x, self.device)).float().cpu())
        return gather_by_index(self.info, indices, torch.cat(outs).numpy(), len(data))

    def _evaluate(self, epoch: int) -> dict[str, Any] | None:
        tick = time.perf_counter()
        try:
            outputs = self._predict(self.data.test)
        except RuntimeError:
            if self.stop_requested:  # a cancel reached an eval worker still starting in our group
                raise Cancelled() from None  # last.pt (if any) resumes exactly; this epoch is redone
            raise
        if outputs is None:
            return None
        self._last_outputs = outputs
        targets = self.data.test.targets.numpy()
        scores = self.task.evaluate(outputs, targets)
        return {"split": "test", "epoch": epoch + 1, "step": self.step, **scores,
                "seconds": round(time.perf_counter() - tick, 3)}

    def _after_eval(self, epoch: int, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        metric = self.task.metric
        value = record[metric]
        self.run.append_metrics(record)
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step", "seconds"):
                self.tb.add_scalar(f"test/{k}", v, self.step)
            elif isinstance(v, dict):
                for name, x in v.items():
                    if isinstance(x, (int, float)):
                        self.tb.add_scalar(f"test/{k}/{name}", x, self.step)
        improved = value is not None and (self.best["value"] is None or value > self.best["value"])
        if improved:
            self.best = {"epoch": epoch + 1, "value": value, "record": record}
            self._save_predictions(self._last_outputs, epoch)
            if self.spec.execution.save_best:
                save_checkpoint(self.run.checkpoints / "best.pt",
                                {"model": self.raw_model.state_dict(), "epoch": epoch + 1, "config": dict(self.cfg)})
        self._write_summary(epoch, record)
        best = self.best["value"]
        log.info("test epoch %d: %s = %.4f (best %.4f at epoch %s)%s", epoch + 1, metric, value, best,
                 self.best["epoch"], au_epoch_line(record))

    def _save_predictions(self, outputs: np.ndarray, epoch: int) -> None:
        payload = self.task.predictions(outputs, self.data.test.targets.numpy(), self.data.test)
        payload["epoch"] = np.array(epoch + 1)
        buf = io.BytesIO()
        np.savez(buf, **payload)
        write_bytes_atomic(self.run.predictions / "best.npz", buf.getvalue())

    def _write_summary(self, epoch: int, record: dict[str, Any]) -> None:
        ident = self.spec.identity
        # AU runs: the best epoch's degenerate flag and the test fold's all-positive F1, at the top
        flags = self.best.get("record") or record
        Summary(
            run_id=self.run.id, task=ident.task, dataset=ident.dataset, fold=ident.fold, seed=ident.seed,
            model=self.spec.model.model, recipe=ident.recipe, lambda_id=ident.lambda_id,
            metric=self.task.metric, metric_label=self.task.metric_label,
            epochs=self.spec.schedule.epochs, epochs_done=epoch + 1, step=self.step,
            best_epoch=self.best["epoch"], best_value=self.best["value"],
            best=self.best.get("record"), last=record,
            **{k: flags[k] for k in AU_FLAGS if k in flags},
        ).write(self.run)

    def _save_last(self) -> None:
        save_last(self)

    # --- `fmae eval` ---------------------------------------------------------------------------
    def _evaluate_only(self) -> None:
        self.data = self.task.build_data()
        log.info("%s", self.data.describe)
        self.raw_model, _ = self.task.build_model()
        set_fused_attn(self.raw_model, self.spec.model.fused_attn)
        ck = read_checkpoint(Path(self.spec.identity.eval_checkpoint))
        state = extract_state_dict(ck)
        try:
            self.raw_model.load_state_dict(state)
        except RuntimeError as e:
            raise FmaeError(f"{self.spec.identity.eval_checkpoint}: does not fit this run's model ({_one_line(e)[:160]})") from None
        self.raw_model.to(self.device)
        self.dtype = amp_dtype(self.spec.execution, self.device)
        if self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run.path))
        epoch = int(ck.get("epoch", 1)) - 1
        record = self._evaluate(epoch)
        self._after_eval(epoch, record)


def _one_line(e: BaseException) -> str:
    text = one_line(e, None) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]
