"""train.py's main program: check the inputs, build the model and data, train with Lightning, report.

    python train.py --peft bone --bone_b 64 --load_model BASE.pth --data_file DATA --proj_dir OUT
    python train.py ... --dry_run          # meta-device model: adapter table + JSON counts, no weights, no data

Bad input (missing files, contradicting shapes, unknown choices, data beyond the vocabulary, ...) ends with one
`train.py: error: ...` line and exit status 2; a non-finite loss ends with exit status 1.

Launching (every process runs the same command; --devices is processes per node):
    one GPU / CPU:            python train.py ...
    G GPUs, Lightning:        python train.py ... --devices G          (Lightning re-runs the command G-1 times)
    G GPUs, torchrun:         torchrun --nproc_per_node G train.py ... --devices G
    N nodes, torchrun:        torchrun --nnodes N --node_rank R --nproc_per_node G --master_addr HOST \\
                                  --master_port PORT train.py ... --devices G --num_nodes N      (on node R)
    N nodes, Lightning:       MASTER_ADDR=HOST MASTER_PORT=PORT NODE_RANK=R python train.py ... --devices G \\
                                  --num_nodes N                                              (on node R)
    SLURM:                    srun --nodes N --ntasks-per-node G python train.py ... --devices G --num_nodes N
    2 CPU processes (CI):     python train.py ... --accelerator cpu --devices 2   (DeepSpeed on gloo)
--proj_dir must be on a filesystem every node sees (DeepSpeed writes one optimizer shard per rank).
"""
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from src.train.args import QUICKSTART_HINT, TrainConfig, build_peft_config, parse_args

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 1


class TrainSetupError(ValueError):
    """A problem with the run's inputs, reported as one line without a traceback."""


