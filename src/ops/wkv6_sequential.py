"""The WKV6 recurrence as a plain loop over time: the reference the other implementations are tested against.

Per batch element and head, with key index i, value index j, bonus u and decay d_t[i] = exp(-exp(w_t[i])):

    y_t[j] = sum_i r_t[i] * (u[i] * k_t[i] * v_t[j] + S[i, j])
    S[i, j] <- d_t[i] * S[i, j] + k_t[i] * v_t[j]

It is deliberately literal (the decay is formed as exp(-exp(w)) directly, not in log space) so that it shares
no numerical shortcut with the chunked operator. One step per token: use it for tests only.
"""
from typing import Optional, Tuple

import torch


def compute_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The dtype WKV6 accumulates in: float64 for float64 inputs (tests), float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def wkv6_sequential(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """WKV6 by stepping the recurrence token by token (differentiable through autograd).

    r, k, v, w: [B, T, H, N]; u: [H, N]; state: [B, H, N, N] indexed [b, h, key i, value j], or None for zeros.
    Returns y [B, T, H, N] in r's dtype and the final state [B, H, N, N] in the compute dtype (float32, or
    float64 for float64 inputs). Shapes are validated by the public `src.ops.wkv6`, not here.
    """
    compute = compute_dtype_for(r.dtype)
    B, T, H, N = r.shape
    r_c, k_c, v_c = (x.to(compute) for x in (r, k, v))
    decay = torch.exp(-torch.exp(w.to(compute)))
    bonus = u.to(compute)[None, :, :, None]  # [1, H, N(i), 1]
    if state is None:
        S = r_c.new_zeros(B, H, N, N)
    else:
        S = state.to(compute)
    outputs = []
    for t in range(T):
        kv = k_c[:, t, :, :, None] * v_c[:, t, :, None, :]  # [B, H, N(i), N(j)]
        outputs.append(torch.einsum("bhi,bhij->bhj", r_c[:, t], S + bonus * kv))
        S = decay[:, t, :, :, None] * S + kv
    y = torch.stack(outputs, dim=1)
    return y.to(r.dtype), S
