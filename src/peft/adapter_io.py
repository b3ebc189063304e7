"""Adapter files: what is saved, how it is checked against the base model, and how a run is restored exactly.

An adapter file is a `torch.save`d dict written atomically (src.checkpoint.save_atomic):

    format, format_version      "rwkv6-peft-adapter", 1
    method, config              e.g. "bone", BoneConfig.to_dict()
    targets, train_parts        resolved module-name suffixes, train-part substrings
    adapted, base_shapes        adapted module names, {name: [out_features, in_features]}
    base_fingerprint            see `base_fingerprint`
    tensors                     {full parameter/buffer name: tensor} = adapter_state_dict(model), on the CPU
    extra                       caller's metadata (plain Python values: numbers, strings, lists, dicts)

Base fingerprint: "sha256:" + 16 hex digits of a SHA-256 over, for each targeted weight in name order, its module
name, its shape, and a fixed strided sample of at most 4096 of its values (every ⌈numel/4096⌉-th element of the
flattened tensor) rounded to bf16 and hashed as fp32 bytes. It reads ~4 k values per layer, so it is cheap even on a
memory-mapped 7B checkpoint; the bf16 rounding makes the fp32 and bf16 copies of one checkpoint agree, while any
other base (different training, different init) differs.
"""

import hashlib
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from src.peft.inject import (
    _apply,
    adapter_modules,
    config_from_dict,
    get_peft_state,
    name_matches,
    resolve_targets,
)
from src.peft.lora import PissaLinear

FORMAT = "rwkv6-peft-adapter"
FORMAT_VERSION = 1
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
    suffixes = resolve_targets(targets)
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


def adapter_state_dict(model: nn.Module) -> dict:
    """{full name: tensor} of every adapter tensor (PiSSA's initial A, B included) and every train_parts parameter."""
    state = get_peft_state(model)
    tensors = {}
    for module_name, module in adapter_modules(model):
        for local, tensor in module.adapter_tensors().items():
            tensors[f"{module_name}.{local}"] = tensor.detach()
    params = dict(model.named_parameters())
    for name in state.train_part_names:
        tensors[name] = params[name].detach()
    return tensors


def save_adapter(model: nn.Module, path, config=None, base_fingerprint: Optional[str] = None,
                 extra: Optional[dict] = None) -> Path:
    """Write the adapter of `model` (see the module docstring for the layout) atomically to `path`.

    config and base_fingerprint default to what apply_peft recorded; when given they must agree with it.
    """
    state = get_peft_state(model)
    if config is not None and config.to_dict() != state.config.to_dict():
        raise ValueError(f"save_adapter: config {config.to_dict()} differs from the model's {state.config.to_dict()}")
    fingerprint = base_fingerprint if base_fingerprint is not None else state.base_fingerprint
    if fingerprint is None:
        raise ValueError("save_adapter: the base fingerprint is unknown (model built on the meta device?); "
                         "pass base_fingerprint=base_fingerprint(base_state_dict)")
    if state.base_fingerprint is not None and fingerprint != state.base_fingerprint:
        raise ValueError(f"save_adapter: base_fingerprint {fingerprint} is not the fingerprint of the base this "
                         f"model was adapted from ({state.base_fingerprint})")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": state.config.method,
        "config": state.config.to_dict(),
        "targets": list(state.targets),
        "train_parts": list(state.train_parts),
        "adapted": list(state.adapted),
        "base_shapes": {n: list(s) for n, s in state.base_shapes.items()},
        "base_fingerprint": fingerprint,
        "tensors": {n: t.to("cpu", copy=True) for n, t in adapter_state_dict(model).items()},
        "extra": dict(extra or {}),
    }
    # Imported here: src.checkpoint imports the model package, which `import src.peft` should not need.
    from src.checkpoint import save_atomic

    return save_atomic(payload, path)


