"""State tuning: one trained initial WKV state per layer, every weight frozen (`--peft state`).

Each layer's time-mix gets a Parameter `att.time_state` of shape [H, N, N] (zeros at the start), so the trained
tensors carry the names RWKV tools read: `blocks.{i}.att.time_state`. The model never reads it; the trainer (and
chat / the evaluator) pass it as the initial WKV state of the model's forward (`initial_state_for`). Only the WKV
state trains, as in RWKV-PEFT; the token-shift states start at zero.

Index order of a saved time_state is the one RWKV-LM's state-tuning kernels use, [head, value, key]: the `rwkv`
package loads an x060 file's `time_state` with `.transpose(1, 2)` into its [head, key, value] state, which is the
layout of our WKV6 op, so RWKV6's state is the file's transposed; RWKV-7's WKV7 op already uses [head, value, key],
so its state is the file's as is.

A state file is a plain dict {blocks.{i}.att.time_state: float32 [H, N, N]} (torch.save, written atomically),
the layout RWKV-PEFT's state tuning saves and the `rwkv` package merges into a model.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch
import torch.nn as nn

from src.checkpoint.files import save_atomic
from src.peft.base import AdapterConfig, adapter_dtype
from src.peft.targets import generation_of

STATE_KEY = "blocks.{}.att.time_state"


@dataclass
class StateConfig(AdapterConfig):
    """State tuning has no settings; the config names the method in run records and summaries."""

    method: ClassVar[str] = "state"


def _time_mixes(model: nn.Module) -> list:
    return [block.att for block in model.blocks]


def apply_state_tuning(model: nn.Module) -> list:
    """Freeze every weight and add a zero `att.time_state` [H, N, N] Parameter to each layer; returns its names."""
    if any(hasattr(att, "time_state") for att in _time_mixes(model)):
        raise ValueError("this model already has time_state parameters (state tuning applied twice)")
    model.requires_grad_(False)
    heads, size = model.config.n_head, model.config.head_size
    dtype = adapter_dtype(model.emb.weight.dtype)
    names = []
    for i, att in enumerate(_time_mixes(model)):
        att.time_state = nn.Parameter(torch.zeros(heads, size, size, dtype=dtype, device=model.emb.weight.device))
        names.append(STATE_KEY.format(i))
    return names


def time_states(model: nn.Module) -> dict:
    """{blocks.{i}.att.time_state: Parameter} of a state-tuned model ({} for any other model)."""
    return {STATE_KEY.format(i): att.time_state for i, att in enumerate(_time_mixes(model))
            if isinstance(getattr(att, "time_state", None), torch.Tensor)}


def _is_rwkv6(model: nn.Module) -> bool:
    return generation_of(n for n, _ in model.named_parameters()) == "x060"


def to_model_state(model: nn.Module, states: list, batch_size: int) -> list:
    """The model's initial recurrent state (per layer: zero att shift, WKV state, zero ffn shift) from per-layer
    [H, N, N] tensors in the file's [head, value, key] order, repeated over the batch."""
    transpose = _is_rwkv6(model)
    weight = model.emb.weight
    out = []
    for state in states:
        wkv = state.transpose(-1, -2) if transpose else state
        wkv = wkv.to(torch.promote_types(wkv.dtype, torch.float32)).unsqueeze(0).expand(batch_size, -1, -1, -1)
        shift = torch.zeros(batch_size, model.config.n_embd, dtype=weight.dtype, device=weight.device)
        out.append((shift, wkv, shift))
    return out


def initial_state_for(model: nn.Module, batch_size: int) -> Optional[list]:
    """The trained initial state of a state-tuned model for a batch (differentiable), or None (zeros) otherwise."""
    states = time_states(model)
    if not states:
        return None
    return to_model_state(model, list(states.values()), batch_size)


def save_state(model: nn.Module, path) -> Path:
    """Write the model's time_state tensors as a state file (fp32, CPU, atomically)."""
    states = time_states(model)
    if not states:
        raise ValueError("save_state: this model has no time_state (apply_state_tuning first)")
    return save_atomic({k: v.detach().to("cpu", torch.float32, copy=True) for k, v in states.items()}, path)


def read_state_file(path, n_layer: int, n_head: int, head_size: int) -> list:
    """The per-layer [H, N, N] tensors of a state file, checked against a model of that shape (ValueError naming
    what differs and what to pass instead)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--state file not found: {path} (train.py --peft state writes state-*.pth)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"--state {path} is not a readable state file ({type(error).__name__}: {error})") from None
    expected = [STATE_KEY.format(i) for i in range(n_layer)]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"--state {path} is not a state file (a dict of blocks.N.att.time_state tensors)")
    if sorted(data) != sorted(expected):
        missing = sorted(set(expected) - set(data))[:3]
        unexpected = sorted(set(data) - set(expected))[:3]
        raise ValueError(f"--state {path} does not fit this {n_layer}-layer model (missing {missing}, unexpected "
                         f"{unexpected}); pass the state trained on this base model")
    want = (n_head, head_size, head_size)
    wrong = [f"{k} {tuple(data[k].shape)}" for k in expected if tuple(data[k].shape) != want]
    if wrong:
        raise ValueError(f"--state {path} has states of another shape ({', '.join(wrong[:3])}); this model needs "
                         f"[{n_head}, {head_size}, {head_size}] per layer: pass the state trained on this base model")
    return [data[k] for k in expected]


def load_state_for(model: nn.Module, path, batch_size: int = 1) -> list:
    """The model's initial recurrent state from a state file (checked against the model's shape)."""
    config = model.config
    states = read_state_file(path, config.n_layer, config.n_head, config.head_size)
    device = model.emb.weight.device
    return to_model_state(model, [s.to(device) for s in states], batch_size)
