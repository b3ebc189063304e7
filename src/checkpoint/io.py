"""Reading official RWKV checkpoints, inferring their shape, and writing files atomically.

Official RWKV `.pth` files are flat state dicts (`emb.weight`, `blocks.N.att....`, `head.weight`). The RWKV
generation of a file is told by its keys, so a checkpoint of another generation is refused with its name
instead of being half-loaded.
"""

import re
from pathlib import Path

import torch

from src.checkpoint.files import atomic_binary_file
from src.model.rwkv6 import RWKV6Config

RWKV_HOWTO = (
    "RWKV6 checkpoints are named RWKV-x060-World-*.pth (e.g. from the Hugging Face repo BlinkDL/rwkv-6-world)"
)


def save_atomic(obj, path) -> Path:
    """torch.save to `path` atomically (src/checkpoint/files.py): never a truncated checkpoint."""
    with atomic_binary_file(path) as handle:
        torch.save(obj, handle)
    return Path(path)


def detect_rwkv_version(state_dict: dict) -> str:
    """'x060' for RWKV6; 'x070', 'x052', 'v4' for the other generations; 'unknown' otherwise."""
    keys = state_dict.keys()

    def has(suffix):
        return any(k.endswith(suffix) for k in keys)

    if has("att.x_r") or has("att.w0") or has("att.a0"):
        return "x070"
    if has("att.time_maa_x") or has("att.time_maa_w1"):
        return "x060"
    if has("att.time_mix_k") and has("att.ln_x.weight"):
        return "x052"
    if has("att.time_mix_k") and has("att.time_first"):
        return "v4"
    return "unknown"


_VERSION_NAMES = {"x070": "RWKV-7 (x070)", "x052": "RWKV-5 (x052, Eagle)", "v4": "RWKV-4"}


def load_rwkv_state_dict(path) -> dict:
    """Load the tensors of an RWKV6 checkpoint on the CPU, refusing files that are not one (with the reason)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RWKV checkpoint not found: {path}. {RWKV_HOWTO}.")
    try:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Files written with the legacy (non-zip) serializer cannot be memory-mapped.
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {error}). "
            f"Pass the .pth file of an RWKV6 model; {RWKV_HOWTO}."
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        if isinstance(state_dict, dict) and "adapter" in state_dict:
            raise ValueError(f"{path} is an adapter file, not a base model: pass it with --adapter, and the base .pth with --base/--load_model")
        if isinstance(state_dict, dict) and ({"state_dict", "module"} & set(state_dict)):
            raise ValueError(
                f"{path} is a training checkpoint (Lightning/DeepSpeed), not model weights: use the .pth "
                f"written by train.py (adapter or full model) or an official RWKV6 release"
            )
        raise ValueError(f"{path} does not hold a flat dict of tensors as RWKV checkpoints do. {RWKV_HOWTO}.")
    version = detect_rwkv_version(state_dict)
    if version != "x060":
        if version in _VERSION_NAMES:
            raise ValueError(
                f"{path} is an {_VERSION_NAMES[version]} checkpoint; this trainer supports RWKV6 (x060) only. "
                f"{RWKV_HOWTO}."
            )
        raise ValueError(f"{path} has no RWKV6 keys (e.g. blocks.0.att.time_maa_x): it is not an RWKV6 checkpoint. {RWKV_HOWTO}.")
    return state_dict


def _require(state_dict, key):
    if key not in state_dict:
        raise ValueError(f"checkpoint is missing '{key}', which every RWKV6 checkpoint has: the file is incomplete or not an official RWKV6 model")
    return state_dict[key]


def infer_config(state_dict: dict) -> RWKV6Config:
    """The model shape, read from tensor shapes alone (never from a file name), checked for consistency."""
    emb = _require(state_dict, "emb.weight")
    vocab_size, n_embd = emb.shape
    layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layer_ids:
        raise ValueError("checkpoint has no 'blocks.N.*' tensors: it is not an RWKV6 model")
    n_layer = max(layer_ids) + 1
    missing_layers = sorted(set(range(n_layer)) - layer_ids)
    if missing_layers:
        raise ValueError(f"checkpoint has blocks up to {n_layer - 1} but none for layers {missing_layers}: the file is incomplete")
    n_head, head_size = _require(state_dict, "blocks.0.att.time_faaaa").shape
    config = RWKV6Config(
        n_layer=n_layer,
        n_embd=n_embd,
        vocab_size=vocab_size,
        dim_ffn=_require(state_dict, "blocks.0.ffn.key.weight").shape[0],
        head_size=head_size,
        dim_maa_lora=_require(state_dict, "blocks.0.att.time_maa_w1").shape[1] // 5,
        dim_decay_lora=_require(state_dict, "blocks.0.att.time_decay_w1").shape[1],
    )
    check_against_config(state_dict, config)
    return config


def expected_shapes(config: RWKV6Config) -> dict:
    """Every key of an RWKV6 checkpoint of this shape, with its tensor shape."""
    from src.model.rwkv6 import RWKV6

    with torch.device("meta"):
        model = RWKV6(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_against_config(state_dict: dict, config: RWKV6Config):
    """Raise a ValueError listing missing keys, unexpected keys and wrong shapes, if any."""
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"inconsistent shapes ({len(wrong)}): {'; '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''}")
    if problems:
        shape = f"L{config.n_layer} D{config.n_embd} F{config.dim_ffn} vocab {config.vocab_size}"
        raise ValueError(
            f"checkpoint does not match an RWKV6 model of the shape its tensors imply ({shape}): "
            + " | ".join(problems)
            + ". The file is damaged, or it is not an official-layout RWKV6 checkpoint (merge adapters with "
            "`python -m src.merge` before loading)."
        )


def save_official(model, path, dtype=None) -> Path:
    """Write a model's weights as an official-layout RWKV6 `.pth` (same keys; contiguous tensors)."""
    tensors = {
        k: (v.detach().to(dtype) if dtype is not None else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    return save_atomic(tensors, path)
