"""Planning a run: every check that needs no weights, in the order that fails fastest, and the model build.

`plan_training` reads the flags, the checkpoint's shapes (memory-mapped), the data and the resume point, and
chooses the accelerator, the precision and the WKV op once, for the device the run will use. `build_model` then
loads the weights with that op (never choosing again) and puts the adapter in. Nothing here imports Lightning.
"""
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from src.checkpoint.files import check_writable_folder, file_identity, refuse_overwriting_inputs
from src.checkpoint.io import check_finite_tensors, detect_rwkv_version, load_rwkv, read_checkpoint
from src.data import DataConfig, TokenDataset, build_dataset, get_tokenizer
from src.data.binidx import binidx_prefix
from src.model import DTYPES, RWKV6, RWKV7, RWKV6Config, RWKV7Config
from src.ops import resolve_wkv_op
from src.ops.wkv6_cuda import build_max_t_for, configure_wkv6_cuda, kernel_limit_problem
from src.ops.wkv7 import resolve_wkv7_op
from src.ops.wkv7_cuda import configure_wkv7_cuda
from src.ops.wkv7_cuda import kernel_limit_problem as wkv7_kernel_limit_problem
from src.peft import (
    METHODS,
    AdapterConfig,
    StateConfig,
    adapter_modules,
    apply_peft,
    apply_state_tuning,
    load_adapter,
    parse_parts,
    peft_config_from_flags,
    read_adapter,
    resolve_targets,
)
from src.peft.adapter_io import meaning_of
from src.peft.targets import generation_of
from src.train.args import CHANGEABLE_ON_RESUME, QUICKSTART_HINT, TrainConfig
from src.train.plots import LOSS_PLOT, METRICS_FILE, MetricsFileError, read_metrics
from src.train.resume import CHECKPOINT_DIR, REPLACED_PREFIX, ResumePoint, previous_run_files, read_resume_point


class TrainSetupError(ValueError):
    """A problem with the run's inputs, reported as one line without a traceback."""


def resolve_accelerator(cfg: TrainConfig) -> str:
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


# The dtype the WKV op sees under each precision (bf16-mixed casts the projections' outputs to bf16).
WKV_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


def choose_wkv_op(cfg: TrainConfig, accelerator: str, precision: str, head_size: int,
                  extensions_dir: Optional[str] = None, report=None, arch: str = "x060") -> str:
    """The WKV op of the run, chosen once for its device, head size and dtype; `report` gets auto's note.
    extensions_dir: where kernel builds are cached (the launch layer passes TORCH_EXTENSIONS_DIR).
    arch: the model's generation; RWKV-7 (x070) chooses among the WKV7 ops (src.ops.wkv7.resolve_wkv7_op)."""
    dtype = WKV_DTYPE[precision]
    requested = cfg.wkv_op
    x070 = arch == "x070"
    if requested != "torch":
        problem = (wkv7_kernel_limit_problem if x070 else kernel_limit_problem)(head_size, dtype, cfg.forward_len)
        if problem is not None and requested == "cuda":
            length = f"--chunk_ctx {cfg.chunk_ctx}" if cfg.chunk_ctx else f"--ctx_len {cfg.ctx_len}"
            raise TrainSetupError(f"--wkv_op cuda cannot run this run ({length}, --precision {precision}, head size "
                                  f"{head_size}): {problem}; use --wkv_op torch")
        if problem is not None:
            requested = "torch"
        elif accelerator == "gpu" and x070:  # WKV7 builds share WKV6's cache folder; the largest T is its own
            configure_wkv6_cuda(cache_dir=extensions_dir)
            configure_wkv7_cuda(max_t=build_max_t_for(cfg.forward_len))
        elif accelerator == "gpu":
            configure_wkv6_cuda(max_t=build_max_t_for(cfg.forward_len), cache_dir=extensions_dir)
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    try:
        choice = (resolve_wkv7_op if x070 else resolve_wkv_op)(requested, device, head_size=head_size, dtype=dtype)
    except RuntimeError as error:
        raise TrainSetupError(str(error)) from None
    if choice.note and report is not None:
        report(choice.note)
    return choice.op


