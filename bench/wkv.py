"""Speed of the WKV6 operator implementations (the harness and its method: bench/wkv_harness.py).

    .venv/bin/python bench/wkv.py                  # CPU figures; GPU figures too where torch sees a CUDA device
    .venv/bin/python bench/wkv.py --threads 1      # pin torch's CPU threads (a shared machine)
    .venv/bin/python bench/wkv.py --skip-gpu       # CPU only

CPU: fp32, B=1 H=32 T=512 N=64; the torch op at chunk lengths 16/32/64 against the sequential loop (target: at
least 10x forward+backward). Results: bench/results/wkv-cpu.json and .md.
GPU: B=8 T=1024 H=32 N=64 (C=2048, the RWKV6-1.6B layer shape): our cuda op and the torch op, bf16 and fp32, and
fla's chunk_rwkv6 (bf16) where `fla` imports. Results: bench/results/wkv-<gpu name>.json and .md.
scripts/gpu_check.sh measures fla in a second run that adds its row to the same files:

    python bench/wkv.py --skip-cpu --variants cuda,torch
    python bench/wkv.py --skip-cpu --variants fla --update
"""
import inspect
import sys

import torch

from bench.wkv_harness import WkvBench, main
from src.ops import wkv6
from src.ops.wkv6_cuda import load_wkv6_extension
from src.ops.wkv6_sequential import wkv6_sequential
from src.ops.wkv6_torch import DEFAULT_CHUNK_LEN, wkv6_torch


def make_inputs(B, T, H, N, dtype, device, seed=0):
    """r, k, v, w, u in the ranges a trained RWKV6 produces (w in [-6, 1]: log-decay -0.0025 to -2.7 per step; u
    stays fp32, as the model passes it), and a gradient for y."""
    gen = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=gen) * 0.5 for _ in range(3))
    w = torch.rand(B, T, H, N, generator=gen) * 7.0 - 6.0
    u = torch.randn(H, N, generator=gen) * 0.5
    grad_y = torch.randn(B, T, H, N, generator=gen)
    inputs = [x.to(device=device, dtype=dtype) for x in (r, k, v, w)] + [u.to(device)]
    return inputs, grad_y.to(device=device, dtype=dtype)


def torch_op(chunk_len):
    return lambda r, k, v, w, u: wkv6_torch(r, k, v, w, u, None, chunk_len=chunk_len)


def sequential_op(r, k, v, w, u):
    return wkv6_sequential(r, k, v, w, u, None)


def cuda_op(dtype):
    load_wkv6_extension(head_size=BENCH.gpu_shape["N"], dtype=dtype)  # build before timing
    return lambda r, k, v, w, u: wkv6(r, k, v, w, u, op="cuda")


def fla_op():
    """fla's chunk_rwkv6 as fn(r, k, v, w, u) -> (y, state), or (None, reason) if unavailable.

    fla's w is the log of the decay (ours: decay = exp(-exp(w))), and its default scale is K**-0.5 (RWKV uses 1).
    Current fla (0.3 on, e.g. fla-core 0.6.0) takes [B, T, H, N] as we do; versions with a `head_first` argument
    are told head_first=False.
    """
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except Exception as error:  # not installed, or a triton mismatch: report, do not fail the benchmark
        return None, f"fla not available: {type(error).__name__}: {error}"
    extra = {"head_first": False} if "head_first" in inspect.signature(chunk_rwkv6).parameters else {}

    def run(r, k, v, w, u):
        log_decay = -torch.exp(w.float()).to(r.dtype)
        return chunk_rwkv6(r, k, v, log_decay, u.to(r.dtype), scale=1.0, output_final_state=True, **extra)

    return run, None


BENCH = WkvBench(
    title="WKV6", script="bench/wkv.py", stem="wkv", input_names="r, k, v, w, u", make_inputs=make_inputs,
    torch_op=torch_op, sequential_op=sequential_op, cuda_op=cuda_op, fla_op=fla_op,
    default_chunk_len=DEFAULT_CHUNK_LEN, cpu_shape=dict(B=1, T=512, H=32, N=64),
    gpu_shape=dict(B=8, T=1024, H=32, N=64), sequential_budget_s=60.0, fla_label="fla chunk_rwkv6 bf16",
)

if __name__ == "__main__":
    sys.exit(main(BENCH, __doc__.splitlines()[0]))
