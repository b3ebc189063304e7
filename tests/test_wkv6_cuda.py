"""Our WKV6 CUDA kernel: a compile check of the .cu wherever nvcc exists, and GPU tests against the torch op.

GPU tests (marked gpu; skipped without CUDA) compare op="cuda" with the chunked torch op run in float64 on the same
inputs (bf16 inputs are upcast exactly). Tolerances, relative to the largest magnitude of the reference tensor:
- fp32 inputs: 1e-4 for y and the state, 1e-3 for gradients (the kernel uses fast-math exponentials).
- bf16 inputs: 2e-2 for y and gradients (outputs are rounded to bf16 once), 1e-3 for the fp32 state and the
  fp32 gradients of u and the initial state.
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from src.ops import resolve_wkv_op, wkv6
from src.ops.wkv6_cuda import DEFAULT_MAX_T, Wkv6CudaSettings, configure_wkv6_cuda

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNEL_SOURCE = REPO_ROOT / "cuda" / "wkv6_cuda.cu"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA compiler) not on PATH")
@pytest.mark.parametrize("element_flag", [[], ["-DWKV6_FP32"]], ids=["bf16", "fp32"])
def test_kernel_source_compiles_with_nvcc(tmp_path, element_flag):
    """The .cu compiles on its own (no torch headers), for bf16 and fp32 elements, head size 64, max T 1024."""
    command = [
        "nvcc", "-c", "-arch=sm_80", "-O3", "--use_fast_math", "-D_N_=64", "-D_T_=1024", *element_flag,
        "-o", str(tmp_path / "wkv6_cuda.o"), str(KERNEL_SOURCE),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "wkv6_cuda.o").stat().st_size > 0


# ---------------------------------------------------------------- on a GPU

Y_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float32: 1e-3, torch.bfloat16: 2e-2}
FP32_RESULT_TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-3}  # state, grad of u and of the initial state
DECAYS = {"typical": (-5.0, 1.0), "strong": (1.0, 3.0), "weak": (-8.0, -7.5)}


def make_cuda_inputs(B, T, H, dtype, decay="typical", seed=0, N=64):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = DECAYS[decay]
    r, k, v = (torch.randn(B, T, H, N, generator=gen) * 0.5 for _ in range(3))
    w = torch.rand(B, T, H, N, generator=gen) * (hi - lo) + lo
    u = torch.randn(H, N, generator=gen) * 0.5
    state = torch.randn(B, H, N, N, generator=gen) * 0.5
    to_gpu = lambda x: x.to(device="cuda", dtype=dtype)  # noqa: E731
    return [to_gpu(x) for x in (r, k, v, w)], u.cuda(), state.cuda()


def run_op(op, rkvw, u, state, g, gs):
    """y, state_out and all six gradients of sum(y*g) + sum(state_out*gs)."""
    leaves = [x.detach().clone().requires_grad_() for x in rkvw]
    u_leaf = u.detach().clone().requires_grad_()
    state_leaf = state.detach().clone().requires_grad_()
    y, state_out = wkv6(*leaves, u_leaf, state_leaf, op=op)
    ((y.double() * g).sum() + (state_out.double() * gs).sum()).backward()
    grads = {f"grad_{n}": x.grad for n, x in zip("rkvw", leaves)}
    grads.update(grad_u=u_leaf.grad, grad_state=state_leaf.grad)
    return {"y": y.detach(), "state": state_out.detach(), **grads}


def assert_close_rel(actual, expected, tol, what):
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= tol * max(scale, 1e-30), f"{what}: max error {error:.3e} > {tol:g} x max |ref| {scale:.3e}"


GPU_CASES = [
    # (B, T, H, decay)
    (2, 1, 2, "typical"),
    (2, 2, 2, "typical"),
    (1, 3, 3, "typical"),
    (2, 37, 2, "typical"),
    (1, 129, 2, "mixed_strong"),
    (2, 64, 2, "strong"),
    (1, 100, 2, "weak"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[f"B{c[0]}-T{c[1]}-H{c[2]}-{c[3]}" for c in GPU_CASES])
def test_cuda_op_matches_torch_op(case, dtype):
    B, T, H, decay = case
    rkvw, u, state = make_cuda_inputs(B, T, H, dtype, decay="strong" if decay == "mixed_strong" else decay, seed=T)
    if decay == "mixed_strong":  # half the channels strong, half weak, in one sequence
        rkvw[3][..., 32:] = -8.0
    gen = torch.Generator().manual_seed(T + 1)
    # Output gradients exactly representable in bf16 / fp32, since autograd rounds them to y's / the state's dtype
    # before the kernel sees them, while the float64 reference would not.
    g = torch.randn(rkvw[0].shape, generator=gen).to(torch.bfloat16).double().cuda()
    gs = torch.randn(state.shape, generator=gen).double().cuda()
    state_before = state.clone()
    got = run_op("cuda", rkvw, u, state, g, gs)
    assert torch.equal(state, state_before), "the cuda op must not modify the initial state"
    ref = run_op("torch", [x.double() for x in rkvw], u.double(), state.double(), g, gs)
    assert got["y"].dtype == dtype and got["state"].dtype == torch.float32
    for name in ref:
        if name == "y":
            tol = Y_TOL[dtype]
        elif name in ("state", "grad_u", "grad_state"):
            tol = FP32_RESULT_TOL[dtype]
        else:
            tol = GRAD_TOL[dtype]
        assert_close_rel(got[name], ref[name], tol, f"{dtype} B{B} T{T} H{H} {decay}: {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_op_without_state_and_in_pieces(dtype):
    rkvw, u, _ = make_cuda_inputs(2, 50, 2, dtype, seed=4)
    y_whole, s_whole = wkv6(*rkvw, u, op="cuda")
    y_ref, s_ref = wkv6(*[x.double() for x in rkvw], u.double(), op="torch")
    assert_close_rel(y_whole, y_ref, Y_TOL[dtype], "no state: y")
    assert_close_rel(s_whole, s_ref, FP32_RESULT_TOL[dtype], "no state: state")
    first = [x[:, :21] for x in rkvw]
    second = [x[:, 21:] for x in rkvw]
    y_a, s_a = wkv6(*first, u, op="cuda")
    y_b, s_b = wkv6(*second, u, s_a, op="cuda")
    assert_close_rel(torch.cat([y_a, y_b], 1), y_ref, Y_TOL[dtype], "in pieces: y")
    assert_close_rel(s_b, s_ref, FP32_RESULT_TOL[dtype], "in pieces: state")


@pytest.mark.gpu
def test_cuda_op_rejects_t_beyond_the_compiled_maximum():
    rkvw, u, _ = make_cuda_inputs(1, DEFAULT_MAX_T + 1, 1, torch.bfloat16)
    expected = f"T={DEFAULT_MAX_T + 1} exceeds the compiled maximum T={DEFAULT_MAX_T}.*max_t"
    with pytest.raises(ValueError, match=expected):
        wkv6(*rkvw, u, op="cuda")


@pytest.mark.gpu
def test_cuda_op_rejects_float64_and_auto_picks_cuda():
    rkvw, u, _ = make_cuda_inputs(1, 4, 1, torch.float64)
    with pytest.raises(ValueError, match="bf16 or fp32.*op='torch'"):
        wkv6(*rkvw, u, op="cuda")
    for dtype in (torch.bfloat16, torch.float32):
        choice = resolve_wkv_op("auto", torch.device("cuda"), head_size=64, dtype=dtype)
        assert choice.op == "cuda" and "using 'cuda'" in choice.note, choice
    assert resolve_wkv_op("auto", torch.device("cpu")).op == "torch"
    assert resolve_wkv_op("auto", torch.device("cuda"), head_size=64, dtype=torch.float16).op == "torch"


def test_cuda_settings_validate_max_t():
    with pytest.raises(ValueError, match="max_t must be >= 1"):
        configure_wkv6_cuda(max_t=0)
    assert Wkv6CudaSettings().max_t == DEFAULT_MAX_T
