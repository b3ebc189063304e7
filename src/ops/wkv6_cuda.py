"""Our WKV6 CUDA kernel: JIT build (torch.utils.cpp_extension.load through ninja) and the autograd.Function.

Recurrence per (batch element, head): y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i][j]), then
S[i][j] = d_t[i] S[i][j] + k_t[i] v_t[j] with d_t = exp(-exp(w_t)) computed in fp32 inside the kernel.

Thread layout (cuda/wkv6_cuda.cu's header has the formulas): one block per (batch element, head).
- forward: N threads, thread j holds column j of the N x N state in registers; per token the block stages r, k,
  the decay and r*u*k in shared memory, and each thread writes y_t[j]. The final state goes to a new tensor.
- backward pass 1: N threads, forward in time, thread i holds row i of the state: gr, gu and, for the decay
  gradient, a float scratch buffer [B, T, H, N].
- backward pass 2: 2N threads, backward in time holding the adjoint dL/dS: the first N own its rows (gk, gw), the
  other N its columns (gv, and the initial state's gradient).
No step depends on a compile-time T: T >= 1 up to the build's maximum works, including T = 1.

The binding (cuda/wkv6_op.cpp) is a pybind11 module, so each build has its own name and several can be loaded in
one process:

    wkv6_n{head size}_t{max T}_{bf16|fp32}

compiled with -D_N_=<head size>, -D_T_=<max T> (and -DWKV6_FP32 for float inputs) into
<cache_dir>/<that name>/, once; later loads reuse the build. The cache folder and the default maximum T are
explicit settings (`configure_wkv6_cuda`), defaulting to ~/.cache/rwkv_bone/torch_extensions and 4096; entry
points that honour TORCH_EXTENSIONS_DIR read it themselves and pass it in.
"""
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CUDA_SOURCES = (REPO_ROOT / "cuda" / "wkv6_op.cpp", REPO_ROOT / "cuda" / "wkv6_cuda.cu")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "rwkv_bone" / "torch_extensions"
DEFAULT_MAX_T = 4096
ELEMENT_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass
class Wkv6CudaSettings:
    """What `wkv6(..., op="cuda")` builds and where: largest T per build, cache folder, verbose compiler output."""

    max_t: int = DEFAULT_MAX_T
    cache_dir: Optional[str] = None  # None -> DEFAULT_CACHE_DIR
    verbose: bool = False


_settings = Wkv6CudaSettings()
_loaded = {}
_load_lock = threading.Lock()


def configure_wkv6_cuda(max_t: Optional[int] = None, cache_dir: Optional[str] = None, verbose: Optional[bool] = None):
    """Set the maximum T compiled into the kernel, the build cache folder and verbosity for later cuda calls."""
    if max_t is not None:
        if int(max_t) < 1:
            raise ValueError(f"max_t must be >= 1, got {max_t}")
        _settings.max_t = int(max_t)
    if cache_dir is not None:
        _settings.cache_dir = str(cache_dir)
    if verbose is not None:
        _settings.verbose = bool(verbose)
    return _settings


def find_nvcc() -> Optional[str]:
    """Path of the nvcc that torch's extension builder will use (CUDA_HOME/bin/nvcc), or None."""
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME:
        candidate = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nvcc")


def cuda_unavailable_reason(device=None) -> Optional[str]:
    """Why the cuda op cannot run on `device` (None: on the current CUDA device), or None if it can."""
    from torch.utils import cpp_extension

    if device is not None and torch.device(device).type != "cuda":
        return f"the device is {torch.device(device)}, not a CUDA GPU"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"torch sees no CUDA GPU (torch {torch.__version__}, {build})"
    if find_nvcc() is None:
        return "nvcc (the CUDA compiler) was not found; install the CUDA toolkit or set CUDA_HOME"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja), and torch's JIT extension builder needs it"
    return None


def extension_name(head_size: int, max_t: int, dtype: torch.dtype) -> str:
    """The build's name, e.g. wkv6_n64_t4096_bf16."""
    return f"wkv6_n{head_size}_t{max_t}_{ELEMENT_NAMES[dtype]}"