def default_mini_lora_dims(n_embd: int) -> tuple:
    """time_maa / time_decay mini-LoRA widths of the official RWKV6 models: 32/64, doubled from n_embd 4096 up."""
    return (64, 128) if n_embd >= 4096 else (32, 64)


def default_x070_lora_dims(n_embd: int) -> tuple:
    """(w, a, v, g) mini-LoRA widths of the released RWKV-7 models: max(32, round(k * C**p / 32) * 32) with (k, p)
    (1.8, .5), (1.8, .5), (1.3, .5), (.6, .8), except g = 128 at C = 1024 (the 0.4B): 0.1B 64/64/32/128, 1.5B
    96/96/64/256, 2.9B 96/96/64/320, 7.2B 128/128/96/480."""
    def width(k, p):
        return max(32, round(k * n_embd ** p / 32) * 32)

    g = 128 if n_embd == 1024 else width(0.6, 0.8)
    return width(1.8, 0.5), width(1.8, 0.5), width(1.3, 0.5), g


GENERATION_NAMES = {"x060": "RWKV6 (x060)", "x070": "RWKV-7 (x070)"}
X060_ONLY_FLAGS = ("dim_maa_lora", "dim_decay_lora")  # RWKV6's time_maa / time_decay mini-LoRA widths


def arch_of(config) -> str:
    """'x070' for an RWKV7Config, 'x060' for an RWKV6Config."""
    return "x070" if isinstance(config, RWKV7Config) else "x060"


def model_class_of(config):
    """RWKV7 for an RWKV7Config, RWKV6 for an RWKV6Config."""
    return RWKV7 if isinstance(config, RWKV7Config) else RWKV6


def model_config_for(cfg: TrainConfig):
    """The RWKV6Config or RWKV7Config of the run: read from --load_model, whose generation (x060 or x070) decides
    the model (checked against --arch and any shape flags), or from --arch and the shape flags."""
    if cfg.load_model:
        weights = read_checkpoint(cfg.load_model)  # memory-mapped: shapes only
        arch = detect_rwkv_version(weights)
        if cfg.arch is not None and cfg.arch != arch:
            raise TrainSetupError(
                f"--arch {cfg.arch} ({GENERATION_NAMES[cfg.arch]}) contradicts --load_model {cfg.load_model}, which "
                f"is an {GENERATION_NAMES[arch]} checkpoint; drop --arch/--my_testing (the generation is read from "
                f"the checkpoint) or pass the checkpoint you meant"
            )
        config = (RWKV7Config if arch == "x070" else RWKV6Config).from_state_dict(weights)
        given = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size, "dim_ffn": cfg.dim_ffn}
        if arch == "x060":
            given.update(dim_maa_lora=cfg.dim_maa_lora, dim_decay_lora=cfg.dim_decay_lora)
        wrong = [f"--{k} {v} (checkpoint: {getattr(config, k)})" for k, v in given.items()
                 if v is not None and v != getattr(config, k)]
        if arch == "x070":
            wrong += [f"--{k} {getattr(cfg, k)} (RWKV6 only)" for k in X060_ONLY_FLAGS if getattr(cfg, k) is not None]
        if cfg.head_size_a != config.head_size:
            wrong.append(f"--head_size_a {cfg.head_size_a} (checkpoint: {config.head_size})")
        if wrong:
            raise TrainSetupError(
                f"{', '.join(wrong)} contradict{'s' if len(wrong) == 1 else ''} --load_model {cfg.load_model}, "
                f"which is an {GENERATION_NAMES[arch].split(' ')[0]} L{config.n_layer} D{config.n_embd} vocab "
                f"{config.vocab_size} model; drop these flags (the shape is read from the checkpoint) or pass the "
                f"checkpoint you meant"
            )
    else:
        missing = [f"--{k}" for k in ("n_layer", "n_embd", "vocab_size") if getattr(cfg, k) is None]
        if missing:
            raise TrainSetupError(f"a new model needs {', '.join(missing)} (or pass --load_model BASE.pth)")
        if cfg.arch == "x070":
            given = [f"--{k}" for k in X060_ONLY_FLAGS if getattr(cfg, k) is not None]
            if given:
                raise TrainSetupError(f"{', '.join(given)} set RWKV6 mini-LoRA widths; an --arch x070 model reads "
                                      f"its w/a/v/g widths from n_embd (drop them)")
            w, a, v, g = default_x070_lora_dims(cfg.n_embd)
            try:
                config = RWKV7Config(n_layer=cfg.n_layer, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
                                     dim_ffn=cfg.dim_ffn, head_size=cfg.head_size_a, dim_w_lora=w, dim_a_lora=a,
                                     dim_v_lora=v, dim_g_lora=g)
            except ValueError as error:
                raise TrainSetupError(str(error)) from None
            config.layer_checkpointing = cfg.grad_cp == "layer"
            return config
        maa, decay = default_mini_lora_dims(cfg.n_embd)
        config = RWKV6Config(
            n_layer=cfg.n_layer, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size, dim_ffn=cfg.dim_ffn,
            head_size=cfg.head_size_a, dim_maa_lora=cfg.dim_maa_lora or maa,
            dim_decay_lora=cfg.dim_decay_lora or decay,
        )
    config.layer_checkpointing = cfg.grad_cp == "layer"
    return config


