"""WKV7 as a chunked, parallel PyTorch computation (CPU or GPU; fp32/bf16 inputs, fp64 for tests).

Recurrence (per batch element and head; value index i, key index j, state S [N(value), N(key)]):

    S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,      y_t = S_t r_t,
    log d_t = lambda_t = -exp(-1/2) * sigmoid(w_t)  in (-0.6065, 0)   (w raw; the official soft clamp)

Chunked form (derivation and the stability argument in docs/wkv7-chunked.md). Cut time into chunks of L tokens;
inside one chunk (local t, s = 0..L-1) with S0 the state entering it, the cumulative log-decays
c_t = sum_{q<=t} lambda_q, c-_t = c_{t-1} (c-_0 = 0) and the chunk total c_L = c_{L-1}, form the rows

    r~_t = r_t e^{c_t}     a~_t = a_t e^{c-_t}     k~_s = k_s e^{-c_s}     b~_s = b_s e^{-c_s}     (inputs to scores)
    k^_s = k_s e^{c_L - c_s}     b^_s = b_s e^{c_L - c_s}                                          (to the chunk end)

and the L x L scores A_ak = tril_{-1}(A~ K~^T), A_ab = tril_{-1}(A~ B~^T), A_rk = tril_0(R~ K~^T),
A_rb = tril_0(R~ B~^T) (tril_{-1}: s < t; tril_0: s <= t). Every kept score carries e^{c_t - c_s} <= 1. With the
rows u_t = S_{t-1} a_t of U (the "sa" of the official kernel):

    (I - A_ab) U = A~ S0^T + A_ak V             ->  U = W S0^T + U0,  W = (I - A_ab)^-1 A~,  U0 = (I - A_ab)^-1 A_ak V
    Y     = (R~ + A_rb W) S0^T + A_rk V + A_rb U0
    S_end = S0 M + X,   M = diag(e^{c_L}) + W^T B^,   X = V^T K^ + U0^T B^

All of it is batched matrix products and one unit-lower-triangular solve per chunk, for every chunk at once;
only S_{c+1} = S_c M_c + X_c is a loop over chunks (T/L steps of an N x N matmul, its own autograd.Function).

Stability: the clamp inside this op bounds |lambda| < e^{-1/2}, so the only growing factor, e^{-c_s}, is at most
e^{0.6065 L} (1.6e4 at L=16, 7e16 at the largest allowed L=64, far from fp32 overflow), and each kept score is a
sum of products whose exact values are bounded by |r||k| (resp. |a||b|): factorising e^{c_t - c_s} as
e^{c_t} * e^{-c_s} costs a few ulp per term and introduces no cancellation. The masked-out (s > t) scores are
large but finite and are multiplied by zero. The triangular solve is forward substitution, i.e. the in-chunk
recurrence for u itself, so it is as well conditioned as the recurrence. Cumulative sums restart every chunk.

T need not be a multiple of L: the tail is padded with r = k = v = a = b = 0 and lambda = 0 (decay 1), which
leaves the state unchanged, and the padded outputs are dropped; T <= L runs as one chunk of length T.
Gradients for every input (r, w, k, v, a, b and the initial state) come from autograd through the chunked form,
plus the scan's own backward (the same recurrence in reverse).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from src.ops.wkv6_torch import from_time_chunks, to_time_chunks
from src.ops.wkv7_sequential import compute_dtype_for

# Largest |log decay| per token allowed by the clamp: exp(-1/2).
LOG_DECAY_BOUND = math.exp(-0.5)
# Chunk length in use; bench/wkv7.py re-measures 16/32/64 on every run and reports them.
DEFAULT_CHUNK_LEN = 16
# e^{LOG_DECAY_BOUND * L} must stay far below the fp32 maximum (e^88.7): L = 64 gives e^38.8.
MAX_CHUNK_LEN = 64


class _ChunkStateScan(torch.autograd.Function):
    """The state entering every chunk: E_0 = initial, E_{c+1} = E_c @ M_c + X_c.

    Inputs M [C, B, H, N, N] (key x key), X [C, B, H, N, N] (value x key), initial [B, H, N, N]; outputs the
    entering states E [C, B, H, N, N] (E_0 .. E_{C-1}) and the final state E_C. The backward runs the adjoint
    recurrence lambda_c = dL/dE_c + lambda_{c+1} M_c^T in reverse, so no per-chunk autograd nodes are built;
    dX_c = lambda_{c+1}, dM_c = E_c^T lambda_{c+1}.
    """

    @staticmethod
    def forward(ctx, M, X, initial):
        n_chunks, B, H, N, _ = X.shape
        entering = torch.empty_like(X)
        entering[0] = initial
        E, Mv, Xv = (t.view(n_chunks, B * H, N, N) for t in (entering, M, X))
        for c in range(n_chunks - 1):
            torch.baddbmm(Xv[c], E[c], Mv[c], out=E[c + 1])
        final = torch.baddbmm(Xv[-1], E[-1], Mv[-1]).view(B, H, N, N)
        ctx.save_for_backward(M, entering)
        return entering, final

    @staticmethod
    def backward(ctx, grad_entering, grad_final):
        M, entering = ctx.saved_tensors
        n_chunks, B, H, N, _ = M.shape
        if grad_entering is None:
            grad_entering = torch.zeros_like(entering)
        if grad_final is None:
            grad_final = entering.new_zeros(B, H, N, N)
        grad_entering = grad_entering.contiguous()
        # grad_X[c] = dL/dE_{c+1}, the adjoint of the state after chunk c.
        grad_X = torch.empty_like(entering)
        grad_X[-1] = grad_final
        G, Mv, GX = (t.view(n_chunks, B * H, N, N) for t in (grad_entering, M, grad_X))
        for c in range(n_chunks - 1, 0, -1):
            torch.baddbmm(G[c], GX[c], Mv[c].transpose(1, 2), out=GX[c - 1])
        grad_initial = torch.baddbmm(G[0], GX[0], Mv[0].transpose(1, 2)).view(B, H, N, N)
        grad_M = entering.transpose(-1, -2) @ grad_X
        return grad_M, grad_X, grad_initial


def wkv7_torch(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: Optional[torch.Tensor] = None,
    chunk_len: int = DEFAULT_CHUNK_LEN,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """WKV7 in chunks of chunk_len tokens (see the module docstring for the formulas).

    r, w, k, v, a, b: [B, T, H, N], w the raw decay (the soft clamp is applied here); state: [B, H, N, N]
    ([b, h, value i, key j]) or None for zeros. Inputs of any float dtype; the work is done in float32 (float64
    when r is float64). Returns y [B, T, H, N] in r's dtype and the final state [B, H, N, N] in the compute
    dtype. Differentiable w.r.t. every input including the state. Shapes are validated by `src.ops.wkv7`.
    """
    if not 1 <= chunk_len <= MAX_CHUNK_LEN:
        raise ValueError(f"chunk_len must be in [1, {MAX_CHUNK_LEN}] (e^(0.6065 L) must stay representable), "
                         f"got {chunk_len}")
    compute = compute_dtype_for(r.dtype)
    B, T, H, N = r.shape
    L = min(chunk_len, T)
    r_c, k_c, v_c, a_c, b_c = (to_time_chunks(x, chunk_len, compute) for x in (r, k, v, a, b))
    # log d = -exp(-1/2) sigmoid(w), formed as -exp(logsigmoid(w) - 1/2) so that its gradient stays accurate
    # where the sigmoid saturates. Padding: 0, so the state passes unchanged.
    log_decay = to_time_chunks(-torch.exp(F.logsigmoid(w.to(compute)) - 0.5), chunk_len, compute)
    c_incl = torch.cumsum(log_decay, dim=-2)
    c_excl = F.pad(c_incl[..., :-1, :], (0, 0, 1, 0))  # a shifted copy, so c-_t - c_{t-1} is exactly 0
    c_total = c_incl[..., -1:, :]  # [C, B, H, 1, N]

    growth = torch.exp(-c_incl)  # <= e^{0.6065 L}
    to_end = torch.exp(c_total - c_incl)  # <= 1
    r_t = r_c * torch.exp(c_incl)
    a_t = a_c * torch.exp(c_excl)
    kb_t = torch.cat([k_c * growth, b_c * growth], dim=-2)  # [.., 2L, N]: k~ rows, then b~ rows
    kb_end = torch.cat([k_c * to_end, b_c * to_end], dim=-2)  # k^ rows, then b^ rows

    # All four score blocks in one product: rows a~ then r~, columns k~ then b~.
    scores = torch.cat([a_t, r_t], dim=-2) @ kb_t.transpose(-1, -2)  # [.., 2L, 2L]
    A_ak = torch.tril(scores[..., :L, :L], diagonal=-1)
    A_ab = torch.tril(scores[..., :L, L:], diagonal=-1)
    A_rkb = torch.cat([torch.tril(scores[..., L:, :L]), torch.tril(scores[..., L:, L:])], dim=-1)  # [A_rk | A_rb]

    # (I - A_ab) [W | U0] = [a~ | A_ak V]; unitriangular: the solver reads only the strictly lower part.
    solved = torch.linalg.solve_triangular(
        -A_ab, torch.cat([a_t, A_ak @ v_c], dim=-1), upper=False, unitriangular=True
    )
    W, U0 = solved[..., :N], solved[..., N:]
    vu = torch.cat([v_c, U0], dim=-2)  # [.., 2L, N]: v rows, then u0 rows

    y_inner = A_rkb @ vu  # A_rk V + A_rb U0
    r_eff = r_t + A_rkb[..., L:] @ W  # R~ + A_rb W
    M = torch.diag_embed(torch.exp(c_total.squeeze(-2))) + W.transpose(-1, -2) @ kb_end[..., L:, :]
    X = vu.transpose(-1, -2) @ kb_end  # V^T K^ + U0^T B^

    initial = r_c.new_zeros(B, H, N, N) if state is None else state.to(compute)
    entering, final = _ChunkStateScan.apply(M, X, initial)
    y = y_inner + r_eff @ entering.transpose(-1, -2)

    return from_time_chunks(y, T).to(r.dtype), final
