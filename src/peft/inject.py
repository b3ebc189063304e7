"""Putting adapters into a built model by module name, choosing what trains, and merging them back.

`apply_peft` replaces every targeted `nn.Linear` with an adapter module that holds the same `weight`/`bias`
Parameters (so the model code and its base state-dict keys are unchanged), freezes the whole model, and leaves
trainable only the adapter tensors plus the parameters named by `train_parts`. What it did is recorded on the model
as `model.peft_state` (a `PeftState`), which `adapter_state_dict`, `save_adapter` and `peft_summary` read.
"""

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from src.peft.bone import BoneConfig, BoneLinear, bone_divisibility_message
from src.peft.lora import AdapterLinear, LoraConfig, LoraLinear, PissaConfig, PissaLinear

ATT_TARGETS = ("att.receptance", "att.key", "att.value", "att.gate", "att.output")
FFN_TARGETS = ("ffn.key", "ffn.receptance", "ffn.value")
DEFAULT_TARGETS = ATT_TARGETS + FFN_TARGETS
PART_TARGETS = {"att": ATT_TARGETS, "ffn": FFN_TARGETS}
CONFIG_CLASSES = {cls.method: cls for cls in (BoneConfig, LoraConfig, PissaConfig)}

PeftConfig = Union[BoneConfig, LoraConfig, PissaConfig]


@dataclass
class PeftState:
    """What apply_peft did to a model (stored as `model.peft_state`)."""

    config: PeftConfig
    targets: tuple  # resolved module-name suffixes
    train_parts: tuple  # the substrings that chose extra trainable parameters
    adapted: list  # full names of the adapted modules, in model order
    base_shapes: dict  # adapted name -> [out_features, in_features]
    train_part_names: list  # full names of the parameters made trainable by train_parts
    base_fingerprint: Optional[str]  # of the targeted base weights before adapting; None on the meta device
    peft_init_seconds: float  # wall time of building the adapters (PiSSA's SVDs included)


def config_from_dict(data: dict) -> PeftConfig:
    """BoneConfig / LoraConfig / PissaConfig from a dict carrying its `method` name."""
    method = data.get("method")
    if method not in CONFIG_CLASSES:
        raise ValueError(f"adapter config needs 'method' in {sorted(CONFIG_CLASSES)}, got {method!r}")
    return CONFIG_CLASSES[method].from_dict(data)


def resolve_targets(targets=None) -> tuple:
    """Module-name suffixes from None (all RWKV6 projections), 'att', 'ffn', 'att,ffn', or a list mixing those
    part names with suffixes such as 'att.key' or 'head'."""
    if targets is None:
        return DEFAULT_TARGETS
    items = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    resolved = []
    for item in items:
        if not isinstance(item, str) or not item.strip(" ."):
            raise ValueError(f"adapter targets must be module-name suffixes or 'att'/'ffn', got {targets!r}")
        for suffix in PART_TARGETS.get(item, (item,)):
            if suffix not in resolved:
                resolved.append(suffix)
    return tuple(resolved)


def name_matches(name: str, suffixes: Sequence[str]) -> bool:
    """True when the module name equals a suffix or ends with '.' + suffix (so 'att.key' never matches 'xatt.key')."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def parse_parts(text) -> tuple:
    """'time,ln' -> ('time', 'ln'); '', 'none', None -> (); a list or tuple of names is passed through."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    parts = tuple(p.strip() for p in items if p.strip())
    if parts in ((), ("none",)):
        return ()
    for part in parts:
        if any(c in part for c in "[]'\" "):
            raise ValueError(
                f"train part {part!r} is not a parameter-name fragment: give a comma-separated list such as "
                f"'time,ln' (or 'none'), not a Python/JSON list"
            )
    return parts


