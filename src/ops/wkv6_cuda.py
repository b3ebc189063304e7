"""Our WKV6 CUDA kernel: its limits, its JIT build (torch.utils.cpp_extension.load through ninja) and the
autograd.Function around it.

Recurrence per (batch element, head): y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i][j]), then
S[i][j] = d_t[i] S[i][j] + k_t[i] v_t[j] with d_t = exp(-exp(w_t)) computed in fp32 inside the kernel.
cuda/wkv6_cuda.cu's header has the thread layout and the gradient formulas.

The binding (cuda/wkv6_op.cpp) is a pybind11 module, so each build has its own name and several can be loaded
in one process:

    wkv6_n{head size}_t{max T}_{bf16|fp32}

compiled with -D_N_=<head size>, -D_T_=<max T> (and -DWKV6_FP32 for float inputs) into
<cache_dir>/<that name>/, once; later loads reuse the build. What is built and where is an explicit setting
(`configure_wkv6_cuda`): the launch layer passes TORCH_EXTENSIONS_DIR in; nothing here reads the environment.

Cost per call: a dictionary look-up of the loaded build. Whether a GPU, nvcc and ninja are there is asked once,
when the op is chosen (`src.ops.resolve_wkv_op`) or the build is made, never per call; the binding itself
refuses tensors that are not on the GPU.
"""
import functools
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CUDA_SOURCES = (REPO_ROOT / "cuda" / "wkv6_op.cpp", REPO_ROOT / "cuda" / "wkv6_cuda.cu")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "rwkv_bone" / "torch_extensions"
DEFAULT_MAX_T = 4096
ELEMENT_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}

# What the kernel can take, checked by planners before anything is built.
MAX_HEAD_SIZE = 256  # one register row of the N x N state per thread
MAX_T = 2 ** 31 - 1  # T is a 32-bit int in the kernel
BUILD_T_MULTIPLE = 4096  # one build serves every T up to its bound (the bound costs nothing at run time)


@dataclass
class Wkv6CudaSettings:
    """What `wkv6(..., op="cuda")` builds and where: largest T per build, cache folder, verbose compiler output."""

    max_t: int = DEFAULT_MAX_T
    cache_dir: Optional[str] = None  # None -> DEFAULT_CACHE_DIR
    verbose: bool = False


settings = Wkv6CudaSettings()
_loaded = {}
_load_lock = threading.Lock()


def configure_wkv6_cuda(max_t: Optional[int] = None, cache_dir: Optional[str] = None, verbose: Optional[bool] = None):
    """Set the maximum T compiled into the kernel, the build cache folder and verbosity for later cuda calls."""
    if max_t is not None:
        if int(max_t) < 1:
            raise ValueError(f"max_t must be >= 1, got {max_t}")
        settings.max_t = int(max_t)
    if cache_dir is not None:
        settings.cache_dir = str(cache_dir)
    if verbose is not None:
        settings.verbose = bool(verbose)
    return settings


