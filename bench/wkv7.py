"""Speed of the WKV7 operator implementations (the harness and its method: bench/wkv_harness.py).

    .venv/bin/python bench/wkv7.py                 # CPU figures; GPU figures too where torch sees a CUDA device
    .venv/bin/python bench/wkv7.py --threads 1     # pin torch's CPU threads (a shared machine)
    .venv/bin/python bench/wkv7.py --skip-gpu      # CPU only

CPU: fp32, B=1 H=16 T=512 N=64 with model-like inputs (raw w in [-4, 2], a = -kappa_hat, b = kappa_hat * iclr,
kappa_hat of unit norm per head); the torch op at chunk lengths 16/32/64 against the sequential loop (target: at
least 10x forward+backward). Results: bench/results/wkv7-cpu.json and .md.
GPU: B=8 T=1024 H=32 N=64 (C=2048, the RWKV-7 1.5B layer shape): our cuda kernel and the torch op, bf16 and fp32,
and fla's chunk_rwkv7 (bf16) where `fla` imports. Results: bench/results/wkv7-<gpu name>.json and .md.
scripts/gpu_check.sh measures fla in a second run that adds its row to the same files:

    python bench/wkv7.py --skip-cpu --variants cuda,torch
    python bench/wkv7.py --skip-cpu --variants fla --update
"""
import inspect
import sys

import torch
import torch.nn.functional as F

from bench.wkv_harness import WkvBench, main
from src.ops.wkv7 import wkv7
from src.ops.wkv7_cuda import load_wkv7_extension
from src.ops.wkv7_sequential import wkv7_sequential
from src.ops.wkv7_torch import DEFAULT_CHUNK_LEN, wkv7_torch


def make_inputs(B, T, H, N, dtype, device, seed=0):
    """r, w, k, v, a, b in the ranges a trained RWKV-7 produces, and a gradient for y."""
    gen = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=gen) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=gen) * 6.0 - 4.0
    kappa = F.normalize(torch.randn(B, T, H, N, generator=gen), dim=-1)
    iclr = torch.sigmoid(torch.randn(B, T, H, N, generator=gen))
    grad_y = torch.randn(B, T, H, N, generator=gen)
    inputs = [x.to(device=device, dtype=dtype) for x in (r, w, k, v, -kappa, kappa * iclr)]
    return inputs, grad_y.to(device=device, dtype=dtype)


def torch_op(chunk_len):
    return lambda r, w, k, v, a, b: wkv7_torch(r, w, k, v, a, b, None, chunk_len=chunk_len)


def sequential_op(r, w, k, v, a, b):
    return wkv7_sequential(r, w, k, v, a, b, None)


def cuda_op(dtype):
    load_wkv7_extension(head_size=BENCH.gpu_shape["N"], dtype=dtype)  # build before timing
    return lambda r, w, k, v, a, b: wkv7(r, w, k, v, a, b, op="cuda")


def fla_op():
    """fla's chunk_rwkv7 as fn(r, w, k, v, a, b) -> (y, state), or (None, reason) if unavailable.

    fla takes the log of the decay: ours is log d = -exp(-softplus(-w) - 1/2) of the raw w. Its argument is `w`
    in fla 0.3 to 0.6 and `log_w` in versions that also accept a raw w; both are passed by name.
    """
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except Exception as error:  # not installed, or a triton mismatch: report, do not fail the benchmark
        return None, f"fla not available: {type(error).__name__}: {error}"
    parameters = inspect.signature(chunk_rwkv7).parameters
    decay_name = "log_w" if "log_w" in parameters else "w"
    extra = {"head_first": False} if "head_first" in parameters else {}

    def run(r, w, k, v, a, b):
        log_decay = -torch.exp(-F.softplus(-w.float()) - 0.5).to(r.dtype)
        return chunk_rwkv7(r=r, k=k, v=v, a=a, b=b, scale=1.0, output_final_state=True,
                           **{decay_name: log_decay}, **extra)

    return run, None


BENCH = WkvBench(
    title="WKV7", script="bench/wkv7.py", stem="wkv7", input_names="r, w, k, v, a, b", make_inputs=make_inputs,
    torch_op=torch_op, sequential_op=sequential_op, cuda_op=cuda_op, fla_op=fla_op,
    default_chunk_len=DEFAULT_CHUNK_LEN, cpu_shape=dict(B=1, T=512, H=16, N=64),
    gpu_shape=dict(B=8, T=1024, H=32, N=64), sequential_budget_s=90.0, fla_label="fla chunk_rwkv7 bf16",
)

if __name__ == "__main__":
    sys.exit(main(BENCH, __doc__.splitlines()[0]))
