"""WKV6 operator on the CPU: the chunked torch op against the sequential loop, and the loop against a hand formula.

Tolerances, all relative to the largest magnitude of the reference tensor (max |a - e| <= tol * max |e|):
- float64, torch op vs sequential loop: 1e-10 for y, the final state and every gradient (observed ~1e-14).
- float32 torch op vs float64 loop: 2e-5 for y and the state, 2e-4 for gradients.
- bf16 inputs: y (returned in bf16) 1e-2, the fp32 state 1e-4, against the float64 loop on the same
  (bf16-rounded) inputs.
"""
import math

import pytest
import torch

from src.ops import resolve_wkv_op, wkv6
from src.ops.wkv6_sequential import wkv6_sequential
from src.ops.wkv6_torch import DEFAULT_CHUNK_LEN, _IntraChunkScores, wkv6_torch

F64_TOL = 1e-10
F32_TOL, F32_GRAD_TOL = 2e-5, 2e-4
BF16_Y_TOL, BF16_STATE_TOL = 1e-2, 1e-4

DECAYS = {
    "typical": (-3.0, 1.0),  # per-step log-decay between -0.05 and -2.7
    "strong": (1.0, 3.0),  # log-decay -2.7 to -20 per step
    "weak": (-8.0, -7.5),  # log-decay about -3e-4 per step: the state keeps almost everything
    "mixed": (-8.0, 3.0),
}


