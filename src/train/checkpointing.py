"""What a run saves: the resumable checkpoint (every --save_every_steps steps and at every epoch end) and the
adapter or full-model files (adapter-{epoch}.pth / rwkv-{epoch}.pth every --epoch_save epochs, *-final.pth at the
end), and restoring a checkpoint when a run resumes.

Every file is written to a temporary name and renamed into place. A checkpoint folder becomes the latest only
after every rank finished writing it (its point.json, with a manifest of its files, is written last), so a run
killed at any moment resumes from a complete checkpoint. Which checkpoints are kept, and when one counts as
known good, is src/train/resume.py's business.

SIGTERM (what schedulers send before killing a job): in a one-process run Lightning stops at the next micro-batch
boundary, and this callback then writes a checkpoint at the last optimizer step taken (the micro-batches of an
unfinished gradient accumulation are trained again on resume). With several processes a signal handler that only
takes note replaces Lightning's (which runs a collective inside the handler and can leave the ranks waiting on
each other for good); at the end of every optimizer step the ranks agree (one all-reduce of a flag) whether any
of them got SIGTERM, and if so all of them write the checkpoint of that step together and stop. train() then
reports the run as interrupted (TrainingInterrupted). Ctrl-C (SIGINT) is reported the same way, but saves
nothing: it interrupts wherever the process is, so the run continues from its latest checkpoint.
"""
import contextlib
import shutil
import signal
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from src.checkpoint.files import copy_atomic, disk_full_error, is_disk_full
from src.checkpoint.io import save_official
from src.peft import save_adapter, save_state, time_states
from src.train.resume import (
    CHECKPOINT_DIR,
    ResumePoint,
    checkpoints_to_keep,
    folder_manifest,
    mark_verified,
    remove_checkpoints,
    write_point,
)


class TrainingInterrupted(Exception):
    """The run stopped on SIGTERM or Ctrl-C (`signal_name`); the message says which checkpoint it continues from."""

    def __init__(self, message: str, signal_name: str = "SIGTERM"):
        super().__init__(message)
        self.signal_name = signal_name


class CheckpointLoadError(RuntimeError):
    """A checkpoint that passed the planning checks still failed to load."""


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