def build_max_t_for(seq_len: int) -> int:
    """The compiled maximum T that serves sequences of `seq_len` tokens: the default, or the next multiple of
    BUILD_T_MULTIPLE above it (so nearby lengths share one build)."""
    return max(DEFAULT_MAX_T, -(-int(seq_len) // BUILD_T_MULTIPLE) * BUILD_T_MULTIPLE)


def kernel_limit_problem(head_size: int, dtype: torch.dtype, seq_len: int) -> Optional[str]:
    """Why the kernel cannot run this shape and element type (None when it can); no GPU or compiler is needed."""
    if dtype not in ELEMENT_NAMES:
        return f"the cuda WKV kernel computes in bf16 or fp32, not {dtype}"
    if head_size > MAX_HEAD_SIZE:
        return f"head size {head_size} is beyond the cuda WKV kernel's limit of {MAX_HEAD_SIZE}"
    if seq_len > MAX_T:
        return f"a sequence of {seq_len} tokens is beyond what the cuda WKV kernel can index (T <= {MAX_T})"
    return None


def find_nvcc() -> Optional[str]:
    """Path of the nvcc that torch's extension builder will use (CUDA_HOME/bin/nvcc), or None."""
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME:
        candidate = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nvcc")


@functools.lru_cache(maxsize=None)
def missing_build_tool() -> Optional[str]:
    """What the JIT build lacks (nvcc, ninja), or None. Asked once per process: the ninja probe starts a process."""
    from torch.utils import cpp_extension

    if find_nvcc() is None:
        return "nvcc (the CUDA compiler) was not found; install the CUDA toolkit or set CUDA_HOME"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja), and torch's JIT extension builder needs it"
    return None


def cuda_unavailable_reason(device) -> Optional[str]:
    """Why the cuda op cannot run on `device`, or None if it can (the build itself may still fail)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the device is {device}, not a CUDA GPU"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"torch sees no CUDA GPU (torch {torch.__version__}, {build})"
    return missing_build_tool()


def extension_name(head_size: int, max_t: int, dtype: torch.dtype) -> str:
    """The build's name, e.g. wkv6_n64_t4096_bf16."""
    return f"wkv6_n{head_size}_t{max_t}_{ELEMENT_NAMES[dtype]}"


def compiler_tail(error: BaseException, lines: int = 12) -> str:
    """The last lines of a failed build's message (torch puts the compiler output in it)."""
    text = str(error).strip().splitlines()
    return "\n".join(text[-lines:])


def build_extension(name: str, sources: Sequence[Path], defines: Sequence[str], build_directory: Path, verbose: bool):
    """Compile and load one build of a kernel (WKV6 or WKV7): the only place that runs the compiler.

    Raises RuntimeError naming the missing tool, or with the compiler's last lines when the build fails.
    """
    from torch.utils.cpp_extension import load

    missing = cuda_unavailable_reason(torch.device("cuda"))
    if missing is not None:
        raise RuntimeError(f"cannot build the CUDA kernel {name}: {missing}. Use op='torch' (it runs on CPU and GPU)")
    try:
        return load(
            name=name,
            sources=[str(path) for path in sources],
            build_directory=str(build_directory),
            extra_cflags=["-O3", *defines],
            extra_cuda_cflags=["-O3", "--use_fast_math", "-Xptxas", "-O3", "--extra-device-vectorization", *defines],
            verbose=verbose,
        )
    except Exception as error:
        raise RuntimeError(f"building the CUDA kernel {name} failed:\n{compiler_tail(error)}") from None


def load_wkv6_extension(head_size: int = 64, dtype: torch.dtype = torch.bfloat16, max_t: Optional[int] = None):
    """The build for (head size, element type, max T): built the first time, then cached per process."""
    if dtype not in ELEMENT_NAMES:
        raise ValueError(f"the WKV6 CUDA kernel supports bf16 and fp32 inputs, not {dtype}; use op='torch'")
    max_t = settings.max_t if max_t is None else int(max_t)
    defines = [f"-D_N_={head_size}", f"-D_T_={max_t}"] + (["-DWKV6_FP32"] if dtype == torch.float32 else [])
    return load_cached(_loaded, extension_name(head_size, max_t, dtype), CUDA_SOURCES, defines, build_extension)


def load_cached(loaded: dict, name: str, sources, defines, build):
    """loaded[name], or the build made once (under a lock) with `build(name, sources, defines, folder, verbose)`
    in its own folder of the cache; every kernel's loader goes through here."""
    module = loaded.get(name)
    if module is not None:
        return module
    with _load_lock:
        if name not in loaded:
            build_directory = Path(settings.cache_dir or DEFAULT_CACHE_DIR).expanduser() / name
            build_directory.mkdir(parents=True, exist_ok=True)
            loaded[name] = build(name, sources, defines, build_directory, settings.verbose)
        return loaded[name]


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
    if r.dtype not in ELEMENT_NAMES:
        raise ValueError(f"wkv6 op='cuda' takes bf16 or fp32 inputs, got {r.dtype}; cast them or use op='torch'")
    B, T, H, N = r.shape
    if T > settings.max_t:
        raise ValueError(
            f"wkv6 op='cuda': T={T} exceeds the compiled maximum T={settings.max_t}; raise it with "
            f"src.ops.wkv6_cuda.configure_wkv6_cuda(max_t={T}) (or larger) before the first call, "
            f"or process the sequence in pieces of at most {settings.max_t} tokens, passing the state along"
        )
    extension = load_wkv6_extension(head_size=N, dtype=r.dtype)
    u32 = u.to(device=r.device, dtype=torch.float32).contiguous()
    if state is None:
        s0 = torch.zeros(B, H, N, N, device=r.device, dtype=torch.float32)
    else:
        s0 = state.to(dtype=torch.float32).contiguous()
    r, k, v, w = (x.contiguous() for x in (r, k, v, w))
    return Wkv6CudaFunction.apply(extension, r, k, v, w, u32, s0)