def make_inputs(B, T, H, N, decay="typical", with_state=True, dtype=torch.float64, seed=0):
    """Random r, k, v, w, u, state (state None unless with_state) on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = DECAYS[decay]
    r, k, v = (torch.randn(B, T, H, N, generator=gen, dtype=torch.float64) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    u = torch.randn(H, N, generator=gen, dtype=torch.float64)
    state = torch.randn(B, H, N, N, generator=gen, dtype=torch.float64) if with_state else None
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return [cast(x) for x in (r, k, v, w, u)], cast(state)


def outputs_and_grads(fn, tensors, state, seed=1):
    """y, final state and the gradients of sum(y*g) + sum(state_out*gs) for random g, gs (fixed by seed)."""
    leaves = [x.detach().clone().requires_grad_() for x in tensors]
    state_leaf = None if state is None else state.detach().clone().requires_grad_()
    y, state_out = fn(*leaves, state_leaf)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    gs = torch.randn(state_out.shape, generator=gen, dtype=torch.float64).to(state_out.dtype)
    ((y * g).sum() + (state_out * gs).sum()).backward()
    result = {"y": y.detach(), "state": state_out.detach()}
    for name, leaf in zip("rkvwu", leaves):
        result["grad_" + name] = leaf.grad
    if state_leaf is not None:
        result["grad_state"] = state_leaf.grad
    return result


def assert_close_rel(actual, expected, tol, what):
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= tol * max(scale, 1e-30), f"{what}: max error {error:.3e} > {tol:g} x max |ref| {scale:.3e}"


def seq_op(r, k, v, w, u, state):
    return wkv6(r, k, v, w, u, state, op="sequential")


def torch_op(r, k, v, w, u, state):
    return wkv6(r, k, v, w, u, state, op="torch")


# ---------------------------------------------------------------- the reference itself, anchored by hand


def test_sequential_matches_hand_derived_closed_form():
    """T=2, H=1, N=2: y and the final state written out by hand in scalars (math.exp), no loop, no tensors."""
    (r, k, v, w, u), S0 = make_inputs(1, 2, 1, 2, decay="mixed", seed=3)
    y, S2 = wkv6_sequential(r, k, v, w, u, S0)
    R, K, V, W = ([[x[0, t, 0, i].item() for i in range(2)] for t in range(2)] for x in (r, k, v, w))
    U = [u[0, i].item() for i in range(2)]
    s = [[S0[0, 0, i, j].item() for j in range(2)] for i in range(2)]
    d = [[math.exp(-math.exp(W[t][i])) for i in range(2)] for t in range(2)]
    for j in range(2):
        y0 = sum(R[0][i] * (U[i] * K[0][i] * V[0][j] + s[i][j]) for i in range(2))
        y1 = sum(
            R[1][i] * (U[i] * K[1][i] * V[1][j] + d[0][i] * s[i][j] + K[0][i] * V[0][j]) for i in range(2)
        )
        assert y[0, 0, 0, j].item() == pytest.approx(y0, rel=1e-12, abs=1e-12)
        assert y[0, 1, 0, j].item() == pytest.approx(y1, rel=1e-12, abs=1e-12)
        for i in range(2):
            s2 = d[1][i] * d[0][i] * s[i][j] + d[1][i] * K[0][i] * V[0][j] + K[1][i] * V[1][j]
            assert S2[0, 0, i, j].item() == pytest.approx(s2, rel=1e-12, abs=1e-12)


def test_intra_chunk_scores_custom_backward_passes_gradcheck():
    gen = torch.Generator().manual_seed(5)
    r = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    log_decay = (-torch.rand(3, 6, 4, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    u = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_IntraChunkScores.apply, (r, k, log_decay, u))


# ---------------------------------------------------------------- torch op vs the loop, float64

F64_CASES = [
    # (id, B, H, T, N, decay, with_state)
    ("T1", 2, 2, 1, 8, "typical", True),
    ("T2", 2, 2, 2, 8, "typical", False),
    ("T_not_multiple_of_chunk", 2, 2, DEFAULT_CHUNK_LEN + 5, 8, "typical", True),
    ("T_several_chunks", 1, 3, 3 * DEFAULT_CHUNK_LEN + 1, 8, "typical", True),
    ("T_exact_chunks", 1, 2, 2 * DEFAULT_CHUNK_LEN, 8, "mixed", False),
    ("strong_decay", 2, 2, DEFAULT_CHUNK_LEN + 13, 8, "strong", True),
    ("weak_decay", 2, 2, DEFAULT_CHUNK_LEN + 13, 8, "weak", True),
    ("mixed_decay_N16", 1, 2, 40, 16, "mixed", True),
]


@pytest.mark.parametrize("case", F64_CASES, ids=[c[0] for c in F64_CASES])
def test_torch_op_matches_sequential_float64(case):
    _, B, H, T, N, decay, with_state = case
    tensors, state = make_inputs(B, T, H, N, decay=decay, with_state=with_state)
    got = outputs_and_grads(torch_op, tensors, state)
    ref = outputs_and_grads(seq_op, tensors, state)
    assert set(got) == set(ref)
    for name in ref:
        assert_close_rel(got[name], ref[name], F64_TOL, f"{case[0]} {name}")


@pytest.mark.parametrize("chunk_len,T", [(1, 5), (3, 10), (4, 23), (7, 7), (64, 30)])
def test_any_chunk_length_matches_sequential_float64(chunk_len, T):
    tensors, state = make_inputs(2, T, 2, 4, decay="mixed", seed=T)
    got = outputs_and_grads(lambda *a: wkv6_torch(*a[:5], a[5], chunk_len=chunk_len), tensors, state)
    ref = outputs_and_grads(seq_op, tensors, state)
    for name in ref:
        assert_close_rel(got[name], ref[name], F64_TOL, f"chunk_len={chunk_len} T={T} {name}")


def test_splitting_the_sequence_and_carrying_the_state_gives_the_same_output():
    (r, k, v, w, u), state = make_inputs(2, 50, 2, 8, decay="mixed", seed=11)
    y_whole, s_whole = wkv6(r, k, v, w, u, state)
    for cut in (1, 23, DEFAULT_CHUNK_LEN, 49):
        y_a, s_a = wkv6(r[:, :cut], k[:, :cut], v[:, :cut], w[:, :cut], u, state)
        y_b, s_b = wkv6(r[:, cut:], k[:, cut:], v[:, cut:], w[:, cut:], u, s_a)
        assert_close_rel(torch.cat([y_a, y_b], dim=1), y_whole, F64_TOL, f"split at {cut}: y")
        assert_close_rel(s_b, s_whole, F64_TOL, f"split at {cut}: state")


# ---------------------------------------------------------------- lower precision


@pytest.mark.parametrize("decay", ["typical", "strong", "weak"])
def test_float32_torch_op_against_float64_sequential(decay):
    tensors, state = make_inputs(2, 70, 2, 16, decay=decay, seed=7)
    ref = outputs_and_grads(seq_op, tensors, state)
    tensors32 = [x.float() for x in tensors]
    got = outputs_and_grads(torch_op, tensors32, state.float())
    assert got["y"].dtype == torch.float32 and got["state"].dtype == torch.float32
    for name in ref:
        tol = F32_TOL if name in ("y", "state") else F32_GRAD_TOL
        assert_close_rel(got[name], ref[name], tol, f"fp32 {decay} {name}")


def test_bf16_inputs_forward_against_float64_sequential():
    tensors, state = make_inputs(2, 45, 2, 16, decay="mixed", seed=9)
    bf16 = [x.to(torch.bfloat16) for x in tensors]
    y, s = wkv6(*bf16[:4], tensors[4].float(), state.float())
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    y_ref, s_ref = wkv6_sequential(*[x.double() for x in bf16[:4]], tensors[4].float().double(), state.float().double())
    assert_close_rel(y, y_ref, BF16_Y_TOL, "bf16 y")
    assert_close_rel(s, s_ref, BF16_STATE_TOL, "bf16 state")


def test_extreme_decays_stay_finite_in_float32():
    """log-decay down to -exp(8) ~ -2981 per step, and -exp(-8) ~ -3e-4: nothing overflows, results match fp64."""
    (r, k, v, w, u), state = make_inputs(1, 3 * DEFAULT_CHUNK_LEN, 2, 8, decay="typical", seed=13)
    w = w.clone()
    w[..., :4] = torch.linspace(5.0, 8.0, 4, dtype=torch.float64)  # four channels with enormous decay
    w[..., 4:] = -8.0
    tensors = [r, k, v, w, u]
    ref = outputs_and_grads(seq_op, tensors, state)
    got = outputs_and_grads(torch_op, [x.float() for x in tensors], state.float())
    for name in ref:
        assert torch.isfinite(got[name]).all(), name
        tol = F32_TOL if name in ("y", "state") else F32_GRAD_TOL
        # w's gradient is compared on the moderate channels; on the others it is ~0 (about e^-2981) and fp32
        # rounding noise of the cancelling terms (~1e-7 times log-decay 2981) is the expected answer.
        if name == "grad_w":
            assert_close_rel(got[name][..., 4:], ref[name][..., 4:], tol, "extreme decay grad_w (weak channels)")
            assert got[name][..., :4].abs().max().item() < 1e-2
        else:
            assert_close_rel(got[name], ref[name], tol, f"extreme decay {name}")


# ---------------------------------------------------------------- interface and errors


def test_inputs_are_not_modified_and_dtypes_follow_the_contract():
    (r, k, v, w, u), state = make_inputs(1, 9, 2, 4, dtype=torch.float32)
    copies = [x.clone() for x in (r, k, v, w, u, state)]
    y, s = wkv6(r, k, v, w, u, state)
    for before, after in zip(copies, (r, k, v, w, u, state)):
        assert torch.equal(before, after)
    assert y.shape == r.shape and y.dtype == torch.float32
    assert s.shape == (1, 2, 4, 4) and s.dtype == torch.float32
    y0, s0 = wkv6(r, k, v, w, u)  # state None = zeros
    y_zero, s_zero = wkv6(r, k, v, w, u, torch.zeros_like(state))
    assert torch.allclose(y0, y_zero) and torch.allclose(s0, s_zero)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.update(k=a["k"][:, :-1]), "k has shape"),
        (lambda a: a.update(u=a["u"][:1]), "u \\(time_faaaa\\) must have shape"),
        (lambda a: a.update(state=a["state"][..., :-1]), "state must have shape"),
        (lambda a: a.update(v=a["v"].double()), "v is torch.float64 but r is torch.float32"),
        (lambda a: a.update(r=a["r"][0]), "r must have shape \\[B, T, H, N\\]"),
        (lambda a: [a.update({n: a[n][:, :0]}) for n in "rkvw"], "sequence is empty"),
        (lambda a: a.update(op="triton"), "unknown op 'triton'"),
    ],
)
def test_bad_input_raises_a_clear_value_error(change, message):
    (r, k, v, w, u), state = make_inputs(1, 5, 2, 4, dtype=torch.float32)
    args = dict(r=r, k=k, v=v, w=w, u=u, state=state, op="torch")
    change(args)
    with pytest.raises(ValueError, match=message):
        wkv6(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no CUDA GPU exists")
def test_cuda_op_without_a_gpu_says_so_and_suggests_torch():
    (r, k, v, w, u), state = make_inputs(1, 5, 2, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="no CUDA GPU.*op='torch'"):
        wkv6(r, k, v, w, u, state, op="cuda")
    with pytest.raises(RuntimeError, match="op='torch'"):
        resolve_wkv_op("cuda", "cpu")


def test_resolve_wkv_op(capsys):
    choice = resolve_wkv_op("auto", torch.device("cpu"))
    assert choice.op == "torch" and "using 'torch'" in choice.note and "not a CUDA GPU" in choice.note
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""  # the caller reports the note; stdout stays machine-readable
    assert resolve_wkv_op("torch", "cpu") == ("torch", "")
    assert resolve_wkv_op("sequential", "cpu") == ("sequential", "")
    with pytest.raises(ValueError, match="unknown WKV op 'fast'"):
        resolve_wkv_op("fast", "cpu")