def check_base_model_choice(cfg: TrainConfig) -> None:
    if cfg.peft != "none" and not cfg.load_model:
        raise TrainSetupError(f"--peft {cfg.peft} adapts a pretrained model, but no --load_model was given. "
                              f"{QUICKSTART_HINT}")
    if cfg.load_model and not os.path.isfile(cfg.load_model):
        raise TrainSetupError(f"--load_model file not found: {cfg.load_model}. {QUICKSTART_HINT}")


def check_wandb(cfg: TrainConfig) -> None:
    """--wandb needs the wandb package: refused before any loading when it is not importable."""
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise TrainSetupError(f"--wandb {cfg.wandb} logs to Weights & Biases, but the wandb package is not "
                              f"installed: pip install wandb (or drop --wandb)")


def check_init_adapter(model, cfg: TrainConfig, peft_config: AdapterConfig) -> None:
    """--init_adapter's file must hold the adapter the flags ask for: the same method and meaning settings, and
    the same targets / train parts when those flags are given (the file's are used otherwise)."""
    path = cfg.init_adapter
    payload = read_adapter(path)
    stored, asked = meaning_of(payload["config"]), meaning_of(peft_config.to_dict())
    settings = ", ".join(f"{k}={v}" for k, v in stored.items() if k != "method")
    if payload["method"] != peft_config.method:
        raise TrainSetupError(f"--init_adapter {path} holds a {payload['method']} adapter ({settings}), but --peft is "
                              f"{peft_config.method}: pass --peft {payload['method']} with those settings")
    flags = METHODS[peft_config.method].config.flag_names
    differing = [f"{k}: file {stored[k]!r}, flags {asked.get(k)!r}" + (f" (--{flags[k]} {stored[k]})" if k in flags
                                                                        else "")
                 for k in stored if stored[k] != asked.get(k)]
    if differing:
        raise TrainSetupError(f"--init_adapter {path} holds a {payload['method']} adapter with other settings than "
                              f"the flags ({'; '.join(differing)}): pass the file's settings")
    generation = generation_of(n for n, _ in model.named_parameters())
    if cfg.peft_targets is not None and list(resolve_targets(cfg.peft_targets, generation)) != payload["targets"]:
        raise TrainSetupError(f"--peft_targets {cfg.peft_targets} differs from the targets of --init_adapter {path} "
                              f"({payload['targets'][:6]}{' ...' if len(payload['targets']) > 6 else ''}): drop "
                              f"--peft_targets (the file's targets are used)")
    parts = parse_parts(cfg.train_parts)
    if parts and list(parts) != list(payload["train_parts"]):
        raise TrainSetupError(f"--train_parts {cfg.train_parts} differs from those of --init_adapter {path} "
                              f"({','.join(payload['train_parts']) or 'none'}): drop --train_parts (the file's "
                              f"trainable tensors are used)")


