"""Putting adapters into a built model by module name, choosing what trains, and merging them back.

`inject_adapters` replaces every targeted `nn.Linear` with an adapter module that holds the same `weight`/`bias`
Parameters (so the model code and its base state-dict keys are unchanged), freezes the whole model, and leaves
trainable only the adapter tensors plus the parameters named by `train_parts`. What it did is recorded on the model
as `model.peft_state` (a `PeftState`), which adapter files (src.peft.adapter_io) and `peft_summary` read.
`apply_peft` is that for a fresh base; `load_adapter` calls it to rebuild a saved adapter.
"""

import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from src.peft.base import AdapterConfig, AdapterLinear
from src.peft.fingerprint import fingerprint_weights
from src.peft.registry import method_of
from src.peft.targets import generation_of, name_matches, parse_parts, resolve_targets


@dataclass
class PeftState:
    """What inject_adapters did to a model (stored as `model.peft_state`)."""

    config: AdapterConfig
    targets: tuple  # resolved module-name suffixes
    train_parts: tuple  # the substrings that chose extra trainable parameters
    adapted: list  # full names of the adapted modules, in model order
    base_shapes: dict  # adapted name -> [out_features, in_features]
    train_part_names: list  # full names of the parameters made trainable by train_parts and train_names
    base_fingerprint: Optional[str]  # of the targeted base weights before adapting; None on the meta device
    peft_init_seconds: float  # wall time of building the adapters (PiSSA's SVDs included)
    train_names: tuple = ()  # exact parameter names trained besides train_parts (an RWKV-PEFT file's base tensors)


def adapter_modules(model: nn.Module) -> list:
    """[(full name, adapter module)] in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLinear)]


def get_peft_state(model: nn.Module) -> PeftState:
    """The PeftState apply_peft / load_adapter recorded on the model (ValueError if there is none)."""
    state = getattr(model, "peft_state", None)
    if state is None:
        raise ValueError("this model has no adapters: call apply_peft(model, config) or load_adapter(model, path)")
    return state


def make_adapter(linear: nn.Linear, config: AdapterConfig, initialise: bool = True) -> AdapterLinear:
    """The adapter module of config's method for one nn.Linear (initialise=False: a saved adapter is loaded next,
    so costly starting values such as PiSSA's SVD are skipped)."""
    return method_of(config).adapter(linear, config, initialise=initialise)


def apply_peft(model: nn.Module, config: AdapterConfig, targets=None, train_parts=()) -> list:
    """Wrap the targeted nn.Linear modules of `model` with `config`'s adapter and choose what trains.

    targets: None (the projections of the model's generation: RWKV6 att.{receptance,key,value,gate,output},
    ffn.{key,receptance,value}; RWKV-7 att.{receptance,key,value,output}, ffn.{key,value}), 'att', 'ffn' (those of
    the generation), or a list of module-name suffixes; every suffix must match a module. train_parts:
    substrings of parameter names to train as well
    (e.g. ('time', 'ln') or the string 'time,ln'); the base weights of adapted layers stay frozen regardless.
    Returns the full names of the adapted modules. Everything is checked before the model is changed.
    """
    return inject_adapters(model, config, targets, train_parts)


def inject_adapters(model: nn.Module, config: AdapterConfig, targets=None, train_parts=(), *,
                    initialise: bool = True, base_fingerprint: Optional[str] = None, train_names=()) -> list:
    """The heart of apply_peft and load_adapter: adapt `model` in place and record it as `model.peft_state`.

    1. Check, before anything changes: config is a registered method's, the model has no adapters yet, targets
       (as resolve_targets reads them) match nn.Linear modules only and at least one, config.target_problem accepts
       every matched shape, and every train_parts fragment (as parse_parts reads it) matches a parameter other than
       the adapted weights and biases.
    2. Fingerprint the targeted base weights (unless base_fingerprint is given, or the weights are on the meta
       device: then the recorded fingerprint is None).
    3. Replace each matched nn.Linear by make_adapter(linear, config, initialise) under the same name; its weight
       and bias are the same Parameter objects.
    4. Freeze every parameter, then make trainable the nn.Parameters among each adapter's adapter_tensors() and
       the parameters chosen by train_parts.

    initialise=False (load_adapter): the adapter tensors are about to be loaded, so PiSSA skips its SVD.
    train_names: exact parameter names to train as well (those an adapter file of another tool trained).
    Returns the full names of the adapted modules, in model order.
    """
    method_of(config)
    if getattr(model, "peft_state", None) is not None or adapter_modules(model):
        raise ValueError("this model already has adapters: merge_peft(model) first, or start from a fresh model")
    generation = generation_of(n for n, _ in model.named_parameters())
    suffixes = resolve_targets(targets, generation)
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
    absent = [s for s in suffixes if not any(name_matches(n, (s,)) for n, _ in matched)]
    if absent:  # never skipped silently: e.g. att.gate, ffn.receptance asked of an RWKV-7, which has neither
        kind = "this RWKV-7 (x070) model" if generation == "x070" else "this model"
        found = [s for s in suffixes if s not in absent]
        raise ValueError(f"adapter targets {absent} match no module of {kind} (the other targets {found} do); "
                         f"drop them from --peft_targets")
    problems = [config.target_problem(n, m.out_features, m.in_features) for n, m in matched]
    problems = [p for p in problems if p is not None]
    if problems:
        more = f" (and {len(problems) - 1} more layers)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)

    adapted_weights = {id(m.weight) for _, m in matched} | {id(m.bias) for _, m in matched if m.bias is not None}
    chosen = [n for n, p in model.named_parameters() if id(p) not in adapted_weights and any(s in n for s in parts)]
    unmatched = [s for s in parts if not any(s in n for n in chosen)]
    if unmatched:
        raise ValueError(f"train parts {unmatched} match no parameter of this model (other than adapted weights)")
    all_params = {n for n, p in model.named_parameters() if id(p) not in adapted_weights}
    unknown = [n for n in train_names if n not in all_params]
    if unknown:
        raise ValueError(f"trained base tensors {unknown[:5]} are not parameters of this model (other than adapted "
                         f"weights): the file was written for another model")
    chosen += [n for n in train_names if n not in chosen]

    if base_fingerprint is None and not any(m.weight.is_meta for _, m in matched):
        base_fingerprint = fingerprint_weights({n: m.weight for n, m in matched})

    started = time.perf_counter()
    for name, linear in matched:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make_adapter(linear, config, initialise=initialise))
    init_seconds = time.perf_counter() - started

    model.requires_grad_(False)
    for _, module in adapter_modules(model):
        for tensor in module.adapter_tensors().values():
            if isinstance(tensor, nn.Parameter):
                tensor.requires_grad_(True)
    named = dict(model.named_parameters())
    for n in chosen:
        named[n].requires_grad_(True)

    model.peft_state = PeftState(
        config=config, targets=suffixes, train_parts=parts, adapted=[n for n, _ in matched],
        base_shapes={n: [m.out_features, m.in_features] for n, m in matched}, train_part_names=chosen,
        base_fingerprint=base_fingerprint, peft_init_seconds=init_seconds, train_names=tuple(train_names),
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
