"""What a run shows: per-step metrics (metrics.csv, TensorBoard when installed, the progress bar or a log line)
and the loss curve.

    metrics.csv     one row per optimizer step: step, epoch, loss, lr, tokens, kt_s, peak_mem_gb, ...
    loss.png        loss curve (matplotlib, Agg), redrawn at every epoch end and at the end
    tb/             TensorBoard scalars, when the tensorboard package is installed
    W&B             the same scalars to a Weights & Biases project with --wandb PROJECT (wandb must be installed)
"""
import csv
import errno
import io
import resource
import time
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback, TQDMProgressBar

from src.checkpoint.files import disk_full_error, is_disk_full, write_text_atomic
from src.train.plots import LOSS_PLOT, METRIC_COLUMNS, METRICS_FILE, plot_loss, read_metrics


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU, the peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


class ProgressTracker(Callback):
    """Per optimizer step: loss (mean over micro-batches and ranks), lr, kt/s, peak memory -> metrics.csv,
    TensorBoard, the progress bar, and (when stdout is not a terminal) a log line every print_every steps."""

    def __init__(self, proj_dir, tokens_per_step: int, accumulate: int, resume_step: int = 0,
                 print_every: int = 0, use_tensorboard: bool = True, wandb_project=None, run_settings=None):
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
        self.wandb_project = wandb_project
        self.run_settings = dict(run_settings or {})
        self.wandb_run = None

    def on_train_start(self, trainer, pl_module):
        self.started = self.step_started = time.perf_counter()
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        if not trainer.is_global_zero:
            return
        path = self.proj_dir / METRICS_FILE
        kept = [r for r in read_metrics(path) if r["step"] <= self.resume_step] if self.resume_step else []
        # The history up to the resume point is rewritten beside the file and renamed over it: a kill during the
        # rewrite leaves the old file whole. Rows of the new steps are then appended.
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(METRIC_COLUMNS)
        for row in kept:
            writer.writerow([row[c] for c in METRIC_COLUMNS])
        write_text_atomic(text.getvalue(), path)
        self.csv_handle = open(path, "ab", buffering=0)  # one write per row: a failed one is cut off whole
        if self.use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tensorboard = None
            else:
                self.tensorboard = SummaryWriter(str(self.proj_dir / "tb"), purge_step=self.resume_step + 1)
        if self.wandb_project:
            import wandb  # planning checked that it is installed

            self.wandb_run = wandb.init(project=self.wandb_project, config=self.run_settings, dir=str(self.proj_dir))

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
        line = io.StringIO(newline="")
        csv.writer(line).writerow([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in METRIC_COLUMNS])
        self.append_row(line.getvalue().encode("utf-8"))
        if self.tensorboard is not None:
            for key in ("loss", "lr", "kt_s", "peak_mem_gb"):
                self.tensorboard.add_scalar(key, row[key], step)
        if self.wandb_run is not None:
            self.wandb_run.log({key: row[key] for key in ("loss", "lr", "kt_s", "peak_mem_gb", "tokens")}, step=step)
        self.latest = {"loss": f"{loss:.4f}", "lr": f"{row['lr']:.3g}", "kt/s": f"{row['kt_s']:.2f}",
                       "mem": f"{row['peak_mem_gb']:.2f}G"}
        if self.print_every and step % self.print_every == 0:
            print(f"step {step} epoch {row['epoch']} | loss {loss:.4f} | lr {row['lr']:.3g} | "
                  f"{row['kt_s']:.2f} kt/s | peak mem {row['peak_mem_gb']:.2f} GB", flush=True)

    def append_row(self, data: bytes) -> None:
        """Append one row to metrics.csv; on a full disk the partial row is cut off again (DiskFullError)."""
        start = self.csv_handle.tell()
        try:
            written = self.csv_handle.write(data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
        except OSError as error:
            self.csv_handle.truncate(start)
            if is_disk_full(error, self.proj_dir):
                raise disk_full_error(f"a row of {METRICS_FILE}", self.proj_dir) from error
            raise

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
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


class RWKVProgressBar(TQDMProgressBar):
    """Lightning's bar showing the tracker's loss, lr, kt/s and peak memory."""

    def __init__(self, tracker: ProgressTracker, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.tracker = tracker

    def get_metrics(self, trainer, pl_module):
        return dict(self.tracker.latest)