def load_wkv6_extension(
    head_size: int = 64,
    max_t: Optional[int] = None,
    dtype: torch.dtype = torch.bfloat16,
    cache_dir: Optional[str] = None,
    verbose: Optional[bool] = None,
):
    """Build (first time) or load the extension for (head size, max T, element type); cached per process.

    Raises RuntimeError when no CUDA GPU / nvcc / ninja is available, ValueError for an unsupported dtype.
    """
    if dtype not in ELEMENT_NAMES:
        raise ValueError(f"the WKV6 CUDA kernel supports bf16 and fp32 inputs, not {dtype}; use op='torch'")
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot build the WKV6 CUDA kernel: {reason}. Use op='torch' instead.")
    max_t = _settings.max_t if max_t is None else int(max_t)
    cache_root = Path(cache_dir or _settings.cache_dir or DEFAULT_CACHE_DIR).expanduser()
    verbose = _settings.verbose if verbose is None else verbose
    name = extension_name(head_size, max_t, dtype)
    key = (name, str(cache_root))
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        from torch.utils.cpp_extension import load

        defines = [f"-D_N_={head_size}", f"-D_T_={max_t}"] + (["-DWKV6_FP32"] if dtype == torch.float32 else [])
        build_directory = cache_root / name
        build_directory.mkdir(parents=True, exist_ok=True)
        module = load(
            name=name,
            sources=[str(path) for path in CUDA_SOURCES],
            build_directory=str(build_directory),
            extra_cflags=["-O3", *defines],
            extra_cuda_cflags=["-O3", "--use_fast_math", "-Xptxas", "-O3", "--extra-device-vectorization", *defines],
            verbose=verbose,
        )
        _loaded[key] = module
        return module


class Wkv6CudaFunction(torch.autograd.Function):
    """autograd wrapper of the kernels: forward(r, k, v, w, u, s0) -> (y, s_out); gradients for all six."""

    @staticmethod
    def forward(ctx, extension, r, k, v, w, u, s0):
        y, s_out = extension.forward(r, k, v, w, u, s0)
        ctx.extension = extension
        ctx.save_for_backward(r, k, v, w, u, s0)
        return y, s_out

    @staticmethod
    def backward(ctx, grad_y, grad_s_out):
        r, k, v, w, u, s0 = ctx.saved_tensors
        grad_y = grad_y.to(r.dtype).contiguous()
        grad_s_out = grad_s_out.float().contiguous()
        gr, gk, gv, gw, gu_per_batch, gs0 = ctx.extension.backward(r, k, v, w, u, s0, grad_y, grad_s_out)
        return None, gr, gk, gv, gw, gu_per_batch.sum(0), gs0


def wkv6_cuda(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """WKV6 on the GPU through our kernel. Same contract as `src.ops.wkv6` (shapes validated there).

    r, k, v, w: CUDA tensors [B, T, H, N] in bf16 or fp32; u [H, N] any float dtype (used in fp32);
    state [B, H, N, N] (used in fp32; never modified) or None. Returns y in r's dtype and the fp32 final state.
    """
    reason = cuda_unavailable_reason(r.device)
    if reason is not None:
        raise RuntimeError(f"wkv6 op='cuda' cannot run: {reason}. Use op='torch' (it runs on CPU and GPU).")
    if r.dtype not in ELEMENT_NAMES:
        raise ValueError(f"wkv6 op='cuda' takes bf16 or fp32 inputs, got {r.dtype}; cast them or use op='torch'")
    B, T, H, N = r.shape
    if T > _settings.max_t:
        raise ValueError(
            f"wkv6 op='cuda': T={T} exceeds the compiled maximum T={_settings.max_t}; raise it with "
            f"src.ops.wkv6_cuda.configure_wkv6_cuda(max_t={T}) (or larger) before the first call, "
            f"or process the sequence in pieces of at most {_settings.max_t} tokens, passing the state along"
        )
    extension = load_wkv6_extension(head_size=N, dtype=r.dtype)
    u32 = u.to(device=r.device, dtype=torch.float32).contiguous()
    if state is None:
        s0 = torch.zeros(B, H, N, N, device=r.device, dtype=torch.float32)
    else:
        s0 = state.to(dtype=torch.float32).contiguous()
    r, k, v, w = (x.contiguous() for x in (r, k, v, w))
    y, s_out = Wkv6CudaFunction.apply(extension, r, k, v, w, u32, s0)
    return y, s_out
