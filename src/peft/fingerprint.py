"""The base fingerprint: which base model an adapter was trained on, cheap enough for a memory-mapped 7B file.

"sha256:" + 16 hex digits of a SHA-256 over, for each targeted weight in name order, its module name, its shape,
and a fixed strided sample of at most 4096 of its values (every ⌈numel/4096⌉-th element of the flattened tensor)
rounded to bf16 and hashed as fp32 bytes. It reads ~4 k values per layer; the bf16 rounding makes the fp32 and bf16
copies of one checkpoint agree, while any other base (different training, different init) differs.
"""

import hashlib

import torch
import torch.nn as nn

from src.peft.targets import generation_of, name_matches, resolve_targets

FINGERPRINT_SAMPLES = 4096


def fingerprint_weights(named_weights: dict) -> str:
    """The fingerprint of {module name: weight tensor} (see the module docstring)."""
    if not named_weights:
        raise ValueError("base fingerprint: no targeted weights found")
    digest = hashlib.sha256()
    for name in sorted(named_weights):
        weight = named_weights[name]
        if weight.is_meta:
            raise ValueError(f"base fingerprint: {name} is on the meta device (no values); load the base weights")
        flat = weight.detach().reshape(-1)
        stride = max(1, -(-flat.numel() // FINGERPRINT_SAMPLES))
        sample = flat[::stride].to(device="cpu", dtype=torch.bfloat16).to(torch.float32)
        digest.update(f"{name}:{tuple(weight.shape)}:".encode())
        digest.update(sample.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def base_fingerprint(state_dict_or_model, targets=None) -> str:
    """Fingerprint of the base weights of the targeted layers of a state dict or a model (targets as apply_peft).

    For a model that apply_peft already adapted, the fingerprint recorded before adapting is returned (PiSSA
    replaces W by its residual, so the weights in the model are no longer the base).
    """
    names = (state_dict_or_model.state_dict() if isinstance(state_dict_or_model, nn.Module)
             else state_dict_or_model if isinstance(state_dict_or_model, dict) else {})
    suffixes = resolve_targets(targets, generation_of(names))
    if isinstance(state_dict_or_model, nn.Module):
        state = getattr(state_dict_or_model, "peft_state", None)
        if state is not None and state.base_fingerprint and (targets is None or suffixes == state.targets):
            return state.base_fingerprint
        named = {n: m.weight for n, m in state_dict_or_model.named_modules()
                 if n and name_matches(n, suffixes) and isinstance(getattr(m, "weight", None), torch.Tensor)}
    elif isinstance(state_dict_or_model, dict):
        named = {k[: -len(".weight")]: t for k, t in state_dict_or_model.items()
                 if k.endswith(".weight") and name_matches(k[: -len(".weight")], suffixes)}
    else:
        raise ValueError(f"base_fingerprint takes a state dict or an nn.Module, got {type(state_dict_or_model)}")
    if not named:
        raise ValueError(f"base fingerprint: no weight matches the targets {list(suffixes)}")
    return fingerprint_weights(named)
