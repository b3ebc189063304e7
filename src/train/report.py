"""What train.py prints: the dry run's table, the start summary and the end summary."""
import importlib.util
import json
import os
from pathlib import Path

import torch

from src.peft import StateConfig, format_peft_table, peft_config_from_flags, peft_summary, time_states
from src.train.args import QUICKSTART_HINT, TrainConfig
from src.train.plan import (
    TrainingPlan,
    TrainSetupError,
    apply_adapters,
    arch_of,
    count_parameters,
    model_class_of,
    model_config_for,
)
from src.train.plots import LOSS_PLOT, METRICS_FILE
from src.train.resume import CHECKPOINT_DIR, read_resume_point


def describe_model(config) -> str:
    if arch_of(config) == "x070":
        return (f"RWKV-7 (x070) L{config.n_layer} D{config.n_embd} F{config.dim_ffn} vocab {config.vocab_size} "
                f"heads {config.n_head}x{config.head_size} mini-LoRA w{config.dim_w_lora} a{config.dim_a_lora} "
                f"v{config.dim_v_lora} g{config.dim_g_lora}")
    return (f"RWKV6 L{config.n_layer} D{config.n_embd} F{config.dim_ffn} vocab {config.vocab_size} heads "
            f"{config.n_head}x{config.head_size}")


def describe_method(cfg: TrainConfig, peft_config) -> str:
    if peft_config is None:
        return "full fine-tune (every weight trains)"
    if isinstance(peft_config, StateConfig):
        return "state tuning (a trained initial WKV state per layer; every weight frozen)"
    settings = ", ".join(f"{k}={v}" for k, v in peft_config.to_dict().items() if k != "method")
    if cfg.init_adapter:
        return f"{peft_config.method} ({settings}) | starting from --init_adapter {cfg.init_adapter} (its trainables)"
    parts = cfg.train_parts.strip() or "none"
    return f"{peft_config.method} ({settings}) | train_parts {parts}"


def dry_run(cfg: TrainConfig) -> int:
    """Meta-device model + adapter: print the table, then the JSON counts as the last stdout line."""
    if cfg.load_model and not os.path.isfile(cfg.load_model):
        raise TrainSetupError(f"--load_model file not found: {cfg.load_model}. {QUICKSTART_HINT}")
    peft_config = peft_config_from_flags(cfg)
    config = model_config_for(cfg)
    with torch.device("meta"):
        model = model_class_of(config)(config)
    adapted = apply_adapters(model, cfg, peft_config)
    trainable, total = count_parameters(model)
    print(f"model     {describe_model(config)}, {total:,} parameters "
          f"({'shapes from ' + cfg.load_model if cfg.load_model else 'from the shape flags'}; meta device)")
    print(f"method    {describe_method(cfg, peft_config)}")
    if adapted:
        print(format_peft_table(peft_summary(model)))
    print_state_line(model)
    print(f"trainable {trainable:,} of {total:,} ({100.0 * trainable / total:.3f}%)")
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        print(f"note      --wandb {cfg.wandb}: the wandb package is not installed, so a training run would stop "
              f"here: pip install wandb (or drop --wandb)")
    summary = {"trainable": trainable, "total": total, "adapted_modules": len(adapted), "method": cfg.peft,
               "chunk_ctx": cfg.chunk_ctx, "time_state": sum(t.numel() for t in time_states(model).values()),
               "peft_config": peft_config.to_dict() if peft_config else None,
               "train_parts": cfg.train_parts.strip(), "arch": arch_of(config), "n_layer": config.n_layer,
               "n_embd": config.n_embd,
               "vocab_size": config.vocab_size, "dim_ffn": config.dim_ffn}
    print(json.dumps(summary), flush=True)
    return 0


def describe_states(model) -> str:
    """'L x [H, N, N] time_state = n parameters' of a state-tuned model ('' for any other)."""
    states = list(time_states(model).values())
    if not states:
        return ""
    shape = ", ".join(str(d) for d in states[0].shape)
    return f"{len(states)} x [{shape}] time_state = {sum(t.numel() for t in states):,} trainable parameters"