def apply_adapters(model, cfg: TrainConfig, peft_config: Optional[AdapterConfig]) -> list:
    """Put the adapter in (or, for --peft none, make every weight trainable; for --peft state, add the trainable
    initial states); returns adapted module names (none for state tuning). With --init_adapter the adapter is the
    file's (its tensors loaded, unless the model is on the meta device)."""
    if isinstance(peft_config, StateConfig):
        apply_state_tuning(model)
        return []
    if cfg.init_adapter and peft_config is not None:
        check_init_adapter(model, cfg, peft_config)
        load_adapter(model, cfg.init_adapter, config=peft_config)
        return [n for n, _ in adapter_modules(model)]
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


def data_files_of(cfg: TrainConfig) -> list:
    """The files --data_file stands for: PREFIX.bin and PREFIX.idx for binidx data, else the file itself."""
    if not cfg.data_file:
        return []
    if cfg.data_type == "binidx":
        prefix = binidx_prefix(cfg.data_file)
        return [prefix + ".bin", prefix + ".idx"]
    return [cfg.data_file]


def adapter_files_of(path) -> list:
    """The files an adapter path stands for: the file itself, or those in an HF peft adapter directory."""
    if os.path.isdir(path):
        return sorted(os.path.join(path, name) for name in os.listdir(path))
    return [path]


def content_of(paths) -> Optional[dict]:
    """{file name: file_identity} of the files that exist (None when none does)."""
    found = {os.path.basename(p): file_identity(p) for p in paths if os.path.isfile(p)}
    return found or None


def run_key_of(cfg: TrainConfig, peft_config: Optional[AdapterConfig], model_config,
               precision: Optional[str] = None) -> dict:
    """Settings that a resumed run must share with the run that wrote the checkpoint (--change_on_resume lists
    the few that may differ). The base model and the data are identified by path and by content (size and a
    sampled hash, src.checkpoint.files.file_identity), so a file replaced at the same path is noticed."""
    return {
        "peft": cfg.peft, "peft_config": peft_config.to_dict() if peft_config else None,
        "peft_targets": cfg.peft_targets, "train_parts": cfg.train_parts.strip(),
        "load_model": os.path.abspath(cfg.load_model) if cfg.load_model else None,
        "load_model_content": content_of([cfg.load_model]) if cfg.load_model else None,
        "init_adapter": os.path.abspath(cfg.init_adapter) if cfg.init_adapter else None,
        "init_adapter_content": content_of(adapter_files_of(cfg.init_adapter)) if cfg.init_adapter else None,
        "arch": arch_of(model_config),
        "n_layer": model_config.n_layer, "n_embd": model_config.n_embd, "vocab_size": model_config.vocab_size,
        "data_file": os.path.abspath(cfg.data_file), "data_content": content_of(data_files_of(cfg)),
        "data_type": cfg.data_type, "dataload": cfg.dataload, "loss_mask": cfg.loss_mask,
        "template": cfg.template, "data_shuffle": cfg.data_shuffle, "text_field": cfg.text_field,
        "sft_field": list(cfg.sft_field), "ctx_len": cfg.ctx_len, "micro_bsz": cfg.micro_bsz,
        "epoch_steps": cfg.epoch_steps, "accumulate_grad_batches": cfg.accumulate_grad_batches, "seed": cfg.seed,
        "strategy": cfg.strategy, "world_size": cfg.world_size, "precision": precision,
        "optim": cfg.optim, "lr_init": cfg.lr_init, "lr_final": cfg.lr_final, "lr_schedule": cfg.lr_schedule,
        "warmup_steps": cfg.warmup_steps, "beta1": cfg.beta1, "beta2": cfg.beta2, "adam_eps": cfg.adam_eps,
        "weight_decay": cfg.weight_decay, "layerwise_lr": cfg.layerwise_lr,
        "gradient_clip_val": cfg.gradient_clip_val,
    }