def adapter_modules(model: nn.Module) -> list:
    """[(full name, adapter module)] in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLinear)]


def get_peft_state(model: nn.Module) -> PeftState:
    """The PeftState apply_peft / load_adapter recorded on the model (ValueError if there is none)."""
    state = getattr(model, "peft_state", None)
    if state is None:
        raise ValueError("this model has no adapters: call apply_peft(model, config) or load_adapter(model, path)")
    return state


def make_adapter(linear: nn.Linear, config: PeftConfig, name: str = "layer", initialise: bool = True):
    """The adapter module for one nn.Linear (initialise=False skips PiSSA's SVD: load_adapter supplies A, B)."""
    if isinstance(config, BoneConfig):
        return BoneLinear(linear, config, name=name)
    if isinstance(config, PissaConfig):
        return PissaLinear(linear, config, initialise=initialise)
    if isinstance(config, LoraConfig):
        return LoraLinear(linear, config)
    raise ValueError(f"config must be a BoneConfig, LoraConfig or PissaConfig, got {type(config).__name__}")


def apply_peft(model: nn.Module, config: PeftConfig, targets=None, train_parts=()) -> list:
    """Wrap the targeted nn.Linear modules of `model` with `config`'s adapter and choose what trains.

    targets: None (the RWKV6 projections att.{receptance,key,value,gate,output}, ffn.{key,receptance,value}),
    'att', 'ffn', or a list of module-name suffixes. train_parts: substrings of parameter names to train as well
    (e.g. ('time', 'ln') or the string 'time,ln'); the base weights of adapted layers stay frozen regardless.
    Returns the full names of the adapted modules. Everything is checked before the model is changed.
    """
    return _apply(model, config, targets, train_parts, initialise=True)


def _apply(model, config, targets, train_parts, initialise: bool, base_fingerprint: Optional[str] = None) -> list:
    if not isinstance(config, (BoneConfig, LoraConfig, PissaConfig)):
        raise ValueError(f"config must be a BoneConfig, LoraConfig or PissaConfig, got {type(config).__name__}")
    if getattr(model, "peft_state", None) is not None or adapter_modules(model):
        raise ValueError("this model already has adapters: merge_peft(model) first, or start from a fresh model")
    suffixes = resolve_targets(targets)
    parts = parse_parts(train_parts)

    matched = [(n, m) for n, m in model.named_modules() if n and name_matches(n, suffixes)]
    not_linear = [f"{n} ({type(m).__name__})" for n, m in matched if not isinstance(m, nn.Linear)]
    if not_linear:
        raise ValueError(f"adapter targets {list(suffixes)} match modules that are not nn.Linear: {not_linear}")
    if not matched:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"adapter targets {list(suffixes)} match no module of this model; its nn.Linear modules are "
            f"{linears[:12]}{' ...' if len(linears) > 12 else ''}"
        )
    if isinstance(config, BoneConfig):
        bad = [bone_divisibility_message(n, m.out_features, m.in_features, config.b)
               for n, m in matched if m.in_features % config.b or m.out_features % config.b]
        if bad:
            more = f" (and {len(bad) - 1} more layers)" if len(bad) > 1 else ""
            raise ValueError(bad[0] + more)

    adapted_weights = {id(m.weight) for _, m in matched} | {id(m.bias) for _, m in matched if m.bias is not None}
    chosen = [n for n, p in model.named_parameters() if id(p) not in adapted_weights and any(s in n for s in parts)]
    unmatched = [s for s in parts if not any(s in n for n in chosen)]
    if unmatched:
        raise ValueError(f"train parts {unmatched} match no parameter of this model (other than adapted weights)")

    if base_fingerprint is None and not any(m.weight.is_meta for _, m in matched):
        from src.peft.adapter_io import fingerprint_weights  # adapter_io imports this module

        base_fingerprint = fingerprint_weights({n: m.weight for n, m in matched})

    started = time.perf_counter()
    for name, linear in matched:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make_adapter(linear, config, name=name, initialise=initialise))
    init_seconds = time.perf_counter() - started

    model.requires_grad_(False)
    for _, module in adapter_modules(model):
        for param in module.parameters(recurse=False):
            if param is not module.weight and param is not module.bias:
                param.requires_grad_(True)
    named = dict(model.named_parameters())
    for n in chosen:
        named[n].requires_grad_(True)

    model.peft_state = PeftState(
        config=config, targets=suffixes, train_parts=parts, adapted=[n for n, _ in matched],
        base_shapes={n: [m.out_features, m.in_features] for n, m in matched}, train_part_names=chosen,
        base_fingerprint=base_fingerprint, peft_init_seconds=init_seconds,
    )
    return [n for n, _ in matched]


@torch.no_grad()
def merge_peft(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (in fp32) and put plain nn.Linear modules back, in the base dtype.

    The result has exactly the base model's parameter names, shapes and dtypes; `model.peft_state` is removed.
    """
    modules = adapter_modules(model)
    if not modules:
        raise ValueError("merge_peft: this model has no adapters to merge")
    for name, module in modules:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.to_linear())
    if hasattr(model, "peft_state"):
        del model.peft_state
    return model
