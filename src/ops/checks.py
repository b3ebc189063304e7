"""Input checks both WKV operators share: the [B, T, H, N] sequence tensors and the optional initial state."""
from typing import Optional, Tuple

import torch


def check_sequences(op: str, tensors: dict) -> Tuple[int, int, int, int]:
    """Every tensor of `tensors` (name -> tensor, the first one r) a floating-point [B, T, H, N] of r's shape,
    dtype and device, T >= 1; returns (B, T, H, N). `op` ("wkv6", "wkv7") starts each message."""
    names = ", ".join(tensors)
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got dtype {x.dtype}")
    r = next(iter(tensors.values()))
    if r.dim() != 4:
        raise ValueError(f"{op}: r must have shape [B, T, H, N], got {tuple(r.shape)}")
    for name, x in tensors.items():
        if x.shape != r.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(x.shape)} but r has {tuple(r.shape)}; {names} must all "
                             f"be [B, T, H, N]")
        if x.dtype != r.dtype:
            raise ValueError(f"{op}: {name} is {x.dtype} but r is {r.dtype}; pass {names} in one dtype")
        if x.device != r.device:
            raise ValueError(f"{op}: {name} is on {x.device} but r is on {r.device}; move them to one device")
    B, T, H, N = r.shape
    if T < 1:
        raise ValueError(f"{op}: the sequence is empty (T={T}); pass at least one token")
    return B, T, H, N


def check_state(op: str, state: Optional[torch.Tensor], r: torch.Tensor, index_order: str) -> None:
    """state None, or a floating-point [B, H, N, N] on r's device; index_order names its last two axes for the
    message ("key i, value j" for WKV6, "value, key" for WKV7)."""
    if state is None:
        return
    B, _, H, N = r.shape
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{op}: state must be a torch.Tensor or None, got {type(state).__name__}")
    if tuple(state.shape) != (B, H, N, N):
        raise ValueError(f"{op}: state must have shape [B, H, N, N] = [{B}, {H}, {N}, {N}] (indexed [batch, head, "
                         f"{index_order}]), got {tuple(state.shape)}")
    if not state.is_floating_point():
        raise ValueError(f"{op}: state must be a floating-point tensor (float32 preferred), got {state.dtype}")
    if state.device != r.device:
        raise ValueError(f"{op}: state is on {state.device} but r is on {r.device}; move it to r's device")