CONTENT_KEYS = {"load_model_content": "--load_model", "data_content": "--data_file",
                "init_adapter_content": "--init_adapter"}


def _describe_difference(key: str, stored, now) -> str:
    if key in CONTENT_KEYS:
        changed = sorted(set(stored or {}) | set(now or {}))
        sizes = "; ".join(f"{name}: {(stored or {}).get(name, {}).get('size')} bytes then, "
                          f"{(now or {}).get(name, {}).get('size')} now" for name in changed
                          if (stored or {}).get(name) != (now or {}).get(name))
        return f"{CONTENT_KEYS[key]} was replaced at the same path: its content differs ({sizes})"
    return f"{key}: checkpoint {stored!r}, now {now!r}"


def check_resume_point(point: ResumePoint, cfg: TrainConfig, run_key: dict) -> None:
    """Refuse resuming a checkpoint of another run: any setting of run_key that differs, except those listed in
    --change_on_resume. Settings a checkpoint of an older version did not record are not compared."""
    allowed = set(cfg.changes_on_resume)
    differing = [_describe_difference(k, point.run_key[k], v) for k, v in run_key.items()
                 if k in point.run_key and k not in allowed and point.run_key[k] != v]
    if differing:
        changeable = [k for k, v in run_key.items() if k in point.run_key and point.run_key[k] != v
                      and k in CHANGEABLE_ON_RESUME]
        hint = (f" (to continue it with the new {', '.join(changeable)}, add --change_on_resume "
                f"{','.join(changeable)})" if changeable and len(changeable) == len(differing) else "")
        raise TrainSetupError(
            f"{cfg.proj_dir} holds a checkpoint of a different run ({'; '.join(differing)}). Rerun with the same "
            f"settings to continue it{hint}, use another --proj_dir, or pass --fresh to start over (the old "
            f"run's files are moved into {REPLACED_PREFIX}<time>/)"
        )


def run_outputs(cfg: TrainConfig) -> list:
    """(label, path) of the files a run writes in --proj_dir (or that --fresh moves away)."""
    proj = Path(cfg.proj_dir)
    label = "--proj_dir output"
    tags = [str(e) for e in range(cfg.epoch_begin, cfg.epoch_begin + cfg.epoch_count)] + ["final"]
    outputs = [(label, proj / f"{kind}-{tag}.pth") for kind in ("adapter", "rwkv", "state") for tag in tags]
    outputs += [(label, proj / METRICS_FILE), (label, proj / LOSS_PLOT)]
    outputs += [(label, proj / name) for name in previous_run_files(proj)]
    return outputs


def check_outputs(cfg: TrainConfig) -> None:
    """--proj_dir can be written, and no input (--load_model, the data files, --config) is among the files the
    run writes, rewrites or moves there (hard and symbolic links included)."""
    check_writable_folder("--proj_dir", cfg.proj_dir)
    inputs = [("--load_model", cfg.load_model), ("--config", cfg.config), ("--init_adapter", cfg.init_adapter)]
    inputs += [("--data_file", path) for path in data_files_of(cfg)]
    proj = Path(cfg.proj_dir)
    refuse_overwriting_inputs(run_outputs(cfg), inputs,
                              folders=[(f"the run in --proj_dir {proj}", proj / CHECKPOINT_DIR),
                                       (f"the run in --proj_dir {proj}", proj / "tb")])


