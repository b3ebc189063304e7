"""WKV6 as a chunked, parallel PyTorch computation (CPU or GPU, fp32/bf16 inputs, fp64 for tests).

Recurrence (per batch element and head; key index i, value index j, bonus u, decay d_t[i] = exp(-exp(w_t[i]))):

    y_t[j] = sum_i r_t[i] * (u[i] * k_t[i] * v_t[j] + S_t[i, j])
    S_{t+1}[i, j] = d_t[i] * S_t[i, j] + k_t[i] * v_t[j]

Chunked form. Cut time into chunks of L tokens. Inside one chunk (local positions t, s = 0..L-1) let
lw_t[i] = -exp(w_t[i]) = log d_t[i] <= 0, the inclusive cumulative log-decay a_t[i] = sum_{q<=t} lw_q[i] and the
exclusive one a'_t[i] = a_{t-1}[i] (a'_0 = 0). With S0 the state entering the chunk, unrolling gives

    S_t       = exp(a'_t) * S0 + sum_{s<t} exp(a'_t - a_s) * k_s v_s^T            (row i scaled per key channel)
    y_t       = (r_t * exp(a'_t)) @ S0                                            # carried state
              + sum_{s<t} [sum_i r_t[i] k_s[i] exp(a'_t[i] - a_s[i])] v_s         # earlier tokens of the chunk
              + [sum_i r_t[i] u[i] k_t[i]] v_t                                    # the bonus on the diagonal
    S_end     = exp(a_{L-1}) * S0 + sum_s (k_s * exp(a_{L-1} - a_s))^T v_s

Why every exponent is <= 0: a is non-increasing in t, so a'_t (t>=0), a'_t - a_s (s<t) and a_{L-1} - a_s (s<=L-1)
are all sums of log-decays, hence <= 0, and exp() of them lies in [0, 1]. The tempting factorisation
exp(a'_t) * exp(-a_s), which would turn the middle term into one matrix product, needs exp(-a_s) = exp(+|a_s|):
with a log-decay of -20 per step (w = 3) that overflows fp32 within five tokens. Instead the per-channel pair
weights E[t, s] = exp(a'_t - a_s) = prod_{s<q<t} d_q are formed explicitly for the L(L-1)/2 pairs s < t of each
chunk, one sub-diagonal t - s = delta at a time, as running products of decays d <= 1 (E = 1 for delta = 1, then
one more factor per delta): no exponent is formed for them at all. The only exponentials are exp(-exp(w)) for the
decays and exp() of the <= 0 differences above, for the carried state. Weights may underflow to 0, which is the
correct limit of a strong decay. Cumulative sums restart at every chunk, so their rounding error stays small.

Everything else is matrix products: the carried-state term (L x N) @ (N x N), the in-chunk term (L x L) @ (L x N),
and the per-chunk state increment (N x L) @ (L x N); only the chunk-to-chunk state update is a loop, T/L steps of
one elementwise multiply-add on [B, H, N, N]. T need not be a multiple of L: the tail is padded with k = v = r = 0
and log-decay 0 (decay 1), which leaves the state unchanged, and the padded outputs are dropped; T <= L runs as a
single chunk of length T.

Two parts have their own autograd.Function: the in-chunk scores (the pair weights are rebuilt in the backward pass
rather than kept between forward and backward) and the chunk-to-chunk scan (one preallocated output and a reverse
scan in the backward pass instead of one autograd node per chunk).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from src.ops.wkv6_sequential import compute_dtype_for

# Chunk length 16 was the fastest of 8/16/24/32/64 in interleaved forward+backward sweeps (fp32, 2 CPU cores,
# B=1 H=32 T=512 N=64); bench/wkv.py re-measures 16/32/64 on every run and reports them.
DEFAULT_CHUNK_LEN = 16


class _IntraChunkScores(torch.autograd.Function):
    """Scores between the tokens of one chunk (the bonus on the diagonal), and their gradients.

    Input r, k, log_decay: [M, L, N] (M = chunks x batch x heads), u: [M, 1, N] (each row's bonus). Output A:
    [M, L, L], lower triangular, with
        A[m, t, s] = sum_n r[m,t,n] k[m,s,n] E[m,t,s,n]   for s < t,  E[t,s] = exp(a'_t - a_s) = prod_{s<q<t} d_q
        A[m, t, t] = sum_n r[m,t,n] u[m,0,n] k[m,t,n]     (the bonus)

    Worked one sub-diagonal delta = t - s at a time, each a pair of contiguous slices. E is built as a running
    product of decays d = exp(log_decay) <= 1 (E_1 = 1, E_delta[t] = E_{delta-1}[t] d[t-delta+1]), so no
    exponent is formed at all; underflow to 0 is the correct limit of a strong decay.

    Backward, with c[t,s,n] = dA[t,s] r[t,n] k[s,n] E[t,s,n]: dr[t] = sum_s dA[t,s] E[t,s] k[s],
    dk[s] = sum_t dA[t,s] E[t,s] r[t], and d log_decay[q] = sum over pairs with s < q < t of c[t,s]. The last is
    formed as a reverse cumulative sum of r[t] dr[t] (placed at q = t-1) minus k[s] dk[s] (at q = s), over pairs
    with delta >= 2 only: the delta = 1 pairs do not depend on any decay, and leaving them out avoids summing
    large terms that cancel exactly. The pair weights are rebuilt here rather than saved.
    """

    @staticmethod
    def forward(ctx, r, k, log_decay, u):
        M, L, _ = r.shape
        scores = r.new_zeros(M, L, L)
        scores.diagonal(dim1=1, dim2=2).copy_((r * u * k).sum(-1))
        decay = torch.exp(log_decay)
        between = None
        for delta in range(1, L):
            rk = r[:, delta:] * k[:, : L - delta]
            if delta > 1:
                between = decay[:, 1 : L - 1] if delta == 2 else between[:, 1:] * decay[:, 1 : L - delta + 1]
                rk.mul_(between)
            scores.diagonal(offset=-delta, dim1=1, dim2=2).copy_(rk.sum(-1))
        ctx.save_for_backward(r, k, log_decay, u)
        return scores

    @staticmethod
    def backward(ctx, grad_scores):
        r, k, log_decay, u = ctx.saved_tensors
        L = r.shape[1]
        decay = torch.exp(log_decay)
        grad_r = torch.zeros_like(r)  # first the pairs with delta >= 2 only
        grad_k = torch.zeros_like(k)
        between = None
        for delta in range(2, L):
            between = decay[:, 1 : L - 1] if delta == 2 else between[:, 1:] * decay[:, 1 : L - delta + 1]
            weighted = between * grad_scores.diagonal(offset=-delta, dim1=1, dim2=2)[:, :, None]
            grad_r[:, delta:].addcmul_(weighted, k[:, : L - delta])
            grad_k[:, : L - delta].addcmul_(weighted, r[:, delta:])
        grad_a = -(k * grad_k)  # d/d a_s (a = inclusive cumulative log-decay)
        grad_a[:, :-1] += (r * grad_r)[:, 1:]  # d/d a'_t = d/d a_{t-1}
        grad_log_decay = grad_a.flip(1).cumsum(1).flip(1)  # a_m = sum_{q<=m} log_decay_q
        if L > 1:
            grad_near = grad_scores.diagonal(offset=-1, dim1=1, dim2=2)[:, :, None]
            grad_r[:, 1:].addcmul_(grad_near, k[:, :-1])
            grad_k[:, :-1].addcmul_(grad_near, r[:, 1:])
        grad_bonus = grad_scores.diagonal(dim1=1, dim2=2)[:, :, None]
        grad_r.addcmul_(grad_bonus, u * k)
        grad_k.addcmul_(grad_bonus, u * r)
        grad_u = (grad_bonus * r * k).sum(1, keepdim=True)
        return grad_r, grad_k, grad_log_decay, grad_u


class _ChunkStateScan(torch.autograd.Function):
    """The state entering every chunk: S_0 = initial, S_{c+1} = decay_c[:, None] * S_c + kv_c.

    Inputs decay [C, B, H, N], kv [C, B, H, N, N], initial [B, H, N, N]; outputs the entering states
    [C, B, H, N, N] (S_0 .. S_{C-1}) and the final state S_C. One loop step per chunk; the backward runs the same
    recurrence in reverse (dS_c = decay_c * dS_{c+1} + dL/dS_c), so no per-chunk autograd nodes are built.
    """

    @staticmethod
    def forward(ctx, decay, kv, initial):
        entering = torch.empty_like(kv)
        entering[0] = initial
        for c in range(kv.shape[0] - 1):  # written in place into the output, no per-step temporaries
            torch.addcmul(kv[c], decay[c, ..., None], entering[c], out=entering[c + 1])
        final = torch.addcmul(kv[-1], decay[-1, ..., None], entering[-1])
        ctx.save_for_backward(decay, entering)
        return entering, final

    @staticmethod
    def backward(ctx, grad_entering, grad_final):
        decay, entering = ctx.saved_tensors
        # grad_kv[c] = dL/dS_{c+1}, the adjoint of the state after chunk c.
        grad_kv = torch.empty_like(entering)
        grad_kv[-1] = grad_final
        for c in reversed(range(entering.shape[0] - 1)):
            torch.addcmul(grad_entering[c + 1], decay[c + 1, ..., None], grad_kv[c + 1], out=grad_kv[c])
        grad_decay = (grad_kv * entering).sum(-1)
        grad_initial = torch.addcmul(grad_entering[0], decay[0, ..., None], grad_kv[0])
        return grad_decay, grad_kv, grad_initial


class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    The output is handed back as [B, T, H, N], so its gradient arrives permuted relative to the chunk-major
    [C, B, H, L, N] layout; batched matmul backward on such strides falls back to one copy per matrix.
    """

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def to_time_chunks(x: torch.Tensor, chunk_len: int, compute: torch.dtype) -> torch.Tensor:
    """[B, T, H, N] -> [C, B, H, L, N] with L = min(chunk_len, T), C = ceil(T / L): in the compute dtype,
    zero-padded at the end of time, chunk-major so that each chunk's slice is contiguous for the state scan."""
    B, T, H, N = x.shape
    L = min(chunk_len, T)
    pad = (-T) % L
    x = x.to(compute)
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
    return x.reshape(B, (T + pad) // L, L, H, N).permute(1, 0, 3, 2, 4).contiguous()


def from_time_chunks(y: torch.Tensor, T: int) -> torch.Tensor:
    """[C, B, H, L, N] -> [B, T, H, N], the padding dropped (the inverse of `to_time_chunks`); the gradient flowing
    back is made contiguous for the chunked products."""
    C, B, H, L, N = y.shape
    return ContiguousGrad.apply(y).permute(1, 0, 3, 2, 4).reshape(B, C * L, H, N)[:, :T]


def wkv6_torch(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: Optional[torch.Tensor] = None,
    chunk_len: int = DEFAULT_CHUNK_LEN,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """WKV6 in chunks of chunk_len tokens (see the module docstring for the derivation).

    r, k, v, w: [B, T, H, N]; u: [H, N]; state: [B, H, N, N] ([b, h, key i, value j]) or None for zeros.
    Inputs of any float dtype; the work is done in float32 (float64 when r is float64).
    Returns y [B, T, H, N] in r's dtype and the final state [B, H, N, N] in the compute dtype.
    Differentiable w.r.t. every input including the state. Shapes are validated by `src.ops.wkv6`.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    compute = compute_dtype_for(r.dtype)
    B, T, H, N = r.shape
    r_c, k_c, v_c = (to_time_chunks(x, chunk_len, compute) for x in (r, k, v))
    log_decay = to_time_chunks(-torch.exp(w.to(compute)), chunk_len, compute)  # padding 0: the state passes
    n_chunks, L = r_c.shape[0], r_c.shape[3]
    a_incl = torch.cumsum(log_decay, dim=3)
    a_excl = F.pad(a_incl[:, :, :, :-1], (0, 0, 1, 0))  # shifted copy, so a'_t - a_{t-1} is exactly 0
    a_last = a_incl[:, :, :, -1:]  # [C, B, H, 1, N]

    # Tokens of the same chunk: scores from the pair weights, the bonus on the diagonal.
    rows = n_chunks * B * H
    u_rows = u.to(compute).expand(n_chunks * B, H, N).reshape(rows, 1, N)
    scores = _IntraChunkScores.apply(
        r_c.reshape(rows, L, N), k_c.reshape(rows, L, N), log_decay.reshape(rows, L, N), u_rows
    ).view(n_chunks, B, H, L, L)
    y = scores @ v_c

    # State carried from chunk to chunk: S_{c+1} = exp(a_last) * S_c + (k * exp(a_last - a))^T v.
    chunk_kv = (k_c * torch.exp(a_last - a_incl)).transpose(-1, -2) @ v_c  # [C, B, H, N, N]
    chunk_decay = torch.exp(a_last.squeeze(-2))  # [C, B, H, N]
    initial = r_c.new_zeros(B, H, N, N) if state is None else state.to(compute)
    entering, S = _ChunkStateScan.apply(chunk_decay, chunk_kv, initial)
    y = y + (r_c * torch.exp(a_excl)) @ entering

    return from_time_chunks(y, T).to(r.dtype), S
