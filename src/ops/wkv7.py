"""The public WKV7 operator (RWKV-7 "x070"): one interface over its implementations, and the choice between them.

    y, state_out = wkv7(r, w, k, v, a, b, state=None, op="torch")

The argument order is the official kernel's (r, w, k, v, a, b). Per batch element and head, with value index i,
key index j, the state S [N(value), N(key)] and the per-token, per-key-channel decay

    d_t[j] = exp(-exp(w_hat_t[j])),   w_hat = -softplus(-w) - 0.5   (= exp(-exp(-1/2) sigmoid(w)), in (0.545, 1))

    S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T          (the old state is read for S a)
    y_t = S_t r_t                                                        (the updated state: token t included)

`w` is the RAW decay (w0 + tanh(x w1) w2 in the model), as the official `rwkv7_clampw` kernel takes it: the soft
clamp is part of the operator, so the decay bound that keeps the chunked form stable holds for every input. In
the RWKV-7 model a = -kappa_hat and b = kappa_hat * iclr; the operator takes any a, b. No 1/sqrt(N) scale.

S starts as `state` (zeros when None) and its value after the last token is returned, so a long sequence can be
processed in pieces. The state layout [B, H, value, key] is that of the `rwkv` package, the official CUDA
kernels and RWKV-PEFT's `time_state` (fla's is the transpose).

Implementations (`op`), named as for WKV6:
- "torch": chunked parallel PyTorch (src/ops/wkv7_torch.py), any device, any T, fp32/bf16/fp64 inputs.
- "sequential": a plain loop over time (src/ops/wkv7_sequential.py), the reference for tests.
- "cuda": our kernel (cuda/wkv7_cuda.cu, src/ops/wkv7_cuda.py): CUDA tensors, bf16 or fp32, raw w, fp32
  state in and out, any T >= 1. `resolve_wkv7_op` selects it for "auto" where it can run.
"""
from typing import Optional, Tuple

import torch

from src.ops.checks import check_sequences, check_state
from src.ops.choice import WkvChoice, choose_wkv_op
from src.ops.wkv7_cuda import kernel_limit_problem, load_wkv7_extension, wkv7_cuda
from src.ops.wkv7_sequential import wkv7_sequential
from src.ops.wkv7_torch import wkv7_torch

WKV7_OPS = ("torch", "cuda", "sequential")
def check_inputs(r, w, k, v, a, b, state) -> None:
    """Shapes, dtypes and devices of a wkv7 call (src/ops/checks.py)."""
    check_sequences("wkv7", {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b})
    check_state("wkv7", state, r, "value, key")


def wkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: Optional[torch.Tensor] = None,
    op: str = "torch",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run WKV7 (see the module docstring for the recurrence).

    Args:
        r, w, k, v, a, b: [B, T, H, N], one float dtype (fp32 or bf16; fp64 with the torch/sequential ops).
            w is the raw decay; the per-step decay is exp(-exp(-softplus(-w) - 0.5)).
        state: [B, H, N, N], indexed [b, h, value i, key j], or None for zeros. Never modified.
        op: "torch", "cuda" or "sequential" (`resolve_wkv7_op` turns "auto" into one of these).

    Returns:
        y [B, T, H, N] in r's dtype and state_out [B, H, N, N] float32 (float64 when the inputs are float64).
        Differentiable with respect to r, w, k, v, a, b and state.
    """
    check_inputs(r, w, k, v, a, b, state)
    if op == "torch":
        return wkv7_torch(r, w, k, v, a, b, state)
    if op == "sequential":
        return wkv7_sequential(r, w, k, v, a, b, state)
    if op == "cuda":
        return wkv7_cuda(r, w, k, v, a, b, state)
    raise ValueError(f"wkv7: unknown op {op!r}; choose one of {', '.join(WKV7_OPS)} (or resolve 'auto' first)")


def resolve_wkv7_op(name: str, device, head_size: int = 64, dtype: torch.dtype = torch.bfloat16) -> WkvChoice:
    """Choose the WKV7 op for a run on `device` with this head size and dtype, once (src/ops/choice.py)."""
    return choose_wkv_op(name, device, head_size, dtype, "WKV7", kernel_limit_problem, load_wkv7_extension,
                         WKV7_OPS)