def print_state_line(model) -> None:
    line = describe_states(model)
    if line:
        print(f"state     {line}")


def start_summary(plan: TrainingPlan, model, adapted) -> str:
    cfg = plan.cfg
    trainable, total = count_parameters(model)
    source = f"from {cfg.load_model}" if cfg.load_model else f"new model, official init (seed {cfg.seed})"
    global_batch = cfg.micro_bsz * cfg.accumulate_grad_batches * cfg.world_size
    point = plan.resume_point
    if point is None:
        start = "fresh start"
    else:
        start = (f"resuming {CHECKPOINT_DIR}/{point.directory} (step {point.step}, epoch {point.epoch}, "
                 f"micro-batch {point.batch})")
    warmup = max(cfg.warmup_steps, 0)
    lines = [
        "=" * 100,
        f"model     {describe_model(plan.model_config)} | {total:,} params | {source}",
        f"method    {describe_method(cfg, plan.peft_config)}"
        + (f" | {len(adapted)} adapted modules" if adapted else "")
        + (f" | {describe_states(model)}" if time_states(model) else ""),
        f"trainable {trainable:,} of {total:,} ({100.0 * trainable / total:.3f}%)",
        f"data      {plan.dataset.summary()}",
        f"batch     micro_bsz {cfg.micro_bsz} x accumulate {cfg.accumulate_grad_batches} x {cfg.world_size} "
        f"process(es) = {global_batch} samples/step, ctx_len {cfg.ctx_len} -> {global_batch * cfg.ctx_len:,} "
        f"tokens/step" + (f" | in chunks of {cfg.chunk_ctx} tokens, state carried" if cfg.chunk_ctx else ""),
        f"schedule  {cfg.epoch_steps} micro-batches/epoch = {cfg.steps_per_epoch} steps x {cfg.epoch_count} epochs "
        f"(from epoch {cfg.epoch_begin}) = {cfg.total_steps} steps | lr {cfg.lr_init:g} -> {cfg.lr_final:g} "
        f"({cfg.lr_schedule}), warmup {warmup} | {cfg.optim} betas ({cfg.beta1}, {cfg.beta2}) eps {cfg.adam_eps:g} "
        f"wd {cfg.weight_decay:g} | clip {cfg.gradient_clip_val:g}",
        f"engine    {cfg.strategy} | {plan.accelerator}, {cfg.devices} device(s) x {cfg.num_nodes} node(s) | precision "
        f"{plan.precision} | wkv op {plan.wkv_op} | grad_cp {cfg.grad_cp}",
        f"output    {os.path.abspath(cfg.proj_dir)} | {start}",
        "=" * 100,
    ]
    return "\n".join(lines)


def end_summary(plan: TrainingPlan, saved_files: list, last_loss, seconds: float) -> str:
    cfg = plan.cfg
    proj = Path(cfg.proj_dir).resolve()
    point = read_resume_point(proj)
    final = [f for f in saved_files if Path(f).stem.endswith("-final")]
    lines = ["=" * 100, f"done in {seconds:.1f} s; last step loss {last_loss:.4f}"
             if last_loss is not None else f"done in {seconds:.1f} s"]
    if final:
        lines.append(f"final     {final[-1]}")
    others = [f for f in saved_files if f not in final]
    if others:
        lines.append(f"epochs    {', '.join(others)}")
    if point is not None:
        lines.append(f"resume    {proj / CHECKPOINT_DIR / point.directory} (step {point.step})")
    lines.append(f"metrics   {proj / METRICS_FILE} | curve {proj / LOSS_PLOT}"
                 + (f" | tensorboard {proj / 'tb'}" if (proj / "tb").is_dir() else ""))
    if isinstance(plan.peft_config, StateConfig) and final and cfg.load_model:
        lines.append(f"chat      python -m demo.chat --model {cfg.load_model} --state {final[-1]}")
    elif plan.peft_config is not None and final and cfg.load_model:
        lines.append(f"merge     python -m src.merge --base {cfg.load_model} --adapter {final[-1]} "
                     f"--output {proj / 'merged.pth'}")
    lines.append("=" * 100)
    return "\n".join(lines)
