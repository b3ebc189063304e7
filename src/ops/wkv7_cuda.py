"""Our WKV7 CUDA kernel (RWKV-7 "x070"): its JIT build and the autograd.Function around it.

Recurrence per (batch element, head), value index i, key index j, state S [N(value), N(key)]:

    S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t,   d_t = exp(-exp(-1/2) sigmoid(w_t))

with w the raw decay (the soft clamp is inside the kernel), any T >= 1, an initial state in and the final state
out. cuda/wkv7_cuda.cu's header has the thread layout and every gradient formula. Elements bf16 or fp32; the
kernel accumulates in fp32 and keeps the state (and the state's gradient) in fp32.

The binding (cuda/wkv7_op.cpp) is a pybind11 module, one build per

    wkv7_n{head size}_t{max T}_{bf16|fp32}

compiled with -D_N_=<head size>, -D_T_=<max T> (and -DWKV7_FP32 for float inputs) into
<cache_dir>/<that name>/ by the shared `src.ops.wkv6_cuda.build_extension` (the only place that runs the
compiler; tests replace `build_extension` in THIS module with the host-emulated builder). The cache folder and
compiler verbosity are WKV6's settings (`configure_wkv6_cuda(cache_dir=..., verbose=...)`), so both kernels
build into one place; the largest T is this module's own (`configure_wkv7_cuda(max_t=...)`).

Memory: forward keeps the state before every 16th token (fp32, B*H*ceil(T/16)*N*N floats = 16*B*T*C bytes at
N=64) for the backward pass, which recomputes each 16-token chunk from it.
"""
from pathlib import Path
from typing import Optional, Tuple

import torch

from src.ops.wkv6_cuda import ELEMENT_NAMES, build_extension, load_cached

REPO_ROOT = Path(__file__).resolve().parents[2]
CUDA_SOURCES = (REPO_ROOT / "cuda" / "wkv7_op.cpp", REPO_ROOT / "cuda" / "wkv7_cuda.cu")
DEFAULT_MAX_T = 4096
MAX_HEAD_SIZE = 256  # the backward block has 2N threads, each holding an N-vector in registers
MAX_T = 2 ** 31 - 1

_max_t = DEFAULT_MAX_T
_loaded = {}


def configure_wkv7_cuda(max_t: Optional[int] = None) -> int:
    """Set the maximum T compiled into later WKV7 cuda builds; returns the setting."""
    global _max_t
    if max_t is not None:
        if int(max_t) < 1:
            raise ValueError(f"max_t must be >= 1, got {max_t}")
        _max_t = int(max_t)
    return _max_t


def kernel_limit_problem(head_size: int, dtype: torch.dtype, seq_len: int) -> Optional[str]:
    """Why the WKV7 kernel cannot run this shape and element type (None when it can); needs no GPU or compiler."""
    if dtype not in ELEMENT_NAMES:
        return f"the cuda WKV7 kernel computes in bf16 or fp32, not {dtype}"
    if not 1 <= head_size <= MAX_HEAD_SIZE:
        return f"head size {head_size} is outside the cuda WKV7 kernel's range [1, {MAX_HEAD_SIZE}]"
    if seq_len > MAX_T:
        return f"a sequence of {seq_len} tokens is beyond what the cuda WKV7 kernel can index (T <= {MAX_T})"
    return None


def extension_name(head_size: int, max_t: int, dtype: torch.dtype) -> str:
    """The build's name, e.g. wkv7_n64_t4096_bf16."""
    return f"wkv7_n{head_size}_t{max_t}_{ELEMENT_NAMES[dtype]}"


def build_defines(head_size: int, max_t: int, dtype: torch.dtype):
    return [f"-D_N_={head_size}", f"-D_T_={max_t}"] + (["-DWKV7_FP32"] if dtype == torch.float32 else [])


def load_wkv7_extension(head_size: int = 64, dtype: torch.dtype = torch.bfloat16, max_t: Optional[int] = None):
    """The build for (head size, element type, max T): built the first time, then cached per process."""
    if dtype not in ELEMENT_NAMES:
        raise ValueError(f"the WKV7 CUDA kernel supports bf16 and fp32 inputs, not {dtype}; use op='torch'")
    max_t = _max_t if max_t is None else int(max_t)
    return load_cached(_loaded, extension_name(head_size, max_t, dtype), CUDA_SOURCES,
                       build_defines(head_size, max_t, dtype), build_extension)


class Wkv7CudaFunction(torch.autograd.Function):
    """autograd wrapper: forward(r, w, k, v, a, b, s0) -> (y, s_out); gradients for all seven inputs."""

    @staticmethod
    def forward(ctx, extension, r, w, k, v, a, b, s0):
        y, s_out, checkpoints = extension.forward(r, w, k, v, a, b, s0)
        ctx.extension = extension
        ctx.save_for_backward(r, w, k, v, a, b, checkpoints)
        return y, s_out

    @staticmethod
    def backward(ctx, grad_y, grad_s_out):
        r, w, k, v, a, b, checkpoints = ctx.saved_tensors
        grad_y = torch.zeros_like(r) if grad_y is None else grad_y.to(r.dtype).contiguous()
        if grad_s_out is None:
            grad_s_out = checkpoints.new_zeros(checkpoints.shape[0], checkpoints.shape[1], *checkpoints.shape[3:])
        else:
            grad_s_out = grad_s_out.float().contiguous()
        gr, gw, gk, gv, ga, gb, gs0 = ctx.extension.backward(r, w, k, v, a, b, checkpoints, grad_y, grad_s_out)
        return None, gr, gw, gk, gv, ga, gb, gs0


def wkv7_cuda(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """WKV7 through our kernel. Same contract as `src.ops.wkv7` / `wkv7_torch` (shapes validated there).

    r, w, k, v, a, b: [B, T, H, N] bf16 or fp32 (w the raw decay); state [B, H, N, N] ([b, h, value, key],
    used in fp32, never modified) or None for zeros. Returns y in r's dtype and the fp32 final state, both
    differentiable w.r.t. every input including the state.
    """
    if r.dtype not in ELEMENT_NAMES:
        raise ValueError(f"wkv7 op='cuda' takes bf16 or fp32 inputs, got {r.dtype}; cast them or use op='torch'")
    B, T, H, N = r.shape
    problem = kernel_limit_problem(N, r.dtype, T)
    if problem is not None:
        raise ValueError(f"wkv7 op='cuda': {problem}; use op='torch'")
    if T > _max_t:
        raise ValueError(
            f"wkv7 op='cuda': T={T} exceeds the compiled maximum T={_max_t}; raise it with "
            f"src.ops.wkv7_cuda.configure_wkv7_cuda(max_t={T}) (or larger) before the first call, "
            f"or process the sequence in pieces of at most {_max_t} tokens, passing the state along"
        )
    extension = load_wkv7_extension(head_size=N, dtype=r.dtype)
    if state is None:
        s0 = torch.zeros(B, H, N, N, device=r.device, dtype=torch.float32)
    else:
        s0 = state.to(dtype=torch.float32).contiguous()
    r, w, k, v, a, b = (x.contiguous() for x in (r, w, k, v, a, b))
    return Wkv7CudaFunction.apply(extension, r, w, k, v, a, b, s0)