# ---- process environment (launcher code: the only place that touches os.environ) ---------------------------------
def is_launch_rank_zero() -> bool:
    """Whether the launcher made this process global rank 0 (torchrun / deepspeed: RANK; SLURM: SLURM_PROCID;
    Lightning's own subprocess launcher: NODE_RANK and LOCAL_RANK). A plain `python train.py` is rank 0; so is
    the process that Lightning's launcher later starts the other ranks from."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_process_environment(cfg: TrainConfig, accelerator: str) -> None:
    """Environment DeepSpeed reads at import/init time, set before anything imports it.

    On CPU DeepSpeed must pick its CPU accelerator (gloo). A single process started with plain python has no
    launcher to announce ranks, and DeepSpeed would then look for MPI: give it rank 0 of 1 and a free port.
    Multi-process runs get these from their launcher (Lightning's, torchrun, deepspeed, SLURM) and are left alone.
    --num_threads goes to OMP_NUM_THREADS, which Lightning's launcher (and its child processes) apply.
    """
    if accelerator == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cfg.num_threads:
        # Lightning's launchers set torch's thread count from OMP_NUM_THREADS when they start the run.
        os.environ["OMP_NUM_THREADS"] = str(cfg.num_threads)
    if cfg.uses_deepspeed and cfg.world_size == 1 and "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))


# ---- resolving the plan ------------------------------------------------------------------------------------------
def resolve_accelerator(cfg: TrainConfig) -> str:
    import torch

    if cfg.accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise TrainSetupError("--accelerator gpu was asked for, but torch sees no CUDA device; use --accelerator cpu "
                              "(or install a CUDA build of torch)")
    return cfg.accelerator


def resolve_precision(cfg: TrainConfig, accelerator: str) -> str:
    """bf16 on GPU and fp32 on CPU by default; refuses combinations that cannot run."""
    precision = cfg.precision or ("bf16" if accelerator == "gpu" else "fp32")
    if precision == "fp16" and accelerator == "cpu":
        raise TrainSetupError("--precision fp16 needs a GPU (CPU kernels and DeepSpeed's CPU backend have no fp16 "
                              "training path); use --precision fp32 or bf16 on CPU")
    return precision


CUDA_KERNEL_DTYPES = ("bf16", "fp32", "tf32")
CUDA_KERNEL_MAX_HEAD_SIZE = 256  # one register row of the N x N state per thread
CUDA_KERNEL_MAX_T = 2 ** 31 - 1  # T is a 32-bit int in the kernel
CUDA_BUILD_T_MULTIPLE = 4096  # one build serves every ctx_len up to its bound (the bound costs nothing at run time)


def check_cuda_kernel_limits(cfg: TrainConfig, precision: str) -> None:
    """Refuse what our CUDA WKV kernel cannot run, before any GPU or compiler is looked for."""
    if cfg.wkv_op != "cuda":
        return
    if precision not in CUDA_KERNEL_DTYPES:
        raise TrainSetupError(f"--precision {precision} cannot run with the cuda WKV kernel, which computes in bf16 "
                              f"or fp32; use --precision bf16 (or fp32), or --wkv_op torch")
    if cfg.ctx_len > CUDA_KERNEL_MAX_T:
        raise TrainSetupError(f"--ctx_len {cfg.ctx_len} is beyond what the cuda WKV kernel can index (T <= "
                              f"{CUDA_KERNEL_MAX_T}); use a smaller --ctx_len")
    if cfg.head_size_a > CUDA_KERNEL_MAX_HEAD_SIZE:
        raise TrainSetupError(f"--head_size_a {cfg.head_size_a} is beyond the cuda WKV kernel's limit of "
                              f"{CUDA_KERNEL_MAX_HEAD_SIZE}; use --wkv_op torch")


def configure_cuda_kernel(cfg: TrainConfig) -> None:
    """Size the CUDA kernel build for ctx_len and cache it where TORCH_EXTENSIONS_DIR says (launcher code)."""
    from src.ops.wkv6_cuda import DEFAULT_MAX_T, configure_wkv6_cuda

    max_t = max(DEFAULT_MAX_T, -(-cfg.ctx_len // CUDA_BUILD_T_MULTIPLE) * CUDA_BUILD_T_MULTIPLE)
    configure_wkv6_cuda(max_t=max_t, cache_dir=os.environ.get("TORCH_EXTENSIONS_DIR"))


LIGHTNING_PRECISION = {"fp32": "32-true", "tf32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def default_mini_lora_dims(n_embd: int) -> tuple:
    """time_maa / time_decay mini-LoRA widths of the official RWKV6 models: 32/64, doubled from n_embd 4096 up."""
    return (64, 128) if n_embd >= 4096 else (32, 64)


def model_config_for(cfg: TrainConfig, wkv_op: str):
    """The RWKV6Config of the run: read from --load_model (checked against any shape flags) or from the flags."""
    from src.model import RWKV6Config

    if cfg.load_model:
        from src.checkpoint import infer_config, load_rwkv_state_dict

        config = infer_config(load_rwkv_state_dict(cfg.load_model))  # memory-mapped: shapes only
        given = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size, "dim_ffn": cfg.dim_ffn,
                 "dim_maa_lora": cfg.dim_maa_lora, "dim_decay_lora": cfg.dim_decay_lora}
        wrong = [f"--{k} {v} (checkpoint: {getattr(config, k)})" for k, v in given.items()
                 if v is not None and v != getattr(config, k)]
        if cfg.head_size_a != config.head_size:
            wrong.append(f"--head_size_a {cfg.head_size_a} (checkpoint: {config.head_size})")
        if wrong:
            raise TrainSetupError(
                f"{', '.join(wrong)} contradict{'s' if len(wrong) == 1 else ''} --load_model {cfg.load_model}, "
                f"which is an RWKV6 L{config.n_layer} D{config.n_embd} vocab {config.vocab_size} model; drop "
                f"these flags (the shape is read from the checkpoint) or pass the checkpoint you meant"
            )
        config.wkv_op = wkv_op
    else:
        missing = [f"--{k}" for k in ("n_layer", "n_embd", "vocab_size") if getattr(cfg, k) is None]
        if missing:
            raise TrainSetupError(f"a new model needs {', '.join(missing)} (or pass --load_model BASE.pth)")
        maa, decay = default_mini_lora_dims(cfg.n_embd)
        config = RWKV6Config(
            n_layer=cfg.n_layer, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size, dim_ffn=cfg.dim_ffn,
            head_size=cfg.head_size_a, dim_maa_lora=cfg.dim_maa_lora or maa,
            dim_decay_lora=cfg.dim_decay_lora or decay, wkv_op=wkv_op,
        )
    config.layer_checkpointing = cfg.grad_cp == "layer"
    return config


def check_base_model_choice(cfg: TrainConfig) -> None:
    if cfg.peft != "none" and not cfg.load_model:
        raise TrainSetupError(f"--peft {cfg.peft} adapts a pretrained model, but no --load_model was given. "
                              f"{QUICKSTART_HINT}")
    if cfg.load_model and not os.path.isfile(cfg.load_model):
        raise TrainSetupError(f"--load_model file not found: {cfg.load_model}. {QUICKSTART_HINT}")


def apply_adapters(model, cfg: TrainConfig, peft_config):
    """Put the adapter in (or, for --peft none, make every weight trainable); returns adapted module names."""
    from src.peft import apply_peft, parse_parts

    if peft_config is None:
        if parse_parts(cfg.train_parts):
            raise TrainSetupError("--train_parts selects extra parameters next to an adapter; --peft none already "
                                  "trains every weight")
        model.requires_grad_(True)
        return []
    return apply_peft(model, peft_config, targets=cfg.peft_targets, train_parts=parse_parts(cfg.train_parts))


def count_parameters(model) -> tuple:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def describe_model(config) -> str:
    return (f"RWKV6 L{config.n_layer} D{config.n_embd} F{config.dim_ffn} vocab {config.vocab_size} heads "
            f"{config.n_head}x{config.head_size}")


def describe_method(cfg: TrainConfig, peft_config) -> str:
    if peft_config is None:
        return "full fine-tune (every weight trains)"
    settings = ", ".join(f"{k}={v}" for k, v in peft_config.to_dict().items() if k != "method")
    parts = cfg.train_parts.strip() or "none"
    return f"{peft_config.method} ({settings}) | train_parts {parts}"


# ---- dry run -----------------------------------------------------------------------------------------------------
def dry_run(cfg: TrainConfig) -> int:
    """Meta-device model + adapter: print the table, then the JSON counts as the last stdout line."""
    import torch

    from src.model import RWKV6
    from src.peft import format_peft_table, peft_summary

    if cfg.load_model and not os.path.isfile(cfg.load_model):
        raise TrainSetupError(f"--load_model file not found: {cfg.load_model}. {QUICKSTART_HINT}")
    peft_config = build_peft_config(cfg)
    config = model_config_for(cfg, wkv_op="torch")
    with torch.device("meta"):
        model = RWKV6(config)
    adapted = apply_adapters(model, cfg, peft_config)
    trainable, total = count_parameters(model)
    print(f"model     {describe_model(config)}, {total:,} parameters "
          f"({'shapes from ' + cfg.load_model if cfg.load_model else 'from the shape flags'}; meta device)")
    print(f"method    {describe_method(cfg, peft_config)}")
    if adapted:
        print(format_peft_table(peft_summary(model)))
    print(f"trainable {trainable:,} of {total:,} ({100.0 * trainable / total:.3f}%)")
    summary = {"trainable": trainable, "total": total, "adapted_modules": len(adapted), "method": cfg.peft,
               "peft_config": peft_config.to_dict() if peft_config else None,
               "train_parts": cfg.train_parts.strip(), "n_layer": config.n_layer, "n_embd": config.n_embd,
               "vocab_size": config.vocab_size, "dim_ffn": config.dim_ffn}
    print(json.dumps(summary), flush=True)
    return 0


# ---- training ----------------------------------------------------------------------------------------------------
def run_key_of(cfg: TrainConfig, peft_config) -> dict:
    """Settings that a resumed run must share with the run that wrote the checkpoint."""
    return {
        "peft": cfg.peft, "peft_config": peft_config.to_dict() if peft_config else None,
        "peft_targets": cfg.peft_targets, "train_parts": cfg.train_parts.strip(),
        "load_model": os.path.abspath(cfg.load_model) if cfg.load_model else None,
        "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size,
        "data_file": os.path.abspath(cfg.data_file), "data_type": cfg.data_type, "dataload": cfg.dataload,
        "loss_mask": cfg.loss_mask, "ctx_len": cfg.ctx_len, "micro_bsz": cfg.micro_bsz,
        "epoch_steps": cfg.epoch_steps, "accumulate_grad_batches": cfg.accumulate_grad_batches, "seed": cfg.seed,
        "strategy": cfg.strategy, "world_size": cfg.world_size,
    }


def check_resume_point(point, cfg: TrainConfig, run_key: dict) -> None:
    differing = [f"{k}: checkpoint {point.run_key.get(k)!r}, now {v!r}" for k, v in run_key.items()
                 if point.run_key.get(k) != v]
    if differing:
        raise TrainSetupError(
            f"{cfg.proj_dir} holds a checkpoint of a different run ({'; '.join(differing)}). Rerun with the same "
            f"settings to continue it, use another --proj_dir, or pass --fresh to discard it"
        )


def select_tokenizer(cfg: TrainConfig, vocab_size: int):
    """The tokenizer jsonl/sft data and text-marker qa masks need (None when the data is already token ids)."""
    from src.data import get_tokenizer

    if cfg.data_type == "binidx" and cfg.loss_mask != "qa":
        return None
    name = cfg.tokenizer if cfg.tokenizer != "auto" else ("byte" if vocab_size == 256 else "world")
    tokenizer = get_tokenizer(name)
    if tokenizer.vocab_size > vocab_size:
        raise TrainSetupError(f"the {name} tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is "
                              f"{vocab_size}; pass --tokenizer byte for vocab 256 models or use a world-vocab model")
    return tokenizer


def build_training_dataset(cfg: TrainConfig, vocab_size: int):
    from src.data import DataConfig, build_dataset

    if not cfg.data_file:
        raise TrainSetupError("--data_file is required (a binidx prefix, or a .jsonl/.json file with --data_type "
                              "jsonl or sft)")
    data_cfg = DataConfig(
        data_file=cfg.data_file, data_type=cfg.data_type, ctx_len=cfg.ctx_len, micro_bsz=cfg.micro_bsz,
        epoch_steps=cfg.epoch_steps, dataload=cfg.dataload, loss_mask=cfg.loss_mask, sft_fields=cfg.sft_field,
        template=cfg.template, seed=cfg.seed, text_field=cfg.text_field, shuffle=cfg.data_shuffle,
    )
    return build_dataset(data_cfg, tokenizer=select_tokenizer(cfg, vocab_size), vocab_size=vocab_size)


def parameter_dtype(precision: str, deepspeed: bool, trainable_all: bool):
    """The dtype the model is loaded in: fp32 unless a half precision lets frozen weights (or, under DeepSpeed,
    every weight: DeepSpeed casts the module itself and keeps fp32 master copies) stay in half precision."""
    import torch

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if half is None or (trainable_all and not deepspeed):
        return torch.float32
    return half


@dataclass
class TrainingPlan:
    cfg: TrainConfig
    accelerator: str
    precision: str
    wkv_op: str
    model_config: object
    peft_config: object
    run_key: dict
    resume: object  # ResumePoint or None
    dataset: object  # TokenDataset


def plan_training(cfg: TrainConfig) -> TrainingPlan:
    """Every check that needs no weights: files, choices, shapes, data, resume point."""
    import torch

    from src.ops import resolve_wkv_op
    from src.train.callbacks import read_resume_point

    check_base_model_choice(cfg)
    peft_config = build_peft_config(cfg)
    accelerator = resolve_accelerator(cfg)
    precision = resolve_precision(cfg, accelerator)
    check_cuda_kernel_limits(cfg, precision)
    requested_op = "torch" if cfg.wkv_op == "auto" and precision == "fp16" else cfg.wkv_op  # kernel: bf16/fp32
    if accelerator == "gpu" and requested_op != "torch":
        configure_cuda_kernel(cfg)
    wkv_op = resolve_wkv_op(requested_op, torch.device("cuda" if accelerator == "gpu" else "cpu"))
    model_config = model_config_for(cfg, wkv_op)
    dataset = build_training_dataset(cfg, model_config.vocab_size)
    run_key = run_key_of(cfg, peft_config)
    run_key.update(n_layer=model_config.n_layer, n_embd=model_config.n_embd, vocab_size=model_config.vocab_size)
    resume = None if cfg.fresh else read_resume_point(cfg.proj_dir)
    if cfg.resume and resume is None:
        raise TrainSetupError(f"--resume: no checkpoint in {Path(cfg.proj_dir) / 'checkpoints'}; run without "
                              f"--resume to start")
    if resume is not None:
        check_resume_point(resume, cfg, run_key)
    return TrainingPlan(cfg, accelerator, precision, wkv_op, model_config, peft_config, run_key, resume, dataset)


def build_model(plan: TrainingPlan):
    import torch

    from src.model import RWKV6

    cfg = plan.cfg
    dtype = parameter_dtype(plan.precision, cfg.uses_deepspeed, trainable_all=plan.peft_config is None)
    if cfg.load_model:
        model = RWKV6.from_checkpoint(cfg.load_model, wkv_op=plan.wkv_op, dtype=dtype)
    else:
        model = RWKV6(plan.model_config)
        model.init_weights(seed=cfg.seed)
        model.to(dtype=dtype)
    model.config.layer_checkpointing = cfg.grad_cp == "layer"
    torch.manual_seed(cfg.seed)  # LoRA's random A: the same on every rank
    adapted = apply_adapters(model, cfg, plan.peft_config)
    return model, adapted


def start_summary(plan: TrainingPlan, model, adapted, dataset) -> str:
    cfg = plan.cfg
    trainable, total = count_parameters(model)
    source = f"from {cfg.load_model}" if cfg.load_model else f"new model, official init (seed {cfg.seed})"
    global_batch = cfg.micro_bsz * cfg.accumulate_grad_batches * cfg.world_size
    if plan.resume is None:
        resume = "fresh start"
    else:
        resume = (f"resuming checkpoints/{plan.resume.directory} (step {plan.resume.step}, epoch {plan.resume.epoch}, "
                  f"micro-batch {plan.resume.batch})")
    warmup = max(cfg.warmup_steps, 0)
    lines = [
        "=" * 100,
        f"model     {describe_model(plan.model_config)} | {total:,} params | {source}",
        f"method    {describe_method(cfg, plan.peft_config)}" + (f" | {len(adapted)} adapted modules" if adapted else ""),
        f"trainable {trainable:,} of {total:,} ({100.0 * trainable / total:.3f}%)",
        f"data      {dataset.summary()}",
        f"batch     micro_bsz {cfg.micro_bsz} x accumulate {cfg.accumulate_grad_batches} x {cfg.world_size} "
        f"process(es) = {global_batch} samples/step, ctx_len {cfg.ctx_len} -> {global_batch * cfg.ctx_len:,} "
        f"tokens/step",
        f"schedule  {cfg.epoch_steps} micro-batches/epoch = {cfg.steps_per_epoch} steps x {cfg.epoch_count} epochs "
        f"(from epoch {cfg.epoch_begin}) = {cfg.total_steps} steps | lr {cfg.lr_init:g} -> {cfg.lr_final:g} "
        f"({cfg.lr_schedule}), warmup {warmup} | {cfg.optim} betas ({cfg.beta1}, {cfg.beta2}) eps {cfg.adam_eps:g} "
        f"wd {cfg.weight_decay:g} | clip {cfg.gradient_clip_val:g}",
        f"engine    {cfg.strategy} | {plan.accelerator}, {cfg.devices} device(s) x {cfg.num_nodes} node(s) | precision "
        f"{plan.precision} | wkv op {plan.wkv_op} | grad_cp {cfg.grad_cp}",
        f"output    {os.path.abspath(cfg.proj_dir)} | {resume}",
        "=" * 100,
    ]
    return "\n".join(lines)


def end_summary(plan: TrainingPlan, saver, tracker, seconds: float) -> str:
    from src.train.callbacks import CHECKPOINT_DIR, LOSS_PLOT, METRICS_FILE, read_resume_point

    cfg = plan.cfg
    proj = Path(cfg.proj_dir).resolve()
    point = read_resume_point(proj)
    final = [f for f in saver.saved_files if Path(f).stem.endswith("-final")]
    lines = ["=" * 100, f"done in {seconds:.1f} s; last step loss {tracker.last_loss:.4f}"
             if tracker.last_loss is not None else f"done in {seconds:.1f} s"]
    if final:
        lines.append(f"final     {final[-1]}")
    others = [f for f in saver.saved_files if f not in final]
    if others:
        lines.append(f"epochs    {', '.join(others)}")
    if point is not None:
        lines.append(f"resume    {proj / CHECKPOINT_DIR / point.directory} (step {point.step})")
    lines.append(f"metrics   {proj / METRICS_FILE} | curve {proj / LOSS_PLOT}"
                 + (f" | tensorboard {proj / 'tb'}" if (proj / "tb").is_dir() else ""))
    if plan.peft_config is not None and final and cfg.load_model:
        lines.append(f"merge     python -m src.merge --base {cfg.load_model} --adapter {final[-1]} "
                     f"--output {proj / 'merged.pth'}")
    lines.append("=" * 100)
    return "\n".join(lines)


def train(plan: TrainingPlan) -> int:
    import pytorch_lightning as pl
    import torch

    from src.train.callbacks import CheckpointAndSave, ProgressTracker, RWKVProgressBar, remove_checkpoints
    from src.train.module import OptimizerSpec, RWKVTrainModule
    from src.train.schedule import LRSchedule
    from src.train.strategy import StrategySpec, build_strategy

    cfg = plan.cfg
    rank0 = is_launch_rank_zero()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if plan.accelerator == "gpu":
        torch.backends.cuda.matmul.allow_tf32 = plan.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = plan.precision != "fp32"
    pl.seed_everything(cfg.seed, verbose=False)

    dataset = plan.dataset
    model, adapted = build_model(plan)

    resume = plan.resume
    start_epoch = resume.epoch if resume else cfg.epoch_begin
    epochs_left = cfg.epoch_begin + cfg.epoch_count - start_epoch
    if epochs_left <= 0:
        if rank0:
            print(f"{cfg.proj_dir}: training already finished (checkpoint at step {resume.step}, epoch "
                  f"{resume.epoch - 1} done); its files are in {os.path.abspath(cfg.proj_dir)}")
        return 0
    if rank0:
        Path(cfg.proj_dir).mkdir(parents=True, exist_ok=True)
        remove_checkpoints(cfg.proj_dir, keep=resume.directory if resume else None)
        if cfg.fresh:
            (Path(cfg.proj_dir) / "checkpoints" / "latest.json").unlink(missing_ok=True)
        print(start_summary(plan, model, adapted, dataset), flush=True)

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
        model, dataset, schedule, optimizer_spec, micro_bsz=cfg.micro_bsz, start_epoch=start_epoch,
        step_offset=resume.step if resume else 0, start_batch=resume.batch if resume else 0,
        num_workers=1 if on_gpu else 0,
    )
    tty = sys.stdout.isatty()  # Lightning's progress bar writes to stdout; logs get plain lines instead
    tracker = ProgressTracker(
        cfg.proj_dir, tokens_per_step=cfg.ctx_len * cfg.micro_bsz * cfg.accumulate_grad_batches * cfg.world_size,
        accumulate=cfg.accumulate_grad_batches, resume_step=resume.step if resume else 0,
        print_every=0 if tty else max(1, cfg.steps_per_epoch // 10),
    )
    adapter_extra = {"train_args": {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str))}}
    saver = CheckpointAndSave(
        cfg.proj_dir, plan.run_key, peft=plan.peft_config is not None, epoch_save=cfg.epoch_save,
        epoch_begin=cfg.epoch_begin, epoch_count=cfg.epoch_count, epoch_steps=cfg.epoch_steps,
        save_every_steps=cfg.save_every_steps,
        accumulate=cfg.accumulate_grad_batches, resume=resume, adapter_extra=adapter_extra,
        dump_rank_state=cfg.dump_rank_state,
    )
    callbacks = [tracker, saver] + ([RWKVProgressBar(tracker)] if tty else [])
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
    trainer.fit(module)
    if trainer.is_global_zero:
        print(end_summary(plan, saver, tracker, time.perf_counter() - started), flush=True)
    return 0


def fail(message: str, status: int) -> int:
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    return status


def main(argv=None) -> int:
    """Entry point of train.py; returns the process exit status."""
    try:
        cfg = parse_args(argv)
        if cfg.dry_run:
            return dry_run(cfg)
        prepare_process_environment(cfg, resolve_accelerator(cfg))
        plan = plan_training(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        return fail(str(error), EXIT_BAD_INPUT)
    from src.train.module import NonFiniteLossError  # imports Lightning: not needed by --dry_run or bad input

    try:
        return train(plan)
    except NonFiniteLossError as error:
        from src.train.callbacks import read_resume_point

        point = read_resume_point(cfg.proj_dir)
        kept = (f"the last good checkpoint is {Path(cfg.proj_dir) / 'checkpoints' / point.directory} (step "
                f"{point.step}); nothing was saved after it" if point else "no checkpoint had been written yet")
        return fail(f"{error}; {kept}. Lower --lr_init, check the data, or try --precision fp32", EXIT_NON_FINITE)