def check_no_previous_run(cfg: TrainConfig) -> None:
    """A new run (no checkpoint to continue, no --fresh) must not overwrite or mix with a finished run's files."""
    found = [name for name in previous_run_files(cfg.proj_dir) if name.endswith(".pth")]
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise TrainSetupError(
            f"--proj_dir {cfg.proj_dir} holds the outputs of an earlier run ({shown}) but no checkpoint to continue "
            f"from: a new run there would overwrite and mix with them. Use another --proj_dir, or pass --fresh to "
            f"move that run's files into {Path(cfg.proj_dir) / (REPLACED_PREFIX + '<time>')}/ and start over"
        )


def check_adapter_fits(cfg: TrainConfig, model_config, peft_config: Optional[AdapterConfig]) -> None:
    """Put the adapter into a meta-device model (no weights: instantaneous, as --dry_run does), so that a block
    size that divides no target, targets or --train_parts matching nothing, or --train_parts with --peft none are
    refused before the data is tokenized and the base loaded."""
    with torch.device("meta"):
        model = model_class_of(model_config)(model_config)
    try:
        apply_adapters(model, cfg, peft_config)
    except TrainSetupError:
        raise
    except ValueError as error:
        raise TrainSetupError(str(error)) from None


def select_tokenizer(cfg: TrainConfig, vocab_size: int):
    """The tokenizer jsonl/sft data and text-marker qa masks need (None when the data is already token ids)."""
    if cfg.data_type == "binidx" and cfg.loss_mask != "qa":
        return None
    name = cfg.tokenizer if cfg.tokenizer != "auto" else ("byte" if vocab_size == 256 else "world")
    tokenizer = get_tokenizer(name)
    if tokenizer.vocab_size > vocab_size:
        raise TrainSetupError(f"the {name} tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is "
                              f"{vocab_size}; pass --tokenizer byte for vocab 256 models or use a world-vocab model")
    return tokenizer


DATA_FILE_REQUIRED = "--data_file is required (a binidx prefix, or a .jsonl/.json file with --data_type jsonl or sft)"


def build_training_dataset(cfg: TrainConfig, vocab_size: int) -> TokenDataset:
    if not cfg.data_file:
        raise TrainSetupError(DATA_FILE_REQUIRED)
    data_cfg = DataConfig(
        data_file=cfg.data_file, data_type=cfg.data_type, ctx_len=cfg.ctx_len, micro_bsz=cfg.micro_bsz,
        epoch_steps=cfg.epoch_steps, dataload=cfg.dataload, loss_mask=cfg.loss_mask, sft_fields=cfg.sft_field,
        template=cfg.template, seed=cfg.seed, text_field=cfg.text_field, shuffle=cfg.data_shuffle,
    )
    return build_dataset(data_cfg, tokenizer=select_tokenizer(cfg, vocab_size), vocab_size=vocab_size)


def parameter_dtype(precision: str, deepspeed: bool, trainable_all: bool) -> torch.dtype:
    """The dtype the model is loaded in: fp32 unless a half precision lets frozen weights (or, under DeepSpeed,
    every weight: DeepSpeed casts the module itself and keeps fp32 master copies) stay in half precision."""
    half = DTYPES.get(precision) if precision in ("bf16", "fp16") else None
    if half is None or (trainable_all and not deepspeed):
        return torch.float32
    return half


@dataclass
class TrainingPlan:
    cfg: TrainConfig
    accelerator: str  # "gpu" or "cpu"
    precision: str  # "bf16", "fp16", "fp32" or "tf32"
    wkv_op: str  # chosen for the accelerator: "cuda" or "torch"
    model_config: object  # RWKV6Config or RWKV7Config
    peft_config: Optional[AdapterConfig]  # None: a full fine-tune
    run_key: dict
    resume_point: Optional[ResumePoint]  # None: a fresh start
    dataset: TokenDataset