def read_adapter(path) -> dict:
    """The checked contents of an adapter file (FileNotFoundError / ValueError with the reason otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path} (save_adapter writes one)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable adapter file ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an adapter file written by save_adapter (format '{FORMAT}')")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has adapter format version {payload.get('format_version')}; this code reads "
                         f"version {FORMAT_VERSION}")
    return payload


def check_base(payload: dict, base_shapes: dict, fingerprint: Optional[str], source: str = "adapter") -> None:
    """Refuse (ValueError) a base whose targeted shapes or fingerprint differ from those stored in the adapter."""
    stored = payload["base_shapes"]
    missing = sorted(set(stored) - set(base_shapes))
    if missing:
        raise ValueError(f"{source} adapts {missing[:5]}{' ...' if len(missing) > 5 else ''} which this base lacks "
                         f"(nn.Linear with those names): it was trained on another model")
    wrong = [f"{n}: adapter {stored[n]} vs base {list(base_shapes[n])}" for n in stored
             if list(base_shapes[n]) != list(stored[n])]
    if wrong:
        raise ValueError(f"{source} was trained on a base with other shapes: {wrong[:5]}")
    if fingerprint != payload["base_fingerprint"]:
        raise ValueError(f"{source} was trained on another base model: fingerprint {payload['base_fingerprint']} "
                         f"stored, {fingerprint} for this base; load the base checkpoint it was trained on")


def load_adapter(model: nn.Module, path, base_fingerprint: Optional[str] = None) -> dict:
    """Re-apply a saved adapter's config to a fresh (unadapted, loaded) base model and load its tensors exactly.

    base_fingerprint: the base's fingerprint if already known (e.g. computed from its state dict); by default it is
    computed from the model. Returns the file's metadata (everything but the tensors, `extra` included).
    """
    payload = read_adapter(path)
    if getattr(model, "peft_state", None) is not None or adapter_modules(model):
        raise ValueError("load_adapter expects a fresh base model (it applies the stored config itself); this one "
                         "already has adapters")
    config = config_from_dict(payload["config"])
    modules = dict(model.named_modules())
    shapes = {n: list(modules[n].weight.shape) for n in payload["base_shapes"]
              if isinstance(modules.get(n), nn.Linear)}
    if base_fingerprint is None:
        base_fingerprint = fingerprint_weights({n: modules[n].weight for n in shapes}) if shapes else None
    check_base(payload, shapes, base_fingerprint, source=f"adapter {path}")

    adapted = _apply(model, config, payload["targets"], payload["train_parts"], initialise=False,
                     base_fingerprint=payload["base_fingerprint"])
    if adapted != payload["adapted"]:
        raise ValueError(f"adapter {path}: its targets match other modules in this model ({adapted[:3]} ...) "
                         f"than when it was saved ({payload['adapted'][:3]} ...)")
    stored = payload["tensors"]
    own = adapter_state_dict(model)
    if set(own) != set(stored):
        raise ValueError(f"adapter {path} does not fit this model: missing {sorted(set(own) - set(stored))[:5]}, "
                         f"unexpected {sorted(set(stored) - set(own))[:5]}")
    wrong = [f"{n}: file {tuple(stored[n].shape)} vs model {tuple(own[n].shape)}" for n in own
             if stored[n].shape != own[n].shape]
    if wrong:
        raise ValueError(f"adapter {path} tensor shapes differ from this model's: {wrong[:5]}")
    with torch.no_grad():
        for name, module in adapter_modules(model):
            if isinstance(module, PissaLinear):
                module.set_principal(stored[f"{name}.pissa_init_A"], stored[f"{name}.pissa_init_B"])
        for name, tensor in own.items():
            tensor.copy_(stored[name])
    return {k: v for k, v in payload.items() if k != "tensors"}


__all__ = [
    "FORMAT", "FORMAT_VERSION", "adapter_state_dict", "base_fingerprint", "check_base",
    "fingerprint_weights", "load_adapter", "read_adapter", "save_adapter",
]
