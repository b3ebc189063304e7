"""The public WKV6 operator: one interface over three implementations, and the choice between them.

    y, state_out = wkv6(r, k, v, w, u, state=None, op="torch")

Per batch element b and head h, with key index i, value index j, bonus u = time_faaaa and the per-token,
per-channel decay d_t[i] = exp(-exp(w_t[i])) in (0, 1):

    y_t[j] = sum_i r_t[i] * (u[i] * k_t[i] * v_t[j] + S[i, j])
    S[i, j] <- d_t[i] * S[i, j] + k_t[i] * v_t[j]

S starts as `state` (zeros when None) and its value after the last token is returned as state_out, so a long
sequence can be processed in pieces: feeding a piece's state_out as the next piece's state gives the same y as
one call over the whole sequence.

Implementations (`op`):
- "torch": chunked parallel PyTorch (src/ops/wkv6_torch.py), any device, fp32/bf16/fp64 inputs.
- "cuda": our CUDA kernel (src/ops/wkv6_cuda.py, cuda/), CUDA tensors in bf16 or fp32, T up to a compiled maximum.
- "sequential": a plain loop over time (src/ops/wkv6_sequential.py), the reference for tests.

`resolve_wkv_op` turns a request ("auto", "cuda", ...) into one of these, once per run, for the run's device,
head size and element type.
"""
from typing import Optional, Tuple

import torch

from src.ops.checks import check_sequences, check_state
from src.ops.choice import WkvChoice, choose_wkv_op
from src.ops.wkv6_cuda import kernel_limit_problem, load_wkv6_extension, wkv6_cuda
from src.ops.wkv6_sequential import wkv6_sequential
from src.ops.wkv6_torch import wkv6_torch

WKV_OPS = ("torch", "cuda", "sequential")
WKV_REQUESTS = ("auto", "torch", "cuda")  # what a user may ask for; "sequential" is the tests' reference


def check_inputs(r, k, v, w, u, state) -> None:
    """Shapes, dtypes and devices of a wkv6 call (src/ops/checks.py for the parts WKV7 shares)."""
    B, T, H, N = check_sequences("wkv6", {"r": r, "k": k, "v": v, "w": w})
    if not isinstance(u, torch.Tensor) or not u.is_floating_point():
        raise ValueError("wkv6: u (time_faaaa) must be a floating-point tensor of shape [H, N]")
    if tuple(u.shape) != (H, N):
        raise ValueError(f"wkv6: u (time_faaaa) must have shape [H, N] = [{H}, {N}], got {tuple(u.shape)}")
    if u.device != r.device:
        raise ValueError(f"wkv6: u is on {u.device} but r is on {r.device}; move it to r's device")
    check_state("wkv6", state, r, "key i, value j")


def wkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: Optional[torch.Tensor] = None,
    op: str = "torch",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run WKV6 (see the module docstring for the recurrence).

    Args:
        r, k, v, w: [B, T, H, N], one float dtype (fp32 or bf16; fp64 with the torch/sequential ops). w is the raw
            decay parameter; the per-step decay is exp(-exp(w)).
        u: [H, N], the bonus (time_faaaa).
        state: [B, H, N, N] float32, indexed [b, h, key i, value j], or None for zeros. Never modified.
        op: "torch", "cuda" or "sequential" (use `resolve_wkv_op` to turn "auto" into one of these).

    Returns:
        y [B, T, H, N] in r's dtype and state_out [B, H, N, N] float32 (float64 when the inputs are float64).
        Differentiable with respect to r, k, v, w, u and state.
    """
    check_inputs(r, k, v, w, u, state)
    if op == "torch":
        return wkv6_torch(r, k, v, w, u, state)
    if op == "sequential":
        return wkv6_sequential(r, k, v, w, u, state)
    if op == "cuda":
        return wkv6_cuda(r, k, v, w, u, state)
    raise ValueError(f"wkv6: unknown op {op!r}; choose one of {', '.join(WKV_OPS)} (or resolve 'auto' first)")


def resolve_wkv_op(name: str, device, head_size: int = 64, dtype: torch.dtype = torch.bfloat16) -> WkvChoice:
    """Choose the WKV6 op for a run on `device` with this head size and dtype, once (src/ops/choice.py)."""
    return choose_wkv_op(name, device, head_size, dtype, "WKV6", kernel_limit_problem, load_wkv6_extension, WKV_OPS)
