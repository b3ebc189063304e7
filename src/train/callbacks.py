"""What a run writes and shows: progress and metrics, adapter/model files, and the resumable checkpoint.

Files in --proj_dir:
    metrics.csv                 one row per optimizer step: step, epoch, loss, lr, tokens, kt_s, peak_mem_gb, ...
    loss.png                    loss curve (matplotlib, Agg), redrawn at every epoch end and at the end
    tb/                         TensorBoard scalars, when the tensorboard package is installed
    adapter-{epoch}.pth         adapter every --epoch_save epochs (save_adapter), adapter-final.pth at the end
    rwkv-{epoch}.pth            the same for --peft none: the whole model in the official layout, rwkv-final.pth
    checkpoints/step-NNNNNNNN/  resumable training state (trainable tensors, optimizer, rng; DeepSpeed's shards)
    checkpoints/latest.json     names the newest complete checkpoint and its position (step, epoch, batch)

Every file is written to a temporary name and renamed into place. A checkpoint folder becomes the latest only
after every rank finished writing it, so a run killed at any moment resumes from a complete checkpoint.
"""
import contextlib
import csv
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, TQDMProgressBar

from src.checkpoint.files import copy_atomic, write_text_atomic
from src.train.plots import plot_loss, read_metrics

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
METRICS_FILE = "metrics.csv"
LOSS_PLOT = "loss.png"
METRIC_COLUMNS = ("step", "epoch", "batch", "loss", "lr", "tokens", "kt_s", "peak_mem_gb", "elapsed_s")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU, the peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def trainable_tensors(model: torch.nn.Module) -> dict:
    """{name: detached tensor} of the model's trainable parameters."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def gathered_parameters(trainer: pl.Trainer, params):
    """Full parameter values inside the block on every rank: ZeRO-3 partitions them, other strategies do not."""
    strategy = trainer.strategy
    if getattr(strategy, "zero_stage_3", False):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
            yield
    else:
        yield


# ---- resumable checkpoint -------------------------------------------------------------------------------------
@dataclass
class ResumePoint:
    """Where a checkpoint stands: optimizer steps taken, and the epoch / micro-batches of it already trained."""

    directory: str  # folder name under proj_dir/checkpoints
    step: int
    epoch: int
    batch: int
    world_size: int
    deepspeed: bool
    run_key: dict  # the settings a resume must share with the run that wrote the checkpoint

    def path(self, proj_dir) -> Path:
        return Path(proj_dir) / CHECKPOINT_DIR / self.directory


def read_resume_point(proj_dir) -> Optional[ResumePoint]:
    """The latest complete checkpoint of proj_dir, or None when there is none."""
    latest = Path(proj_dir) / CHECKPOINT_DIR / LATEST_FILE
    if not latest.is_file():
        return None
    try:
        point = ResumePoint(**json.loads(latest.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{latest} is unreadable ({error}); delete {latest.parent} or pass --fresh") from None
    if not point.path(proj_dir).is_dir():
        raise ValueError(f"{latest} names {point.directory}, which is missing; delete {latest.parent} or pass --fresh")
    return point


def remove_checkpoints(proj_dir, keep: Optional[str] = None) -> None:
    """Delete checkpoint folders other than `keep` (leftovers of killed runs, or superseded ones)."""
    root = Path(proj_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith("step-") and child.name != keep:
            shutil.rmtree(child, ignore_errors=True)


def restore_training_state(trainer: pl.Trainer, module, point: ResumePoint, proj_dir) -> None:
    """Load trainable tensors, optimizer state and rng of `point` into a freshly set-up run (every rank)."""
    folder = point.path(proj_dir)
    if point.deepspeed:
        engine = trainer.strategy.deepspeed_engine
        loaded, _ = engine.load_checkpoint(str(folder), tag="ds", load_module_strict=False,
                                           load_optimizer_states=True, load_lr_scheduler_states=False)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
    else:
        state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
        params = dict(module.model.named_parameters())
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                params[name].copy_(tensor)
        trainer.optimizers[0].load_state_dict(state["optimizer"])
    rng_file = folder / f"rng-rank{trainer.global_rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


class CheckpointAndSave(Callback):
    """Writes the resumable checkpoint (every save_every_steps optimizer steps and at every epoch end) and the
    adapter or full-model files (every epoch_save epochs and at the end); restores a checkpoint at train start."""

    def __init__(self, proj_dir, run_key: dict, peft: bool, epoch_save: int, epoch_begin: int, epoch_count: int,
                 epoch_steps: int, save_every_steps: int, accumulate: int, resume: Optional[ResumePoint] = None,
                 adapter_extra: Optional[dict] = None, dump_rank_state: bool = False):
        self.proj_dir = Path(proj_dir)
        self.run_key = run_key
        self.peft = peft
        self.epoch_save = epoch_save
        self.epoch_begin = epoch_begin
        self.epoch_count = epoch_count
        self.epoch_steps = epoch_steps
        self.save_every_steps = save_every_steps
        self.accumulate = accumulate
        self.resume = resume
        self.adapter_extra = dict(adapter_extra or {})
        self.dump_rank_state = dump_rank_state
        self.last_saved_step = resume.step if resume else None
        self.saved_files = []  # model/adapter files written, in order (rank 0)

    # -- hooks --
    def on_train_start(self, trainer, pl_module):
        if self.resume is not None:
            restore_training_state(trainer, pl_module, self.resume, self.proj_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % self.accumulate:
            return  # mid accumulation: the optimizer has not stepped
        step = pl_module.optimizer_step_count
        done = pl_module.batches_before(batch_idx) + 1
        # The epoch's last step is checkpointed by on_train_epoch_end, after that epoch's files are written.
        if self.save_every_steps and step % self.save_every_steps == 0 and done < self.epoch_steps:
            self.save_checkpoint(trainer, pl_module, step, pl_module.absolute_epoch, done)

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = pl_module.absolute_epoch
        index = epoch - self.epoch_begin
        last = index == self.epoch_count - 1
        if (self.epoch_save > 0 and index % self.epoch_save == 0) or last:
            path = self.save_weights(trainer, pl_module, str(epoch), epoch)
            if last and path is not None:  # before the checkpoint that marks the run finished
                final = path.with_name(path.name.replace(f"-{epoch}.pth", "-final.pth"))
                self.saved_files.append(str(copy_atomic(path, final)))
        self.save_checkpoint(trainer, pl_module, pl_module.optimizer_step_count, epoch + 1, 0)

    def on_train_end(self, trainer, pl_module):
        if self.dump_rank_state:
            tensors = {n: t.float().cpu().clone() for n, t in trainable_tensors(pl_module.model).items()}
            torch.save(tensors, self.proj_dir / f"rank{trainer.global_rank}-trainable.pt")

    # -- writers --
    def save_checkpoint(self, trainer, pl_module, step: int, epoch: int, batch: int) -> None:
        """Write checkpoints/step-NNNNNNNN on every rank, then point latest.json at it (rank 0)."""
        if step == self.last_saved_step:
            return
        strategy = trainer.strategy
        name = f"step-{step:08d}"
        folder = self.proj_dir / CHECKPOINT_DIR / name
        if trainer.is_global_zero:
            shutil.rmtree(folder, ignore_errors=True)  # a partial folder left by a killed run
            folder.mkdir(parents=True)
        strategy.barrier("checkpoint-folder")
        deepspeed = hasattr(strategy, "deepspeed_engine")
        if deepspeed:
            strategy.deepspeed_engine.save_checkpoint(str(folder), tag="ds", client_state={}, save_latest=False,
                                                      exclude_frozen_parameters=True)
        elif trainer.is_global_zero:
            state = {"trainable": {n: t.cpu().clone() for n, t in trainable_tensors(pl_module.model).items()},
                     "optimizer": trainer.optimizers[0].state_dict()}
            torch.save(state, folder / "trainer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, folder / f"rng-rank{trainer.global_rank}.pt")
        strategy.barrier("checkpoint-written")
        if trainer.is_global_zero:
            point = ResumePoint(directory=name, step=step, epoch=epoch, batch=batch, world_size=trainer.world_size,
                                deepspeed=deepspeed, run_key=self.run_key)
            write_text_atomic(json.dumps(asdict(point), indent=1), self.proj_dir / CHECKPOINT_DIR / LATEST_FILE)
            remove_checkpoints(self.proj_dir, keep=name)
        strategy.barrier("checkpoint-done")
        self.last_saved_step = step

    def save_weights(self, trainer, pl_module, tag: str, epoch: int) -> Optional[Path]:
        """adapter-{tag}.pth (save_adapter) or, for a full fine-tune, rwkv-{tag}.pth in the official layout;
        returns the path on rank 0 (None on the other ranks)."""
        model = pl_module.model
        params = [p for p in model.parameters() if p.requires_grad or not self.peft]
        with gathered_parameters(trainer, params):
            if not trainer.is_global_zero:
                return None
            if self.peft:
                from src.peft import save_adapter

                extra = dict(self.adapter_extra, epoch=epoch, step=pl_module.optimizer_step_count)
                path = save_adapter(model, self.proj_dir / f"adapter-{tag}.pth", extra=extra)
            else:
                from src.checkpoint import save_official

                path = save_official(model, self.proj_dir / f"rwkv-{tag}.pth")
        self.saved_files.append(str(path))
        return Path(path)


# ---- progress and metrics ---------------------------------------------------------------------------------------
class ProgressTracker(Callback):
    """Per optimizer step: loss (mean over micro-batches and ranks), lr, kt/s, peak memory -> metrics.csv,
    TensorBoard, the progress bar, and (when stderr is not a terminal) a log line every print_every steps."""

    def __init__(self, proj_dir, tokens_per_step: int, accumulate: int, resume_step: int = 0,
                 print_every: int = 0, use_tensorboard: bool = True):
        self.proj_dir = Path(proj_dir)
        self.tokens_per_step = tokens_per_step
        self.accumulate = accumulate
        self.resume_step = resume_step
        self.print_every = print_every
        self.use_tensorboard = use_tensorboard
        self.latest = {}
        self.last_loss = None
        self.started = None
        self.step_started = None
        self.csv_handle = None
        self.tensorboard = None

    def on_train_start(self, trainer, pl_module):
        self.started = self.step_started = time.perf_counter()
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        if not trainer.is_global_zero:
            return
        path = self.proj_dir / METRICS_FILE
        kept = [r for r in read_metrics(path) if r["step"] <= self.resume_step] if self.resume_step else []
        self.csv_handle = open(path, "w", newline="", encoding="utf-8")
        writer = csv.writer(self.csv_handle)
        writer.writerow(METRIC_COLUMNS)
        for row in kept:
            writer.writerow([row[c] for c in METRIC_COLUMNS])
        self.csv_handle.flush()
        if self.use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tensorboard = None
            else:
                self.tensorboard = SummaryWriter(str(self.proj_dir / "tb"), purge_step=self.resume_step + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % self.accumulate:
            return
        loss = pl_module.pop_step_loss()  # a collective when there are several ranks: every rank calls it
        now = time.perf_counter()
        seconds, self.step_started = now - self.step_started, now
        if not trainer.is_global_zero or loss is None:
            return
        step = pl_module.optimizer_step_count
        row = {
            "step": step,
            "epoch": pl_module.absolute_epoch,
            "batch": pl_module.batches_before(batch_idx) + 1,
            "loss": loss,
            "lr": pl_module.current_lr,
            "tokens": step * self.tokens_per_step,
            "kt_s": self.tokens_per_step / max(seconds, 1e-9) / 1000,
            "peak_mem_gb": peak_memory_gb(trainer.strategy.root_device),
            "elapsed_s": now - self.started,
        }
        self.last_loss = loss
        csv.writer(self.csv_handle).writerow([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]
                                              for c in METRIC_COLUMNS])
        self.csv_handle.flush()
        if self.tensorboard is not None:
            for key in ("loss", "lr", "kt_s", "peak_mem_gb"):
                self.tensorboard.add_scalar(key, row[key], step)
        self.latest = {"loss": f"{loss:.4f}", "lr": f"{row['lr']:.3g}", "kt/s": f"{row['kt_s']:.2f}",
                       "mem": f"{row['peak_mem_gb']:.2f}G"}
        if self.print_every and step % self.print_every == 0:
            print(f"step {step} epoch {row['epoch']} | loss {loss:.4f} | lr {row['lr']:.3g} | "
                  f"{row['kt_s']:.2f} kt/s | peak mem {row['peak_mem_gb']:.2f} GB", flush=True)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            plot_loss(read_metrics(self.proj_dir / METRICS_FILE), self.proj_dir / LOSS_PLOT)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.close()
            plot_loss(read_metrics(self.proj_dir / METRICS_FILE), self.proj_dir / LOSS_PLOT)

    def on_exception(self, trainer, pl_module, exception):
        self.close()

    def close(self):
        if self.csv_handle is not None:
            self.csv_handle.close()
            self.csv_handle = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


class RWKVProgressBar(TQDMProgressBar):
    """Lightning's bar showing the tracker's loss, lr, kt/s and peak memory."""

    def __init__(self, tracker: ProgressTracker, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.tracker = tracker

    def get_metrics(self, trainer, pl_module):
        return dict(self.tracker.latest)

