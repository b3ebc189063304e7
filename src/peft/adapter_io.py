"""Adapter files: what is saved, how it is checked against the base model, and how a run is restored exactly.

An adapter file is a `torch.save`d dict written atomically (src.checkpoint.files.save_atomic):

    format, format_version      "rwkv6-peft-adapter", 1
    method, config              e.g. "bone", BoneConfig.to_dict()
    targets, train_parts        resolved module-name suffixes, train-part substrings
    adapted, base_shapes        adapted module names, {name: [out_features, in_features]}
    base_fingerprint            of the targeted base weights before adapting (src.peft.fingerprint)
    tensors                     {full parameter/buffer name: tensor} = adapter_state_dict(model), on the CPU
    extra                       caller's metadata (plain Python values: numbers, strings, lists, dicts)
    train_names                 exact parameter names trained besides train_parts (kept from an RWKV-PEFT file)

`read_adapter` and `load_adapter` also take the files of RWKV-PEFT and HF peft (src.peft.formats), told apart by
content; those carry no base fingerprint, so their tensors' shapes are what is checked against the base.

Loading rebuilds the stored config on a fresh base with `inject_adapters` and hands each adapter its tensors
(`AdapterLinear.load_tensors`), so no method needs code here.
"""

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from src.checkpoint.files import save_atomic
from src.checkpoint.tensorfiles import is_safetensors_file
from src.peft.fingerprint import fingerprint_weights
from src.peft.formats import read_foreign
from src.peft.inject import adapter_modules, get_peft_state, inject_adapters
from src.peft.registry import config_from_dict

# Settings that choose how an adapter computes or trains, not what its tensors mean: a run continuing from a file
# (--init_adapter) may set them differently.
COMPUTE_ONLY_FIELDS = ("impl", "checkpoint", "dropout", "svd_niter")

FORMAT = "rwkv6-peft-adapter"
FORMAT_VERSION = 1


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
        "train_names": list(state.train_names),
    }
    return save_atomic(payload, path)


def read_adapter(path) -> dict:
    """The checked contents of an adapter file of any accepted format (see the module docstring), as save_adapter
    lays them out; FileNotFoundError / ValueError with the reason otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter file not found: {path} (save_adapter writes one)")
    if path.is_dir() or is_safetensors_file(path):
        return read_foreign(path, None)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable adapter file ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return read_foreign(path, payload)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has adapter format version {payload.get('format_version')}; this code reads "
                         f"version {FORMAT_VERSION}")
    return payload


def meaning_of(config_dict: dict) -> dict:
    """A config's settings that decide what its tensors mean (COMPUTE_ONLY_FIELDS left out)."""
    return {k: v for k, v in config_dict.items() if k not in COMPUTE_ONLY_FIELDS}


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


def load_adapter(model: nn.Module, path, base_fingerprint: Optional[str] = None, config=None) -> dict:
    """Re-apply a saved adapter's config to a fresh (unadapted, loaded) base model and load its tensors exactly.

    base_fingerprint: the base's fingerprint if already known (e.g. computed from its state dict); by default it is
    computed from the model. config: the config to build the adapters with instead of the file's (it must mean the
    same: only COMPUTE_ONLY_FIELDS may differ). On a meta-device model only the structure is built and checked.
    Returns the file's metadata (everything but the tensors, `extra` included).
    """
    payload = read_adapter(path)
    if getattr(model, "peft_state", None) is not None or adapter_modules(model):
        raise ValueError("load_adapter expects a fresh base model (it applies the stored config itself); this one "
                         "already has adapters")
    stored_config = config_from_dict(payload["config"])
    if config is not None and meaning_of(config.to_dict()) != meaning_of(stored_config.to_dict()):
        raise ValueError(f"adapter {path} holds a {payload['method']} adapter with "
                         f"{meaning_of(stored_config.to_dict())}, not {meaning_of(config.to_dict())}")
    config = config or stored_config
    modules = dict(model.named_modules())
    meta = any(p.is_meta for p in model.parameters())
    missing = [n for n in payload["adapted"] if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        raise ValueError(f"adapter {path} adapts {missing[:4]}{' ...' if len(missing) > 4 else ''}, which are not "
                         f"nn.Linear modules of this model (its are e.g. {linears[:4]}): it was written for another "
                         f"model")
    if payload["base_fingerprint"] is not None and not meta:
        shapes = {n: list(modules[n].weight.shape) for n in payload["base_shapes"]}
        if base_fingerprint is None:
            base_fingerprint = fingerprint_weights({n: modules[n].weight for n in shapes}) if shapes else None
        check_base(payload, shapes, base_fingerprint, source=f"adapter {path}")

    adapted = inject_adapters(model, config, payload["targets"], payload["train_parts"], initialise=False,
                              base_fingerprint=payload["base_fingerprint"],
                              train_names=payload.get("train_names", ()))
    if sorted(adapted) != sorted(payload["adapted"]):
        raise ValueError(f"adapter {path}: its targets match other modules in this model ({adapted[:3]} ...) "
                         f"than when it was saved ({payload['adapted'][:3]} ...)")
    stored = payload["tensors"]
    own = adapter_state_dict(model)
    if set(own) != set(stored):
        raise ValueError(f"adapter {path} does not fit this model: missing {sorted(set(own) - set(stored))[:5]}, "
                         f"unexpected {sorted(set(stored) - set(own))[:5]}")
    base_dims = {n: (m.out_features, m.in_features) for n, m in adapter_modules(model)}
    wrong = [f"{n}: file {tuple(stored[n].shape)} vs {tuple(own[n].shape)} for this base"
             + (f" (out, in = {base_dims[n.rpartition('.')[0]]})" if n.rpartition('.')[0] in base_dims else "")
             for n in own if stored[n].shape != own[n].shape]
    if wrong:
        raise ValueError(f"adapter {path} tensor shapes differ from this model's: {wrong[:5]}")
    if not meta:
        with torch.no_grad():
            for name, module in adapter_modules(model):
                module.load_tensors({local: stored[f"{name}.{local}"] for local in module.adapter_tensors()})
            params = dict(model.named_parameters())
            for name in get_peft_state(model).train_part_names:
                params[name].copy_(stored[name])
    return {k: v for k, v in payload.items() if k != "tensors"}


__all__ = ["FORMAT", "FORMAT_VERSION", "COMPUTE_ONLY_FIELDS", "adapter_state_dict", "check_base", "load_adapter",
           "meaning_of", "read_adapter", "save_adapter"]
