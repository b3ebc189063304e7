"""The Lightning wiring of a planned run: module, callbacks, strategy and Trainer, then fit."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from src.train.checkpointing import CheckpointAndSave, TrainingInterrupted
from src.train.metrics import ProgressTracker, RWKVProgressBar
from src.train.module import OptimizerSpec, RWKVTrainModule
from src.train.plan import TrainingPlan, TrainSetupError, build_model
from src.train.report import end_summary, start_summary
from src.train.resume import checkpoints_to_keep, move_previous_run, remove_checkpoints
from src.train.schedule import LRSchedule
from src.train.strategy import StrategySpec, build_strategy

LIGHTNING_PRECISION = {"fp32": "32-true", "tf32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


CHILD_RANK_WAIT_S = 300


def wait_for_child_ranks(trainer) -> None:
    """The ranks Lightning's launcher started as child processes of this one end before it does (none is left
    behind); one still running after CHILD_RANK_WAIT_S is killed."""
    for process in getattr(trainer.strategy.launcher, "procs", None) or []:
        try:
            process.wait(timeout=CHILD_RANK_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def train(plan: TrainingPlan, rank_zero: bool, extra_callbacks=()) -> int:
    """Train to the end of the plan's schedule (resuming where its checkpoint stands); 0 when done.
    TrainingInterrupted on SIGTERM (after a checkpoint, see src/train/checkpointing.py), NonFiniteLossError on a
    NaN or infinite loss, TrainSetupError for a setup problem found only with the weights loaded.

    rank_zero: whether this process is the launcher's global rank 0 (it prints and prepares --proj_dir).
    extra_callbacks: Lightning callbacks added after the run's own (tests observe the engine through them).
    """
    cfg = plan.cfg
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if plan.accelerator == "gpu":
        torch.backends.cuda.matmul.allow_tf32 = plan.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = plan.precision != "fp32"
    pl.seed_everything(cfg.seed, verbose=False)

    try:
        model, adapted = build_model(plan)
    except TrainSetupError:
        raise
    except ValueError as error:  # planning checks the adapter on the meta device; this is a safety net
        raise TrainSetupError(str(error)) from None
    point = plan.resume_point
    start_epoch = point.epoch if point else cfg.epoch_begin
    epochs_left = cfg.epoch_begin + cfg.epoch_count - start_epoch
    if epochs_left <= 0:
        if rank_zero:
            print(f"{cfg.proj_dir}: training already finished (checkpoint at step {point.step}, epoch "
                  f"{point.epoch - 1} done); its files are in {os.path.abspath(cfg.proj_dir)}")
        return 0
    if rank_zero:
        Path(cfg.proj_dir).mkdir(parents=True, exist_ok=True)
        if cfg.fresh:
            moved = move_previous_run(cfg.proj_dir)
            if moved is not None:
                print(f"--fresh: moved the earlier run's outputs in {cfg.proj_dir} into {moved}/ (delete that folder "
                      f"when it is not needed)", flush=True)
        remove_checkpoints(cfg.proj_dir, keep=checkpoints_to_keep(cfg.proj_dir, point.directory if point else None))
        print(start_summary(plan, model, adapted), flush=True)

    on_gpu = plan.accelerator == "gpu"
    offload = cfg.strategy.endswith("_offload")
    optimizer_spec = OptimizerSpec(
        name=cfg.optim, lr=cfg.lr_init, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay, layerwise_lr=bool(cfg.layerwise_lr),
        use_fused_adam=on_gpu and cfg.uses_deepspeed and not offload,
        use_cpu_adam=on_gpu and cfg.uses_deepspeed and offload,
    )
    schedule = LRSchedule(cfg.lr_init, cfg.lr_final, cfg.total_steps, cfg.warmup_steps, cfg.lr_schedule)
    module = RWKVTrainModule(
        model, plan.dataset, schedule, optimizer_spec, micro_bsz=cfg.micro_bsz, start_epoch=start_epoch,
        step_offset=point.step if point else 0, start_batch=point.batch if point else 0,
        num_workers=1 if on_gpu else 0, chunk_ctx=cfg.chunk_ctx,
    )
    tty = sys.stdout.isatty()  # Lightning's progress bar writes to stdout; logs get plain lines instead
    tracker = ProgressTracker(
        cfg.proj_dir, tokens_per_step=cfg.ctx_len * cfg.micro_bsz * cfg.accumulate_grad_batches * cfg.world_size,
        accumulate=cfg.accumulate_grad_batches, resume_step=point.step if point else 0,
        print_every=0 if tty else max(1, cfg.steps_per_epoch // 10), wandb_project=cfg.wandb,
        run_settings={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str))},
    )
    adapter_extra = {"train_args": {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str))}}
    saver = CheckpointAndSave(
        cfg.proj_dir, plan.run_key, peft=plan.peft_config is not None, epoch_save=cfg.epoch_save,
        epoch_begin=cfg.epoch_begin, epoch_count=cfg.epoch_count, epoch_steps=cfg.epoch_steps,
        save_every_steps=cfg.save_every_steps, accumulate=cfg.accumulate_grad_batches, resume=point,
        adapter_extra=adapter_extra,
    )
    callbacks = [tracker, saver] + ([RWKVProgressBar(tracker)] if tty else []) + list(extra_callbacks)
    strategy = build_strategy(StrategySpec(name=cfg.strategy, accelerator=plan.accelerator,
                                           micro_bsz=cfg.micro_bsz, ds_bucket_mb=cfg.ds_bucket_mb,
                                           torch_optimizer_with_offload=not on_gpu))
    trainer = pl.Trainer(
        accelerator=plan.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy,
        precision=LIGHTNING_PRECISION[plan.precision], max_epochs=epochs_left,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val if cfg.gradient_clip_val > 0 else None,
        logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=tty,
        use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=callbacks, default_root_dir=cfg.proj_dir,
    )
    started = time.perf_counter()
    try:
        trainer.fit(module)
    except SystemExit as stop:  # SIGTERMException, or Lightning's exit after Ctrl-C
        if saver.interrupted_by is None and not isinstance(stop, SIGTERMException):
            raise
        wait_for_child_ranks(trainer)
        if not saver.finished:
            raise TrainingInterrupted(saver.interruption or "interrupted", saver.interrupted_by or "SIGTERM") from None
        if trainer.is_global_zero:
            print(saver.interruption, flush=True)
    if trainer.is_global_zero:
        print(end_summary(plan, saver.saved_files, tracker.last_loss, time.perf_counter() - started), flush=True)
    return 0
