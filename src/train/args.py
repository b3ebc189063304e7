"""Command-line flags of train.py and the TrainConfig they produce.

Flag names and meanings follow RWKV-PEFT / RWKV-LM (`--load_model --proj_dir --data_file --data_type --vocab_size
--ctx_len --epoch_steps --epoch_count --epoch_begin --epoch_save --micro_bsz --n_layer --n_embd --strategy --grad_cp
--dataload --loss_mask --peft --train_parts --lr_init --lr_final --warmup_steps --beta1 --beta2 --adam_eps
--weight_decay --bone_config --lora_config --pissa_config --miss_config ...`). Differences, on purpose:

- `--train_parts` is a comma-separated list ("time,ln") and defaults to none: only the adapter trains. RWKV-PEFT's
  default "time,ln" also trains ~22.8M (1.6B), 38.0M (3B), 119.6M (7B) mixing/decay parameters; pass
  `--train_parts time,ln` for that behaviour.
- `--n_layer/--n_embd/--vocab_size` have no defaults: with `--load_model` they are read from the checkpoint
  (and, when given, checked against it); without it they define a new model.
- `--config FILE.yaml` may set any flag by its name; flags given on the command line win.

Every value is validated in `TrainConfig.__post_init__`, so YAML values get the same checks as flags; the PEFT
settings (--bone_*, --lora_*, --svd_niter, --*_config) are checked by the config they build
(`src.peft.peft_config_from_flags`), and their defaults are that config's defaults.
"""
import argparse
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Optional

from src.data.dataset import DATA_TYPES, DATALOADS, LOSS_MASKS
from src.ops import WKV_REQUESTS
from src.peft import METHODS, BoneConfig, LoraConfig, MissConfig, PissaConfig, field_default
from src.peft.config import check_given_settings

DEEPSPEED_STRATEGIES = {
    "deepspeed_stage_1": dict(stage=1),
    "deepspeed_stage_2": dict(stage=2),
    "deepspeed_stage_2_offload": dict(stage=2, offload_optimizer=True),
    "deepspeed_stage_3": dict(stage=3),
    "deepspeed_stage_3_offload": dict(stage=3, offload_optimizer=True, offload_parameters=True),
}
OTHER_STRATEGIES = ("ddp", "auto")
STRATEGY_NAMES = tuple(DEEPSPEED_STRATEGIES) + OTHER_STRATEGIES


def is_deepspeed(name: str) -> bool:
    """True for the deepspeed_* strategy names."""
    return name in DEEPSPEED_STRATEGIES


PEFT_METHODS = ("none",) + tuple(METHODS) + ("state",)  # state: src.peft.state, not a Linear adapter
# Flags that set a Linear adapter's settings: refused with --peft state, which has none (given, or off default).
ADAPTER_SETTING_FLAGS = ("bone_b", "bone_grouping", "bone_form", "bone_impl", "lora_r", "lora_alpha", "lora_dropout",
                         "svd_niter", "miss_r", "miss_form", "miss_mini_r")
ADAPTER_JSON_FLAGS = ("bone_config", "lora_config", "pissa_config", "miss_config")
GRAD_CP_CHOICES = {"none": "none", "0": "none", "layer": "layer", "1": "layer", "bone": "bone"}
PRECISION_CHOICES = {"bf16": "bf16", "fp16": "fp16", "16": "fp16", "fp32": "fp32", "32": "fp32", "tf32": "tf32"}
LR_SCHEDULES = {"exp": "exp", "exponential": "exp", "cos": "cos", "cosine": "cos"}
ACCELERATORS = {"auto": "auto", "cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}
TOKENIZERS = ("auto", "world", "byte")
OPTIMIZERS = ("adamw", "adam")
# --arch / --my_testing (RWKV-PEFT's spelling): the RWKV generation, as src.checkpoint.io.detect_rwkv_version names it
ARCHES = {"x060": "x060", "x070": "x070", "rwkv6": "x060", "rwkv7": "x070"}
# Settings a resume may change (--change_on_resume): the lr schedule and gradient clipping are applied afresh at
# every step, so they take effect on a restored optimizer; everything else must match the checkpoint's run.
CHANGEABLE_ON_RESUME = ("lr_init", "lr_final", "lr_schedule", "warmup_steps", "gradient_clip_val")
QUICKSTART_HINT = (
    "Get an RWKV6 checkpoint (e.g. RWKV-x060-World-1B6-v2.1-*.pth from the Hugging Face repo BlinkDL/rwkv-6-world) "
    "and pass it with --load_model PATH, or run the offline quickstart, which trains its own tiny base first: "
    "`bash scripts/quickstart.sh`. To train a new model from scratch instead, use --peft none with "
    "--n_layer/--n_embd/--vocab_size"
)


def _flag(default, help, type=None, flags=(), nargs=None, action=None):
    """A TrainConfig field that is also a command-line flag (--NAME plus optional alias spellings)."""
    return field(default=default, metadata=dict(help=help, type=type, flags=flags, nargs=nargs, action=action))


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false/1/0), got {value!r}")


