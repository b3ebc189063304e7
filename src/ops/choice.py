"""Choosing a WKV op once per run, for its device, head size and dtype: the one rule both kernels follow.

"auto" -> "cuda" where our kernel can run (a CUDA device, nvcc and ninja, the kernel's limits, and the build for
exactly this head size and dtype succeeds), else "torch", with a note saying which and why. "cuda" asked for
where it cannot run raises RuntimeError naming the missing piece. "torch" and "sequential" pass through.
Loading a model takes the chosen op and never chooses again.
"""
from typing import Callable, NamedTuple, Optional

import torch

from src.ops.wkv6_cuda import cuda_unavailable_reason


class WkvChoice(NamedTuple):
    """The op to run and, when "auto" had to choose, one line saying which and why."""

    op: str
    note: str = ""


def choose_wkv_op(name: str, device, head_size: int, dtype: torch.dtype, kernel: str,
                  limit_problem: Callable[[int, torch.dtype, int], Optional[str]],
                  load_extension: Callable[..., object], ops: tuple) -> WkvChoice:
    """The choice for `kernel` ("WKV6", "WKV7"), given its limits check and its build loader."""
    device = torch.device(device)
    if name in ("torch", "sequential"):
        return WkvChoice(name)
    if name not in ("auto", "cuda"):
        raise ValueError(f"unknown WKV op {name!r}; choose auto, {', '.join(ops)}")
    reason = cuda_unavailable_reason(device) or limit_problem(head_size, dtype, 1)
    if reason is None:
        try:
            load_extension(head_size=head_size, dtype=dtype)
        except RuntimeError as error:  # a failed build is reported, and "auto" falls back to torch
            reason = str(error)
    if name == "cuda":
        if reason is not None:
            raise RuntimeError(f"{kernel} op 'cuda' cannot run here: {reason}. Use op='torch' (--wkv_op torch), "
                               f"which runs on CPU and GPU")
        return WkvChoice("cuda")
    if reason is None:
        return WkvChoice("cuda", f"{kernel} op 'auto' on {device}: using 'cuda' (head size {head_size}, {dtype})")
    return WkvChoice("torch", f"{kernel} op 'auto' on {device}: using 'torch' ({reason})")
