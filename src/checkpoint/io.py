"""Reading official RWKV checkpoints into models, and writing models back in the official layout.

Official RWKV `.pth` files are flat state dicts (`emb.weight`, `blocks.N.att....`, `head.weight`). The RWKV
generation of a file is told by its keys, so a checkpoint of another generation is refused with its name
instead of being half-loaded. Every entry point loads through `load_rwkv`, with a WKV op already chosen for the
run's device (`src.ops.resolve_wkv_op`); shapes are the model package's business (`RWKV6Config.from_state_dict`).

    checkpoint = read_checkpoint(path)                    # memory-mapped tensors, version checked
    config = RWKV6Config.from_state_dict(checkpoint)      # shapes only: cheap
    choice = resolve_wkv_op("auto", device, config.head_size, dtype)
    model = load_rwkv(checkpoint, choice.op, dtype=dtype, device=device)
"""

from pathlib import Path

import torch

from src.checkpoint.files import save_atomic
from src.checkpoint.tensorfiles import is_safetensors_file, read_safetensors
from src.model import RWKV6, RWKV7, RWKV6Config, RWKV7Config
from src.ops import resolve_wkv_op
from src.ops.wkv7 import resolve_wkv7_op

RWKV_HOWTO = (
    "RWKV6 checkpoints are named RWKV-x060-World-*.pth (e.g. from the Hugging Face repo BlinkDL/rwkv-6-world)"
)
ADAPTER_KEY_ENDINGS = (".bone", ".lora_A", ".lora_B", ".lora_a", ".lora_b", ".disha", ".miss_block", ".bone_block",
                       ".lora_A.weight", ".lora_B.weight")
_VERSION_NAMES = {"x052": "RWKV-5 (x052, Eagle)", "v4": "RWKV-4"}
SUPPORTED_VERSIONS = ("x060", "x070")  # RWKV6 and RWKV-7: loaded as RWKV6 / RWKV7
# Keys only the pre-release x070 had (it also has x060-like time_maa_*): dispatched to RWKV7, which refuses it.
_PRE_RELEASE_X070 = ("att.time_aaaaa", "att.time_misc_kkk", "att.time_misc_a", "att.mv_w1", "att.time_maa_a")


def detect_rwkv_version(state_dict: dict) -> str:
    """'x060' for RWKV6, 'x070' for RWKV-7 (the pre-release x070 naming too, which RWKV7 refuses by name);
    'x052', 'v4' for the older generations; 'unknown' otherwise."""
    keys = state_dict.keys()

    def has(suffix):
        return any(k.endswith(suffix) for k in keys)

    if has("att.x_r") or has("att.w0") or has("att.a0") or any(has(suffix) for suffix in _PRE_RELEASE_X070):
        return "x070"
    if has("att.time_maa_x") or has("att.time_maa_w1"):
        return "x060"
    if has("att.time_mix_k") and has("att.ln_x.weight"):
        return "x052"
    if has("att.time_mix_k") and has("att.time_first"):
        return "v4"
    return "unknown"


def _not_model_weights(path: Path, content) -> str:
    """Why `content` (a loaded file that is not a flat dict of tensors) is not a base model, and what to pass."""
    if isinstance(content, dict) and "tensors" in content and "format" in content:
        return (f"{path} is an adapter file ({content.get('format')}, method {content.get('method')!r}), not a base "
                f"model: merge it first (python -m src.merge --base BASE.pth --adapter {path} --output MERGED.pth), "
                f"or pass it with --adapter and the base .pth with --base")
    if isinstance(content, dict) and ({"state_dict", "module"} & set(content)):
        return (f"{path} is a training checkpoint (Lightning/DeepSpeed), not model weights: use the .pth written by "
                f"train.py (adapter or full model) or an official RWKV6 release")
    return f"{path} does not hold a flat dict of tensors as RWKV checkpoints do. {RWKV_HOWTO}."


def read_checkpoint(path) -> dict:
    """The tensors of an RWKV6 (x060) or RWKV-7 (x070) checkpoint on the CPU: a torch .pth (memory-mapped) or a
    .safetensors file (told apart by content); files that are not one are refused with the reason (another RWKV
    generation, an adapter file, a training checkpoint, not a torch file)."""
    path = Path(path)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        raise ValueError(f"{path} is an HF peft adapter directory, not a base model: pass it with --adapter and "
                         f"the base .pth with --base/--load_model")
    if not path.is_file():
        raise FileNotFoundError(f"RWKV checkpoint not found: {path}. {RWKV_HOWTO}.")
    if is_safetensors_file(path):
        return checked_model_weights(path, read_safetensors(path))
    try:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Files written with the legacy (non-zip) serializer cannot be memory-mapped.
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {error}). "
            f"Pass the .pth (or .safetensors) file of an RWKV6 model; {RWKV_HOWTO}."
        ) from None
    return checked_model_weights(path, state_dict)


