"""The WKV7 recurrence as a plain loop over time: the reference the chunked operator is tested against.

Per batch element and head, with value index i, key index j and the state S [N(value), N(key)]:

    d_t[j]  = exp(-exp(w_hat_t[j])),  w_hat = -softplus(-w) - 0.5          (w is the raw decay input)
    S_t     = S_{t-1} * d_t[None, :] + (S_{t-1} @ a_t)[:, None] * b_t[None, :] + v_t[:, None] * k_t[None, :]
    y_t     = S_t @ r_t                                                     (the updated state: token t included)

i.e. S_t[i, j] = S_{t-1}[i, j] d_t[j] + (sum_q S_{t-1}[i, q] a_t[q]) b_t[j] + v_t[i] k_t[j], and
y_t[i] = sum_j S_t[i, j] r_t[j]. In the RWKV-7 model a = -kappa_hat and b = kappa_hat * iclr (see
src/model/rwkv7.py); the operator itself takes any a, b.

It is deliberately literal: the decay is formed through the train_temp soft clamp w_hat (softplus form), not the
sigmoid identity d = exp(-exp(-1/2) sigmoid(w)) that the chunked operator uses, and nothing is done in log space,
so it shares no numerical shortcut with `src.ops.wkv7_torch`. One step per token: use it for tests only.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def compute_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The dtype WKV7 accumulates in: float64 for float64 inputs (tests), float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def wkv7_sequential(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """WKV7 by stepping the recurrence token by token (differentiable through autograd).

    r, w, k, v, a, b: [B, T, H, N]; w is the raw decay (before the soft clamp). state: [B, H, N, N] indexed
    [b, h, value i, key j], or None for zeros. Returns y [B, T, H, N] in r's dtype and the final state
    [B, H, N, N] in the compute dtype (float32, or float64 for float64 inputs). Shapes are validated by the
    public `src.ops.wkv7`, not here.
    """
    compute = compute_dtype_for(r.dtype)
    B, T, H, N = r.shape
    r_c, k_c, v_c, a_c, b_c = (x.to(compute) for x in (r, k, v, a, b))
    w_hat = -F.softplus(-w.to(compute)) - 0.5
    decay = torch.exp(-torch.exp(w_hat))  # in (exp(-exp(-1/2)), 1) = (0.545, 1)
    S = r_c.new_zeros(B, H, N, N) if state is None else state.to(compute)
    outputs = []
    for t in range(T):
        removed = S @ a_c[:, t, :, :, None]  # [B, H, N(value), 1], read from the old state
        S = (S * decay[:, t, :, None, :]
             + removed * b_c[:, t, :, None, :]
             + v_c[:, t, :, :, None] * k_c[:, t, :, None, :])
        outputs.append((S @ r_c[:, t, :, :, None]).squeeze(-1))
    y = torch.stack(outputs, dim=1)
    return y.to(r.dtype), S