def report_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan_training(cfg: TrainConfig, extensions_dir: Optional[str] = None) -> TrainingPlan:
    """Every check that needs no weights: files, choices, shapes, the adapter (on the meta device), the WKV op,
    the outputs, the resume point, then the data."""
    check_base_model_choice(cfg)
    check_wandb(cfg)
    peft_config = peft_config_from_flags(cfg)
    accelerator = resolve_accelerator(cfg)
    precision = resolve_precision(cfg, accelerator)
    model_config = model_config_for(cfg)
    check_adapter_fits(cfg, model_config, peft_config)
    model_config.wkv_op = choose_wkv_op(cfg, accelerator, precision, model_config.head_size,
                                        extensions_dir, report_on_stderr, arch=arch_of(model_config))
    if not cfg.data_file:
        raise TrainSetupError(DATA_FILE_REQUIRED)
    check_outputs(cfg)
    try:
        resume_point = None if cfg.fresh else read_resume_point(cfg.proj_dir, report=report_on_stderr)
    except ValueError as error:
        raise TrainSetupError(str(error)) from None
    if cfg.resume and resume_point is None:
        raise TrainSetupError(f"--resume: no checkpoint in {Path(cfg.proj_dir) / CHECKPOINT_DIR}; run without "
                              f"--resume to start")
    if resume_point is None and not cfg.fresh:
        check_no_previous_run(cfg)
    for path in data_files_of(cfg):  # a missing file is reported by the dataset below, with what to pass
        if os.path.isdir(path):
            raise TrainSetupError(f"--data_file {path} is a directory; pass a data file (or a binidx prefix)")
    run_key = run_key_of(cfg, peft_config, model_config, precision)
    if resume_point is not None:
        check_resume_point(resume_point, cfg, run_key)
        try:  # the history the resumed run keeps; a damaged one is refused now, not after the model loads
            read_metrics(Path(cfg.proj_dir) / METRICS_FILE, report=report_on_stderr)
        except MetricsFileError as error:
            raise TrainSetupError(str(error)) from None
    dataset = build_training_dataset(cfg, model_config.vocab_size)
    if dataset.unsupervised_docs:
        report_on_stderr(f"warning: {dataset.unsupervised_docs} of {dataset.trainable_docs.size} samples of "
                         f"{cfg.data_file} have no supervised token within --ctx_len {cfg.ctx_len} (their prompt "
                         f"fills it) and train on nothing; --ctx_len {dataset.ctx_len_keeping_all} keeps them all")
    return TrainingPlan(cfg, accelerator, precision, model_config.wkv_op, model_config, peft_config, run_key,
                        resume_point, dataset)


def build_model(plan: TrainingPlan):
    """The model with its weights (loaded with the plan's WKV op, or the official init) and the adapter in."""
    cfg = plan.cfg
    dtype = parameter_dtype(plan.precision, cfg.uses_deepspeed, trainable_all=plan.peft_config is None)
    if cfg.load_model:
        weights = read_checkpoint(cfg.load_model)
        check_finite_tensors(weights, f"--load_model {cfg.load_model}")  # NaN weights would make every loss NaN
        model = load_rwkv(weights, wkv_op=plan.wkv_op, dtype=dtype)
    else:
        model = model_class_of(plan.model_config)(plan.model_config)
        model.init_weights(seed=cfg.seed)  # RWKV6's / RWKV-7's official from-scratch init
        model.to(dtype=dtype)
    model.config.layer_checkpointing = plan.model_config.layer_checkpointing
    torch.manual_seed(cfg.seed)  # LoRA's random A: the same on every rank
    adapted = apply_adapters(model, cfg, plan.peft_config)
    return model, adapted