def rng_state() -> dict:
    """This process's torch (and CUDA) random number generator states."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def trainable_weights_finite(trainer: pl.Trainer, model: torch.nn.Module) -> bool:
    """Whether every trainable weight is finite on every rank (a collective: every rank calls it). ZeRO-3
    partitions are checked where they live."""
    bad = 0.0
    for param in model.parameters():
        if not param.requires_grad:
            continue
        local = getattr(param, "ds_tensor", None)
        local = param if local is None else local
        if local.numel() and not bool(torch.isfinite(local.detach()).all()):
            bad = 1.0
            break
    flag = torch.tensor(bad, device=trainer.strategy.root_device)
    if trainer.world_size > 1:
        flag = trainer.strategy.reduce(flag, reduce_op="sum")
    return float(flag) == 0.0


def restore_training_state(trainer: pl.Trainer, module, point: ResumePoint, proj_dir) -> None:
    """Load trainable tensors, optimizer state and rng of `point` into a freshly set-up run (every rank)."""
    try:
        _restore_training_state(trainer, module, point, proj_dir)
    except Exception as error:
        raise CheckpointLoadError(
            f"checkpoint {point.path(proj_dir)} could not be loaded ({type(error).__name__}: {error}); delete that "
            f"folder so the next run falls back to the checkpoint before it, or pass --fresh") from error


def _restore_training_state(trainer: pl.Trainer, module, point: ResumePoint, proj_dir) -> None:
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
                 adapter_extra: Optional[dict] = None):
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
        self.last_saved_step = resume.step if resume else None
        self.last_saved = (resume.directory, resume.verified) if resume else None  # (folder, known good)
        self.saved_files = []  # model/adapter files written, in order (rank 0)
        self.boundary = None  # (step, epoch, batch, rng) at the last optimizer step taken
        self.finished = False  # the last epoch's files and checkpoint are written
        self.interruption = None  # what on_exception did on SIGTERM or Ctrl-C (a message), else None
        self.interrupted_by = None  # "SIGTERM" or "SIGINT"
        self.sigterm_noted = False  # several processes: this rank got SIGTERM (see note_sigterm)
        self.stop_agreed = False  # several processes: the ranks agreed to stop for a SIGTERM

    # -- hooks --
    def note_sigterm(self, signum, frame):
        """SIGTERM handler of a several-process run: a note read at the next optimizer step, nothing more."""
        self.sigterm_noted = True

    def sigterm_agreed(self, trainer) -> bool:
        """Whether any rank got SIGTERM (a collective: every rank calls it at the same optimizer step)."""
        flag = torch.tensor(1.0 if self.sigterm_noted else 0.0, device=trainer.strategy.root_device)
        return float(trainer.strategy.reduce(flag, reduce_op="sum")) > 0

    def on_train_start(self, trainer, pl_module):
        if trainer.world_size > 1:  # Lightning registered its handler just before this hook
            signal.signal(signal.SIGTERM, self.note_sigterm)
        if self.resume is not None:
            restore_training_state(trainer, pl_module, self.resume, self.proj_dir)
            self.boundary = (self.resume.step, self.resume.epoch, self.resume.batch, rng_state())
        else:
            self.boundary = (0, self.epoch_begin, 0, rng_state())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % self.accumulate:
            return  # mid accumulation: the optimizer has not stepped
        step = pl_module.optimizer_step_count
        done = pl_module.batches_before(batch_idx) + 1
        # Every loss of this step was finite (a non-finite one stops the run before the step), and it was computed
        # from the weights of the checkpoint written one step ago: that checkpoint is now known good.
        if self.last_saved is not None and not self.last_saved[1] and self.last_saved_step == step - 1:
            if trainer.is_global_zero:
                mark_verified(self.proj_dir, self.last_saved[0])
            self.last_saved = (self.last_saved[0], True)
        self.boundary = (step, pl_module.absolute_epoch, done, rng_state())
        # The epoch's last step is checkpointed by on_train_epoch_end, after that epoch's files are written.
        if self.save_every_steps and step % self.save_every_steps == 0 and done < self.epoch_steps:
            self.save_checkpoint(trainer, pl_module, step, pl_module.absolute_epoch, done)
        elif trainer.received_sigterm and trainer.world_size == 1 and done < self.epoch_steps:
            # Lightning stops after this batch: checkpoint now, at a step boundary, with the rng of this moment.
            self.save_checkpoint(trainer, pl_module, step, pl_module.absolute_epoch, done)
        if trainer.world_size > 1 and not self.stop_agreed and self.sigterm_agreed(trainer):
            self.stop_agreed = True
            if done < self.epoch_steps:  # else on_train_epoch_end stops, after the epoch's files and checkpoint
                self.save_checkpoint(trainer, pl_module, step, pl_module.absolute_epoch, done)
                raise SIGTERMException()

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):
            self.interrupted_by = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            self.interrupted_by = "SIGINT"
        else:
            return
        name = "SIGTERM" if self.interrupted_by == "SIGTERM" else "Ctrl-C (SIGINT)"
        step, epoch, batch, rng = self.boundary or (None, None, None, None)
        if self.finished:
            self.interruption = f"{name} arrived after the last step; every file of the run is written"
            return
        # SIGTERM only: Lightning stops for it between micro-batches, while Ctrl-C raises wherever the process
        # is (an optimizer step half applied, say). And one process only: with several, the ranks stop at
        # different points and a checkpoint's collectives could not meet; they continue from the last periodic
        # checkpoint (--save_every_steps).
        if (self.interrupted_by == "SIGTERM" and trainer.world_size == 1 and step is not None
                and step == pl_module.optimizer_step_count and step != self.last_saved_step):
            self.save_checkpoint(trainer, pl_module, step, epoch, batch, rng=rng)
        if self.last_saved_step is not None:
            folder = self.proj_dir / CHECKPOINT_DIR / f"step-{self.last_saved_step:08d}"
            saved = ("the checkpoint of that step is saved" if self.last_saved_step == pl_module.optimizer_step_count
                     else f"the latest checkpoint is step {self.last_saved_step} (the steps after it are trained "
                          f"again)")
            self.interruption = (f"interrupted by {name} at optimizer step {pl_module.optimizer_step_count}; "
                                 f"{saved}: {folder}. Rerun the same command to continue from it")
        else:
            self.interruption = (f"interrupted by {name} before the first optimizer step; nothing to continue "
                                 f"from, rerun the same command to start again")

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
        self.boundary = (pl_module.optimizer_step_count, epoch + 1, 0, rng_state())
        self.finished = last
        if self.stop_agreed and not last:
            raise SIGTERMException()

    # -- writers --
    def save_checkpoint(self, trainer, pl_module, step: int, epoch: int, batch: int, rng: Optional[dict] = None):
        """Write checkpoints/step-NNNNNNNN on every rank, then its point.json and latest.json (rank 0), and drop
        the checkpoints no longer kept. rng: the generator states to store (default: this moment's)."""
        if step == self.last_saved_step:
            return
        finite = trainable_weights_finite(trainer, pl_module.model)
        strategy = trainer.strategy
        name = f"step-{step:08d}"
        folder = self.proj_dir / CHECKPOINT_DIR / name
        if trainer.is_global_zero:
            shutil.rmtree(folder, ignore_errors=True)  # a partial folder left by a killed run
            folder.mkdir(parents=True)
        strategy.barrier("checkpoint-folder")
        deepspeed = hasattr(strategy, "deepspeed_engine")
        try:
            if deepspeed:
                strategy.deepspeed_engine.save_checkpoint(str(folder), tag="ds", client_state={}, save_latest=False,
                                                          exclude_frozen_parameters=True)
            elif trainer.is_global_zero:
                state = {"trainable": {n: t.cpu().clone() for n, t in trainable_tensors(pl_module.model).items()},
                         "optimizer": trainer.optimizers[0].state_dict()}
                torch.save(state, folder / "trainer.pt")
            torch.save(rng if rng is not None else rng_state(), folder / f"rng-rank{trainer.global_rank}.pt")
        except Exception as error:
            if not is_disk_full(error, folder):
                raise
            shutil.rmtree(folder, ignore_errors=True)  # incomplete (no point.json): never resumed, only in the way
            latest = (f"the latest complete checkpoint is still step-{self.last_saved_step:08d}"
                      if self.last_saved_step is not None else "no checkpoint had been completed yet")
            raise disk_full_error(f"checkpoint {name} ({latest})", folder.parent) from error
        strategy.barrier("checkpoint-written")
        if trainer.is_global_zero:
            point = ResumePoint(directory=name, step=step, epoch=epoch, batch=batch, world_size=trainer.world_size,
                                deepspeed=deepspeed, run_key=self.run_key, manifest=folder_manifest(folder),
                                weights_finite=finite)
            write_point(self.proj_dir, point)
            remove_checkpoints(self.proj_dir, keep=checkpoints_to_keep(self.proj_dir, name))
        strategy.barrier("checkpoint-done")
        self.last_saved_step = step
        self.last_saved = (name, False)

    def save_weights(self, trainer, pl_module, tag: str, epoch: int) -> Optional[Path]:
        """adapter-{tag}.pth (save_adapter), state-{tag}.pth for state tuning (save_state: the layout RWKV tools
        read) or, for a full fine-tune, rwkv-{tag}.pth in the official layout; returns the path on rank 0 (None on
        the other ranks)."""
        model = pl_module.model
        params = [p for p in model.parameters() if p.requires_grad or not self.peft]
        with gathered_parameters(trainer, params):
            if not trainer.is_global_zero:
                return None
            if self.peft and time_states(model):
                path = save_state(model, self.proj_dir / f"state-{tag}.pth")
            elif self.peft:
                extra = dict(self.adapter_extra, epoch=epoch, step=pl_module.optimizer_step_count)
                path = save_adapter(model, self.proj_dir / f"adapter-{tag}.pth", extra=extra)
            else:
                path = save_official(model, self.proj_dir / f"rwkv-{tag}.pth")
        self.saved_files.append(str(path))
        return Path(path)