def checked_model_weights(path: Path, state_dict) -> dict:
    """state_dict when it is the flat weights of a supported generation; ValueError with the reason otherwise."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(_not_model_weights(path, state_dict))
    version = detect_rwkv_version(state_dict)
    if version in SUPPORTED_VERSIONS:
        return state_dict
    if version in _VERSION_NAMES:
        raise ValueError(f"{path} is an {_VERSION_NAMES[version]} checkpoint; this trainer supports RWKV-7 (x070) "
                         f"and RWKV6 (x060) only. {RWKV_HOWTO}.")
    adapter_keys = [k for k in state_dict if k.endswith(ADAPTER_KEY_ENDINGS)]
    if adapter_keys:
        raise ValueError(f"{path} holds adapter tensors (e.g. {adapter_keys[0]}), not a base model: pass it with "
                         f"--adapter and the base .pth with --base/--load_model")
    raise ValueError(f"{path} has no RWKV6 keys (e.g. blocks.0.att.time_maa_x): it is not an RWKV6 checkpoint. "
                     f"{RWKV_HOWTO}.")


def check_finite_tensors(tensors: dict, source: str) -> None:
    """Refuse (ValueError) a dict of tensors holding NaN or infinity, naming the first such tensor, how many
    values are bad and how many tensors are affected: a model served, merged or trained from such weights
    produces NaN everywhere. Integer tensors are skipped; the check reads every value once."""
    bad = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.is_meta:
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad.append((name, int(finite.numel() - finite.sum()), finite.numel()))
    if bad:
        name, count, numel = bad[0]
        others = f" ({len(bad) - 1} more tensor(s) also, e.g. {bad[1][0]})" if len(bad) > 1 else ""
        raise ValueError(f"{source}: tensor {name} holds {count} non-finite value(s) (NaN or inf) of {numel}"
                         f"{others}; these weights are broken. Use a checkpoint written before the values "
                         f"diverged, or re-download / re-train it")


def load_rwkv(source, wkv_op: str, dtype=None, device=None):
    """The model of a checkpoint (a path, or the dict `read_checkpoint` returned), loaded strictly.

    `wkv_op` must already be chosen for the device the model will run on (`src.ops.resolve_wkv_op`): loading
    never chooses it again. dtype None keeps the stored dtype; device None keeps the CPU.
    """
    state_dict = source if isinstance(source, dict) else read_checkpoint(source)
    if detect_rwkv_version(state_dict) == "x070":  # an RWKV7; RWKV7.from_state_dict refuses wkv_op "cuda" for now
        return RWKV7.from_state_dict(state_dict, wkv_op=wkv_op, dtype=dtype, device=device)
    return RWKV6.from_state_dict(state_dict, wkv_op=wkv_op, dtype=dtype, device=device)


def load_for_inference(state_dict: dict, wkv_request: str, device, dtype, report=None):
    """A model to serve from official-layout weights on `device`: the WKV op is chosen here, once, for that
    device, the file's head size and `dtype` (`report` gets "auto"'s note), then the weights load with it, in
    eval mode, without gradients."""
    if detect_rwkv_version(state_dict) == "x070":  # RWKV-7 has its own op choice (no CUDA kernel yet)
        config, resolve = RWKV7Config.from_state_dict(state_dict), resolve_wkv7_op
    else:
        config, resolve = RWKV6Config.from_state_dict(state_dict), resolve_wkv_op
    choice = resolve(wkv_request, device, head_size=config.head_size, dtype=dtype)
    if choice.note and report is not None:
        report(choice.note)
    return load_rwkv(state_dict, choice.op, dtype=dtype, device=device).eval().requires_grad_(False)


def save_official(model, path, dtype=None) -> Path:
    """Write a model's weights as an official-layout RWKV6 `.pth` (same keys; contiguous tensors)."""
    tensors = {
        k: (v.detach().to(dtype) if dtype is not None else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    return save_atomic(tensors, path)