@dataclass
class TrainConfig:
    """Everything a training run needs; built by parse_args from flags and an optional YAML file."""

    # run
    config: Optional[str] = _flag(None, "YAML file with flag values (keys are flag names); command-line flags win")
    proj_dir: str = _flag("out", "output folder: adapters, checkpoints, metrics.csv, loss.png")
    dry_run: bool = _flag(False, "build the model on the meta device, print the adapter table and a JSON summary "
                                 "line, and stop (no weights, no data)", action="store_true")
    resume: bool = _flag(False, "require a checkpoint in --proj_dir and continue from it (without this flag an "
                                "existing checkpoint is resumed too; use --fresh to ignore it)", action="store_true")
    fresh: bool = _flag(False, "start over in --proj_dir: an earlier run's outputs there (adapters, models, "
                               "checkpoints, metrics.csv, loss.png, tb/) are moved into --proj_dir/replaced-<time>/",
                        action="store_true")
    change_on_resume: str = _flag("", "comma-separated settings a resumed run may change from the checkpoint's: "
                                      + ", ".join(CHANGEABLE_ON_RESUME) + " (e.g. a lower lr after a non-finite loss)")
    seed: int = _flag(0, "random seed (model init, LoRA init, data order)", type=int, flags=("--random_seed",))
    # model
    arch: Optional[str] = _flag(None, "model generation: x060 (RWKV6) | x070 (RWKV-7); default: the --load_model "
                                      "checkpoint's (checked against it when given), x060 for a new model",
                                flags=("--my_testing",))
    load_model: Optional[str] = _flag(None, "base RWKV6 or RWKV-7 .pth (official layout); omit only with --peft "
                                            "none to train a new model")
    n_layer: Optional[int] = _flag(None, "layers (new model; checked against --load_model if given)", type=int)
    n_embd: Optional[int] = _flag(None, "embedding size (new model; checked against --load_model)", type=int)
    vocab_size: Optional[int] = _flag(None, "vocabulary size (new model; checked against --load_model)", type=int)
    dim_ffn: Optional[int] = _flag(None, "channel-mix width (default int(n_embd*3.5)//32*32)", type=int)
    head_size_a: int = _flag(64, "head size", type=int)
    dim_maa_lora: Optional[int] = _flag(None, "time_maa mini-LoRA width (default 32, 64 for n_embd >= 4096)",
                                        type=int)
    dim_decay_lora: Optional[int] = _flag(None, "time_decay mini-LoRA width (default 64, 128 for n_embd >= 4096)",
                                          type=int)
    wkv_op: str = _flag("auto", "WKV6 operator: auto (cuda when available), torch, cuda")
    # data
    data_file: Optional[str] = _flag(None, "binidx prefix (PREFIX.bin/.idx) or .jsonl/.json file")
    data_type: str = _flag("binidx", "binidx | jsonl ({\"text\"} lines) | sft (query/response records)")
    tokenizer: str = _flag("auto", "auto (byte when vocab_size is 256, else world) | world | byte")
    ctx_len: int = _flag(1024, "tokens per sample", type=int)
    chunk_ctx: Optional[int] = _flag(None, "train each sample in chunks of this many tokens, the recurrent state "
                                           "carried and differentiated across them (exact; memory of one chunk); "
                                           "default: one pass", type=int)
    dataload: str = _flag("get", "get (random windows) | pad (one document per sample) | only (no padding)")
    loss_mask: Optional[str] = _flag(None, "none | pad | qa (default: qa for --data_type sft, else none)")
    sft_field: tuple = _flag(("query", "response"), "query and response field names of sft data", nargs=2)
    text_field: str = _flag("text", "text field of jsonl data")
    template: str = _flag("rwkv", "SFT template: rwkv (User:/Assistant:) | alpaca")
    data_shuffle: bool = _flag(True, "visit documents in a seeded random order (pad/only)", type=_bool)
    # schedule
    micro_bsz: int = _flag(12, "samples per device per micro-batch", type=int)
    epoch_steps: int = _flag(1000, "micro-batches per device per epoch", type=int)
    epoch_count: int = _flag(500, "epochs to train", type=int)
    epoch_begin: int = _flag(0, "number of the first epoch (file names, data position)", type=int)
    epoch_save: int = _flag(5, "save the adapter (or model) every N epochs; 0: only at the end", type=int)
    save_every_steps: int = _flag(100, "write the resumable checkpoint every N optimizer steps (and at every "
                                       "epoch end); 0: epoch ends only", type=int)
    accumulate_grad_batches: int = _flag(1, "micro-batches per optimizer step", type=int)
    # optimizer
    optim: str = _flag("adamw", "adamw | adam (no weight decay)")
    lr_init: float = _flag(6e-4, "learning rate after warmup", type=float)
    lr_final: float = _flag(1e-5, "learning rate at the last step (equal to lr_init: constant)", type=float)
    lr_schedule: str = _flag("exp", "decay from lr_init to lr_final: exp (RWKV's default) | cos")
    warmup_steps: int = _flag(-1, "warmup optimizer steps (lr x (0.2 + 0.8 step/warmup)); <= 0: none", type=int)
    beta1: float = _flag(0.9, "Adam beta1", type=float)
    beta2: float = _flag(0.99, "Adam beta2", type=float)
    adam_eps: float = _flag(1e-8, "Adam epsilon", type=float)
    weight_decay: float = _flag(0.0, "weight decay of >= 2-D trainable tensors", type=float)
    layerwise_lr: int = _flag(1, "1: time_decay (RWKV6) / att.w0 (RWKV-7) trains at 2x lr as in RWKV; 0: one lr "
                                 "for all", type=int)
    gradient_clip_val: float = _flag(1.0, "clip the gradient norm (0: off)", type=float)
    # peft
    peft: str = _flag("none", "none (full fine-tune) | " + " | ".join(METHODS) + " | state (a trained initial WKV "
                              "state per layer, every weight frozen)")
    train_parts: str = _flag("", "comma-separated parameter-name fragments to train besides the adapter, e.g. "
                                 "time,ln (default: none)")
    peft_targets: Optional[str] = _flag(None, "adapted modules: att, ffn, att,ffn (default) or name suffixes")
    bone_b: int = _flag(field_default(BoneConfig, "b"), "Bone block size b (must divide every adapted dimension)",
                        type=int)
    bone_grouping: str = _flag(field_default(BoneConfig, "grouping"), "Bone grouping: row (RWKV-PEFT's) | col")
    bone_form: str = _flag(field_default(BoneConfig, "form"), "Bone form: affine | unconstrained | hadamard")
    bone_impl: str = _flag(field_default(BoneConfig, "impl"), "Bone implementation: auto | factored | materialize")
    bone_config: Optional[str] = _flag(None, "Bone settings as JSON, e.g. '{\"b\": 64}' (RWKV-PEFT's bone_r also)")
    lora_r: int = _flag(field_default(LoraConfig, "r"), "LoRA / PiSSA rank", type=int)
    lora_alpha: Optional[float] = _flag(None, f"LoRA / PiSSA alpha (default: {field_default(LoraConfig, 'alpha'):g} "
                                              f"for LoRA, r for PiSSA)", type=float)
    lora_dropout: float = _flag(field_default(LoraConfig, "dropout"), "LoRA dropout", type=float)
    lora_config: Optional[str] = _flag(None, "LoRA settings as JSON (r, alpha, dropout or lora_r, ...)")
    svd_niter: int = _flag(field_default(PissaConfig, "svd_niter"), "PiSSA: svd_lowrank iterations", type=int)
    pissa_config: Optional[str] = _flag(None, "PiSSA settings as JSON (r, alpha, svd_niter or pissa_r, ...)")
    miss_r: int = _flag(field_default(MissConfig, "r"), "MiSS block width r (HF peft's r; must divide every adapted "
                                                        "in_features)", type=int)
    miss_form: str = _flag(field_default(MissConfig, "form"), "MiSS form: default (a (r, out) shard) | mini (an "
                                                              "(r, mini_r) shard tiled over the output)")
    miss_mini_r: int = _flag(field_default(MissConfig, "mini_r"), "MiSS mini form: the shard's output width (must "
                                                                  "divide every adapted out_features)", type=int)
    miss_config: Optional[str] = _flag(None, "MiSS settings as JSON in HF peft's MissConfig keys, e.g. "
                                             "'{\"r\": 64, \"init_weights\": \"mini\", \"mini_r\": 64}'")
    # engine
    strategy: str = _flag("deepspeed_stage_2", "deepspeed_stage_{1,2,3}[_offload], ddp, auto (single device)")
    accelerator: str = _flag("auto", "auto | cpu | gpu")
    devices: int = _flag(1, "processes (GPUs or CPU workers) per node", type=int)
    num_nodes: int = _flag(1, "nodes", type=int)
    precision: Optional[str] = _flag(None, "bf16 | fp16 | fp32 (also 32) | tf32; default bf16 on GPU, fp32 on CPU")
    grad_cp: str = _flag("none", "gradient checkpointing: none|0, layer|1 (whole blocks), bone (Bone weights)")
    ds_bucket_mb: int = _flag(200, "DeepSpeed allgather/reduce bucket size in MB", type=int)
    num_threads: Optional[int] = _flag(None, "CPU threads for torch (default: torch's choice)", type=int)
    # continuing from an adapter file, and RWKV-PEFT's launcher flags
    init_adapter: Optional[str] = _flag(None, "start a new run (fresh optimizer, schedule from step 0) from this "
                                              "adapter's tensors: train.py's adapter-*.pth, an RWKV-PEFT .pth or an "
                                              "HF peft directory; --peft and its settings must match the file")
    wandb: Optional[str] = _flag(None, "Weights & Biases project to log to (needs `pip install wandb`; WANDB_MODE="
                                       "offline logs without network)")
    pre_ffn: int = _flag(0, "RWKV-PEFT's flag; only 0 exists in RWKV6/RWKV-7", type=int)
    head_qk: int = _flag(0, "RWKV-PEFT's flag; only 0 exists in RWKV6/RWKV-7", type=int)
    quant: str = _flag("none", "RWKV-PEFT's base quantisation; only none is supported here")

    def __post_init__(self):
        self._coerce_types()
        for name in ("load_model", "data_file", "peft_targets", "bone_config", "lora_config", "pissa_config",
                     "miss_config", "init_adapter", "wandb"):
            if isinstance(getattr(self, name), str) and not getattr(self, name).strip():
                setattr(self, name, None)  # an empty value (e.g. from a YAML template) means "not given"
        self._validate()

    def _coerce_types(self):
        # YAML gives strings for values like 6e-4 and lists for pairs: convert as the flag's type would.
        for item in fields(self):
            value, kind = getattr(self, item.name), item.metadata.get("type")
            if value is None or item.name == "config":
                continue
            try:
                if item.metadata.get("action") == "store_true":
                    value = _bool(value)
                elif kind is not None and not isinstance(value, bool if kind is _bool else kind):
                    value = kind(value)
                elif kind is float and isinstance(value, int):
                    value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"--{item.name}: {value!r} is not a valid {getattr(kind, '__name__', 'value')}") \
                    from None
            if item.metadata.get("nargs") == 2:
                value = tuple(value) if isinstance(value, (list, tuple)) else tuple(str(value).split())
                if len(value) != 2:
                    raise ValueError(f"--{item.name} takes two names, got {value!r}")
            setattr(self, item.name, value)

    def _validate(self):
        def choose(name, table):
            value = getattr(self, name)
            key = str(value).lower() if value is not None else value
            if key not in table:
                names = ", ".join(table if isinstance(table, tuple) else dict.fromkeys(table))
                raise ValueError(f"unknown --{name} {value!r}; choose one of {names}")
            return table[key] if isinstance(table, dict) else key

        self.peft = choose("peft", PEFT_METHODS)
        self.grad_cp = choose("grad_cp", GRAD_CP_CHOICES)
        if self.precision is not None:
            self.precision = choose("precision", PRECISION_CHOICES)
        self.lr_schedule = choose("lr_schedule", LR_SCHEDULES)
        self.accelerator = choose("accelerator", ACCELERATORS)
        self.tokenizer = choose("tokenizer", TOKENIZERS)
        self.optim = choose("optim", OPTIMIZERS)
        self.wkv_op = choose("wkv_op", WKV_REQUESTS)
        if self.arch is not None:
            self.arch = choose("arch", ARCHES)
        self.data_type = choose("data_type", DATA_TYPES)
        self.dataload = choose("dataload", DATALOADS)
        self.strategy = choose("strategy", STRATEGY_NAMES)
        if self.loss_mask is None:
            self.loss_mask = "qa" if self.data_type == "sft" else "none"
        self.loss_mask = choose("loss_mask", LOSS_MASKS)

        positive = ("ctx_len", "micro_bsz", "epoch_steps", "epoch_count", "accumulate_grad_batches", "devices",
                    "num_nodes", "head_size_a", "ds_bucket_mb")
        for name in positive + ("n_layer", "n_embd", "vocab_size", "dim_ffn", "dim_maa_lora", "dim_decay_lora",
                                "num_threads"):
            value = getattr(self, name)
            if (value is not None or name in positive) and value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value}")
        for name in ("epoch_begin", "epoch_save", "save_every_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.epoch_steps % self.accumulate_grad_batches:
            raise ValueError(
                f"--epoch_steps {self.epoch_steps} is not a multiple of --accumulate_grad_batches "
                f"{self.accumulate_grad_batches}: every optimizer step must sum the same number of micro-batches; "
                f"choose epoch_steps as a multiple of it"
            )
        if self.lr_init <= 0 or self.lr_final < 0:
            raise ValueError(f"--lr_init must be > 0 and --lr_final >= 0, got {self.lr_init} and {self.lr_final}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.adam_eps <= 0 or self.weight_decay < 0:
            raise ValueError("--beta1/--beta2 must lie in [0, 1), --adam_eps > 0 and --weight_decay >= 0")
        if self.gradient_clip_val < 0:
            raise ValueError(f"--gradient_clip_val must be >= 0, got {self.gradient_clip_val}")
        if self.optim == "adam" and self.weight_decay > 0:
            raise ValueError("--optim adam has no decoupled weight decay; use --optim adamw with --weight_decay, or "
                             "drop --weight_decay")
        if self.fresh and self.resume:
            raise ValueError("--resume and --fresh contradict each other: pick one")
        unknown = [name for name in self.changes_on_resume if name not in CHANGEABLE_ON_RESUME]
        if unknown:
            raise ValueError(f"--change_on_resume {','.join(unknown)}: only {', '.join(CHANGEABLE_ON_RESUME)} may "
                             f"change when a run resumes; to change anything else start a new run (another "
                             f"--proj_dir, or --fresh)")
        for name, what in (("pre_ffn", "RWKV-4's first-layer FFN in place of attention"),
                           ("head_qk", "RWKV-4's extra q/k head over the output")):
            if getattr(self, name) != 0:
                raise ValueError(f"--{name} {getattr(self, name)}: {what} is not part of RWKV6/RWKV-7 models (their "
                                 f"checkpoints have no such weights); only --{name} 0 is accepted (or drop it)")
        if str(self.quant).lower() != "none":
            raise ValueError(f"--quant {self.quant}: training on a quantised base (RWKV-PEFT's bitsandbytes "
                             f"int8/nf4/fp4/fp8) is not supported here; drop --quant (the base trains in --precision, "
                             f"bf16 on GPU)")
        if self.init_adapter and self.peft == "none":
            raise ValueError(f"--init_adapter {self.init_adapter} continues an adapter: pass --peft with the file's "
                             f"method (and its settings)")
        if self.chunk_ctx is not None and not 1 <= self.chunk_ctx <= self.ctx_len:
            raise ValueError(f"--chunk_ctx must be between 1 and --ctx_len {self.ctx_len}, got {self.chunk_ctx}; "
                             f"leave it out to train each sample in one pass")
        if self.peft == "state":
            self._check_state_tuning_flags()
        if self.grad_cp == "bone" and self.peft != "bone":
            raise ValueError(f"--grad_cp bone recomputes Bone's weights, but --peft is {self.peft!r}; use "
                             f"--grad_cp layer")

    def _check_state_tuning_flags(self):
        defaults = {f.name: f.default for f in fields(self)}
        given = [f"--{name}" for name in ADAPTER_SETTING_FLAGS + ADAPTER_JSON_FLAGS + ("peft_targets",)
                 if getattr(self, name) != defaults[name]]
        if self.train_parts.strip():
            given.append("--train_parts")
        if self.strategy.startswith("deepspeed_stage_3"):
            # ZeRO-3 gathers a parameter only inside its module's forward; the states are read before the model's.
            raise ValueError(f"--peft state does not run under --strategy {self.strategy} (ZeRO-3 partitions the "
                             f"trained states); use deepspeed_stage_2 (the states are a few MB)")
        if given:
            raise ValueError(f"--peft state trains only the initial WKV states (every weight frozen), but "
                             f"{', '.join(given)} set{'s' if len(given) == 1 else ''} adapter settings; drop "
                             f"{'it' if len(given) == 1 else 'them'}, or choose that adapter with --peft")

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def changes_on_resume(self) -> tuple:
        """The --change_on_resume names."""
        return tuple(name.strip().lstrip("-") for name in str(self.change_on_resume or "").split(",") if name.strip())

    @property
    def forward_len(self) -> int:
        """The most tokens one model forward sees: --chunk_ctx when training in chunks, else --ctx_len."""
        return self.chunk_ctx or self.ctx_len

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def uses_deepspeed(self) -> bool:
        return is_deepspeed(self.strategy)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return self.epoch_steps // self.accumulate_grad_batches

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (epoch_begin .. epoch_begin + epoch_count - 1)."""
        return self.epoch_count * self.steps_per_epoch

    def to_dict(self) -> dict:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: one flag per TrainConfig field; flags not given are left out of the namespace."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Fine-tune RWKV6 with Bone / LoRA / PiSSA adapters (or fully) on Lightning + DeepSpeed.",
        argument_default=argparse.SUPPRESS,
    )
    for item in fields(TrainConfig):
        meta = item.metadata
        names = (f"--{item.name}",) + tuple(meta.get("flags", ()))
        help_text = f"{meta['help']} (default: {_default_text(item)})"
        if meta.get("action") == "store_true":
            parser.add_argument(*names, dest=item.name, action="store_true", help=help_text)
        else:
            parser.add_argument(*names, dest=item.name, nargs=meta.get("nargs"), help=help_text,
                                metavar=item.name.upper() if meta.get("nargs") is None else None)
    return parser


def _default_text(item) -> str:
    default = item.default if item.default is not MISSING else None
    if isinstance(default, tuple):
        return " ".join(default)
    return "none" if default in (None, "") else str(default)


def load_yaml_config(path: str) -> dict:
    """Flag values from a YAML mapping (keys are flag names, with or without leading dashes)."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must be a mapping of flag names to values, got a {type(data).__name__}")
    known = {f.name for f in fields(TrainConfig)} - {"config"}
    values = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name == "random_seed":
            name = "seed"
        if name not in known:
            raise ValueError(f"--config {path}: unknown key {key!r} (keys are train.py flag names, e.g. ctx_len)")
        values[name] = value
    return values


def parse_args(argv=None) -> TrainConfig:
    """TrainConfig from command-line arguments (sys.argv[1:] by default) over an optional --config YAML."""
    given = vars(build_parser().parse_args(argv))
    values = load_yaml_config(given["config"]) if given.get("config") else {}
    values.update(given)
    cfg = TrainConfig(**values)
    check_given_settings(cfg, command_line=set(given), given=set(values))  # settings of another method, or twice
    return cfg
