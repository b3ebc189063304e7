"""Build our CUDA sources, unchanged, as host C++ (test-only): a torch extension that runs the real kernels on the
CPU, and a torch-free program for the shared-memory race check.

    from tests.emulation.build import emulated_wkv6, set_block_order
    ext = emulated_wkv6(head_size=64, max_t=4096, dtype=torch.float32)   # the module cuda/wkv6_op.cpp defines
    y, s_out = ext.forward(r, k, v, w, u, s0)                            # CPU tensors
    set_block_order(ext, "shuffle", seed=3)                              # "forward" (default), "reverse", "shuffle"

`build_extension`-compatible entry point (what `src.ops.wkv6_cuda.build_extension` is replaced with in tests):

    build_emulated_extension(name, sources, defines, build_directory, verbose) -> module

What is compiled: a COPY of each source, written into the build folder, with exactly these textual changes:
- every launch `kernel<<<grid, block[, shmem[, stream]]>>>(args...)` becomes
  `::cuda_emu::launch(kernel, grid, block[, shmem[, stream]])(args...)` (include/cuda_host_emulation.h runs it:
  one block at a time, blockDim real std::threads per block);
- `x.is_cuda()` becomes `x.is_cpu()` (the binding's device check);
- for the race check only: each `__shared__ T a[n], b[m];` becomes instrumented arrays,
  `__shared__ ::cuda_emu::SharedArray<T, (n)> a{"a"}; __shared__ ::cuda_emu::SharedArray<T, (m)> b{"b"};`.
Each copy starts with a #line directive naming the original, and no change adds a line, so compiler messages
point into cuda/. The folder tests/emulation/include comes first on the include path, so the sources' own
`#include <cuda_runtime.h>`, `<cuda_bf16.h>`, `<c10/cuda/CUDAStream.h>`, `<c10/cuda/CUDAGuard.h>` get the
emulation. No file in cuda/ knows about any of this.

How the extension is compiled (CPU, g++, C++17, -pthread, the caller's defines): the `.cu` sources and the
emulation runtime (src/cuda_host_emulation.cpp) with `-O2` into objects by g++ directly, the binding by
`torch.utils.cpp_extension.load` through ninja, linked with those objects. The binding is compiled with -O0:
parsing torch/extension.h dominates its cost (about 30 s at -O0 against about 55 s at -O2 on a 2-core CI
machine) and nothing in it is hot; the kernels run at -O2.

Cache: `$TORCH_EXTENSIONS_DIR/wkv6_emulation/<name>_<hash>/` (without TORCH_EXTENSIONS_DIR: torch's default
root, `<tmp>/torch_extensions/wkv6_emulation/...`; the `build_directory` argument is not used), with one module
name per folder. The hash covers the transformed sources, the emulation headers and runtime, the defines and
flags, the compiler, torch and Python versions: unchanged sources never recompile, a changed kernel always does
(in a new folder, so checkouts with different kernels can share one cache). The runtime object is shared by all
builds (objects/). The build's hash is compiled into the library and checked after loading.

Block order: `set_block_order(module, order, seed)` calls the build's `cuda_emu_set_block_order` through ctypes;
the environment variable CUDA_EMU_BLOCK_ORDER=forward|reverse|shuffle[:seed] sets the default. Barrier timeout
(the deadlock guard's last resort): CUDA_EMU_BARRIER_TIMEOUT_S, default 120 s.

Command line (used by `prebuild` to compile several builds in parallel processes):
    python -m tests.emulation.build --head-size 64 --max-t 4096 --dtype fp32 [--build-directory DIR]
"""
import argparse
import ctypes
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
INCLUDE_DIR = HERE / "include"
RUNTIME_SOURCE = HERE / "src" / "cuda_host_emulation.cpp"
RACE_DRIVER_SOURCE = HERE / "src" / "wkv6_race_driver.cpp"
KERNEL_SOURCE = REPO_ROOT / "cuda" / "wkv6_cuda.cu"
BINDING_SOURCE = REPO_ROOT / "cuda" / "wkv6_op.cpp"
WKV6_SOURCES = (BINDING_SOURCE, KERNEL_SOURCE)

COMMON_FLAGS = ["-std=c++17", "-pthread", "-Wno-unknown-pragmas"]
OBJECT_FLAGS = ["-O2", *COMMON_FLAGS, "-fPIC", "-fvisibility=hidden"]
BINDING_FLAGS = ["-O0", *COMMON_FLAGS]
PROGRAM_FLAGS = ["-O1", *COMMON_FLAGS]
BLOCK_ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}

_built: Dict[str, object] = {}
_built_lock = threading.Lock()


# ---------------------------------------------------------------- source transformations

_LAUNCH = re.compile(
    r"(?P<kernel>[A-Za-z_]\w*(?:\s*::\s*[A-Za-z_]\w*)*(?:\s*<[^<>;{}()]*>)?)\s*<<<(?P<config>.*?)>>>", re.S
)
_IS_CUDA = re.compile(r"\b(?P<tensor>[A-Za-z_]\w*)\s*\.\s*is_cuda\s*\(\s*\)")
_SHARED = re.compile(
    r"__shared__\s+(?P<type>[^;\[\]{}()]+?)\s+"
    r"(?P<decls>[A-Za-z_]\w*\s*\[[^\];]+\](?:\s*,\s*[A-Za-z_]\w*\s*\[[^\];]+\])*)\s*;"
)
_SHARED_DECL = re.compile(r"(?P<name>[A-Za-z_]\w*)\s*\[(?P<size>[^\]]+)\]")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


class EmulationError(RuntimeError):
    """A source the emulation cannot transform, or a failed compile (the message has the compiler's output)."""


def strip_comments(text: str) -> str:
    return _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def rewrite_launches(text: str) -> Tuple[str, int]:
    """`k<<<cfg>>>(args)` -> `::cuda_emu::launch(k, cfg)(args)`; returns the text and the number rewritten."""
    return _LAUNCH.subn(lambda m: f"::cuda_emu::launch({m.group('kernel')}, {m.group('config').strip()})", text)


def rewrite_device_checks(text: str) -> Tuple[str, int]:
    """`x.is_cuda()` -> `x.is_cpu()`: the binding's device check, made to accept the emulation's CPU tensors."""
    return _IS_CUDA.subn(lambda m: f"{m.group('tensor')}.is_cpu()", text)


def instrument_shared(text: str) -> Tuple[str, int]:
    """Each `__shared__ T a[n], b[m];` -> instrumented SharedArray declarations on the same line."""

    def replace(match):
        element = " ".join(match.group("type").split())
        declarations = []
        for decl in _SHARED_DECL.finditer(match.group("decls")):
            name, size = decl.group("name"), decl.group("size").strip()
            declarations.append(f'__shared__ ::cuda_emu::SharedArray<{element}, ({size})> {name}{{"{name}"}};')
        return " ".join(declarations)

    return _SHARED.subn(replace, text)


def display_name(path: Path) -> str:
    """The name compiler messages give a source: its path in the repository, else its file name (so a copy in a
    temporary folder hashes the same from run to run)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path.name


def transform_source(path: Path, race_check: bool = False) -> str:
    """The emulated copy of one source file (see the module docstring for the exact changes)."""
    path = Path(path)
    original = path.read_text()
    text, launches = rewrite_launches(original)
    if strip_comments(text).count("<<<"):
        raise EmulationError(f"{path}: a kernel launch the emulation cannot rewrite (after {launches} rewritten)")
    text, _ = rewrite_device_checks(text)
    if race_check:
        wanted = len(re.findall(r"\b__shared__\b", strip_comments(text)))
        text, rewritten = instrument_shared(text)
        if rewritten != wanted:
            raise EmulationError(
                f"{path}: {wanted} __shared__ declarations, but only {rewritten} of the form "
                f"`__shared__ T name[size], ...;` that the race check can instrument"
            )
    assert text.count("\n") == original.count("\n"), "a transformation changed the line count"
    return f'#line 1 "{display_name(path)}"\n{text}'


# ---------------------------------------------------------------- helpers

def compiler() -> str:
    """The C++ compiler, as torch's extension builder picks it (CXX, else c++)."""
    return os.environ.get("CXX", "c++")


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as error:
        raise EmulationError(f"the C++ compiler {cxx!r} cannot be run: {error}") from None


_version_cache: Dict[str, str] = {}


def compiler_version(cxx: str) -> str:
    if cxx not in _version_cache:
        _version_cache[cxx] = _compiler_version(cxx)
    return _version_cache[cxx]


def emulation_headers() -> List[Path]:
    """The emulation's headers (include/), which every compiled translation unit may include."""
    return sorted(p for p in INCLUDE_DIR.rglob("*") if p.is_file())


def content_hash(parts: dict) -> str:
    """sha256 of `parts` (texts, flags, versions) and of the emulation headers."""
    digest = hashlib.sha256()
    digest.update(json.dumps(parts, sort_keys=True).encode())
    for path in emulation_headers():
        digest.update(str(path.relative_to(HERE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_if_changed(path: Path, text: str) -> None:
    """Write atomically, and only when the content differs (so ninja sees unchanged sources as unchanged)."""
    if path.exists() and path.read_text() == text:
        return
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def emulation_root(build_directory: Optional[Path] = None) -> Path:
    """$TORCH_EXTENSIONS_DIR/wkv6_emulation, or torch's default extensions root's (<tmp>/torch_extensions).

    `build_directory` (the GPU build's folder that src.ops.wkv6_cuda passes) is deliberately not used: emulated
    builds never share a folder with real ones, and every caller (the fixture, prebuild's worker processes,
    emulated_wkv6) finds the same cache."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR")
    if base:
        return Path(base).expanduser() / "wkv6_emulation"
    return Path(tempfile.gettempdir()) / "torch_extensions" / "wkv6_emulation"


def _run_compiles(commands: Sequence[Tuple[List[str], Path]], verbose: bool) -> None:
    """Run compiler commands in parallel (each writes a temp file, renamed to its target on success)."""
    running = []
    for command, target in commands:
        temp = target.with_name(target.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
        full = command + ["-o", str(temp)]
        if verbose:
            print(" ".join(full), flush=True)
        running.append((subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), temp,
                        target, full))
    failures = []
    for process, temp, target, full in running:
        output, _ = process.communicate()
        if process.returncode != 0:
            failures.append(f"$ {' '.join(full)}\n{output[-6000:]}")
            temp.unlink(missing_ok=True)
        else:
            if verbose and output:
                print(output, flush=True)
            os.replace(temp, target)
    if failures:
        raise EmulationError("host-emulation compile failed:\n" + "\n".join(failures))


# ---------------------------------------------------------------- the torch extension

class _ExtensionPlan:
    """Where each part of one emulated build goes. The build's identity `build_id` is a hash of all of it: the
    transformed sources, the emulation headers and runtime, the defines, flags, compiler, torch and Python; its
    folder and module name carry it, so two kernel versions (two checkouts sharing one cache, say) never share
    a folder, and both can be loaded in one process. The id is also compiled into the library and checked after
    loading."""

    def __init__(self, name: str, sources: Sequence[Path], defines: Sequence[str], build_directory: Optional[Path]):
        import torch

        sources = [Path(s) for s in sources]
        self.name = name
        self.defines = list(defines)
        self.kernels = [s for s in sources if s.suffix == ".cu"]
        self.bindings = [s for s in sources if s.suffix != ".cu"]
        if not self.bindings:
            raise EmulationError(f"{name}: no binding source (a .cpp with the PYBIND11_MODULE) among {sources}")
        self.transformed = {s: transform_source(s) for s in sources}
        self.cxx = compiler()
        self.runtime_object = runtime_object(build_directory)  # shared by all builds
        self.build_id = content_hash({
            "name": name, "defines": self.defines, "compiler": compiler_version(self.cxx),
            "binding_flags": BINDING_FLAGS, "object_flags": OBJECT_FLAGS, "torch": torch.__version__,
            "python": sys.version, "runtime": self.runtime_object.name,
            "sources": [(display_name(s), self.transformed[s]) for s in sources],
        })[:32]
        self.folder = emulation_root(build_directory) / f"{name}_{self.build_id[:16]}"
        self.module_name = re.sub(r"\W", "_", f"{name}_emu_{self.build_id[:10]}")
        self.library = self.folder / f"{self.module_name}.so"
        self.copies = {s: self.folder / _copy_name(s) for s in sources}
        self.build_id_source = self.folder / "build_id.cpp"
        # (object file, the source it is compiled from)
        self.objects = [(self.folder / f"{s.name}.o", self.copies[s]) for s in self.kernels]
        self.objects += [(self.runtime_object, RUNTIME_SOURCE), (self.folder / "build_id.o", self.build_id_source)]

    def is_built(self) -> bool:
        return self.library.exists() and f"cuda-emu-build:{self.build_id}".encode() in self.library.read_bytes()


def runtime_object(build_directory: Optional[Path] = None) -> Path:
    """The emulation runtime's object for extensions (no defines: one object serves every build)."""
    digest = content_hash({"flags": OBJECT_FLAGS, "source": RUNTIME_SOURCE.read_text(),
                           "compiler": compiler_version(compiler())})
    return emulation_root(build_directory) / "objects" / f"{RUNTIME_SOURCE.stem}.{digest[:12]}.o"


def ensure_runtime_object(build_directory: Optional[Path] = None, verbose: bool = False) -> Path:
    target = runtime_object(build_directory)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _run_compiles([([compiler(), *OBJECT_FLAGS, "-I", str(INCLUDE_DIR), "-c", str(RUNTIME_SOURCE)], target)],
                      verbose)
    return target


def _copy_name(source: Path) -> str:
    return f"{source.name}.emu.cpp" if source.suffix == ".cu" else f"{source.stem}.emu{source.suffix}"


def build_emulated_extension(name, sources, defines, build_directory, verbose):
    """Compile (once) and load the sources as a CPU torch extension running the kernels under host emulation.

    Same signature and result as `src.ops.wkv6_cuda.build_extension`: `name` the build's name, `sources` the
    binding .cpp and the kernel .cu, `defines` like ["-D_N_=64", "-D_T_=4096", "-DWKV6_FP32"]. `build_directory`
    is accepted for the signature and not used: the cache is $TORCH_EXTENSIONS_DIR/wkv6_emulation (docstring).
    """
    plan = _ExtensionPlan(name, sources, defines, Path(build_directory) if build_directory is not None else None)
    with _built_lock:
        if plan.build_id in _built:
            return _built[plan.build_id]
        plan.folder.mkdir(parents=True, exist_ok=True)
        for source, copy in plan.copies.items():
            write_if_changed(copy, plan.transformed[source])
        write_if_changed(plan.build_id_source,
                         '// generated: identifies the objects linked into this build\n'
                         'extern "C" __attribute__((visibility("default"))) const char* cuda_emu_build_id() '
                         f'{{ return "cuda-emu-build:{plan.build_id}"; }}\n')
        compiles = [([plan.cxx, *OBJECT_FLAGS, *([] if source == RUNTIME_SOURCE else plan.defines),
                      "-I", str(INCLUDE_DIR), "-c", str(source)], target)
                    for target, source in plan.objects if not target.exists()]
        plan.runtime_object.parent.mkdir(parents=True, exist_ok=True)
        _run_compiles(compiles, verbose)

        from torch.utils.cpp_extension import load

        try:
            module = load(
                name=plan.module_name,
                sources=[str(plan.copies[b]) for b in plan.bindings],
                extra_cflags=[*BINDING_FLAGS, *plan.defines],
                extra_ldflags=[*(str(o) for o, _ in plan.objects), "-pthread"],
                extra_include_paths=[str(INCLUDE_DIR)],
                build_directory=str(plan.folder),
                verbose=verbose,
            )
        except Exception as error:  # torch puts the compiler's output into the message
            raise EmulationError(f"building the emulated extension {name} in {plan.folder} failed:\n{error}") from None
        lib = _library(module)
        lib.cuda_emu_build_id.restype = ctypes.c_char_p
        found = lib.cuda_emu_build_id().decode()
        if found != f"cuda-emu-build:{plan.build_id}":
            raise EmulationError(f"{name}: loaded {module.__file__} is build {found}, expected {plan.build_id}")
        _built[plan.build_id] = module
        return module


def is_built(name, sources, defines, build_directory=None) -> bool:
    """Whether exactly this build's shared library is in the cache (loading it then costs about a second)."""
    return _ExtensionPlan(name, sources, defines, build_directory).is_built()


def wkv6_build_spec(head_size: int, max_t: int, dtype) -> Tuple[str, List[str]]:
    """(name, defines) of the WKV6 build, as src.ops.wkv6_cuda names and defines it."""
    import torch

    element = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    defines = [f"-D_N_={head_size}", f"-D_T_={max_t}"] + (["-DWKV6_FP32"] if dtype == torch.float32 else [])
    return f"wkv6_n{head_size}_t{max_t}_{element}", defines


def emulated_wkv6(head_size: int = 64, max_t: int = 4096, dtype=None, verbose: bool = False):
    """The emulated build of cuda/wkv6_op.cpp + cuda/wkv6_cuda.cu for (head size, max T, fp32 | bf16)."""
    import torch

    name, defines = wkv6_build_spec(head_size, max_t, dtype or torch.float32)
    return build_emulated_extension(name, WKV6_SOURCES, defines, None, verbose)


def run_in_parallel(jobs: Sequence[Callable[[], object]], workers: int = 2) -> list:
    """Each job's result, in the jobs' order, the jobs taken by `workers` threads (two compiles at once suit a
    2-core CI machine); the first error is raised once every job has ended."""
    results: list = [None] * len(jobs)
    errors: List[BaseException] = []
    pending = list(range(len(jobs)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop(0)
            try:
                results[index] = jobs[index]()
            except BaseException as error:  # reported below
                with lock:
                    errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def prebuild_wkv6(specs: Iterable[Tuple[int, int, object]], jobs: int = 2, timeout_s: float = 900) -> None:
    """Compile the missing WKV6 builds among `specs` [(head size, max T, dtype)], `jobs` processes at a time.

    A cold CI cache then costs the longest builds' wall time rather than their sum. Built ones are skipped.
    """
    import torch

    pending = []
    for head_size, max_t, dtype in specs:
        name, defines = wkv6_build_spec(head_size, max_t, dtype)
        if not is_built(name, WKV6_SOURCES, defines):
            element = "fp32" if dtype == torch.float32 else "bf16"
            pending.append([sys.executable, "-m", "tests.emulation.build", "--head-size", str(head_size),
                            "--max-t", str(max_t), "--dtype", element])
    if pending:
        ensure_runtime_object()  # once, before the parallel builds that all link it

    def build(cmd):
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        return None if process.returncode == 0 else f"$ {' '.join(cmd)}\n{output[-6000:]}"

    failures = [f for f in run_in_parallel([lambda cmd=cmd: build(cmd) for cmd in pending], jobs) if f]
    if failures:
        raise EmulationError("prebuilding the emulated WKV6 extensions failed:\n" + "\n".join(failures))


# ---------------------------------------------------------------- run-time controls of a build

def _library(module) -> ctypes.CDLL:
    return ctypes.CDLL(module.__file__)


def set_block_order(module, order: str = "forward", seed: int = 0) -> None:
    """Run the blocks of every later launch of this build in order, reversed, or shuffled with `seed`."""
    if order not in BLOCK_ORDERS:
        raise ValueError(f"block order must be one of {', '.join(BLOCK_ORDERS)}, got {order!r}")
    lib = _library(module)
    lib.cuda_emu_set_block_order.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
    lib.cuda_emu_set_block_order(BLOCK_ORDERS[order], seed)


def block_order(module) -> str:
    lib = _library(module)
    return {v: k for k, v in BLOCK_ORDERS.items()}[lib.cuda_emu_block_order()]


def blocks_run(module) -> int:
    """How many blocks this build has run so far (to check that a call went through the emulated kernels)."""
    lib = _library(module)
    lib.cuda_emu_blocks_run.restype = ctypes.c_longlong
    return lib.cuda_emu_blocks_run()


def last_launch_order(module) -> List[int]:
    """The linear block indices of this build's last kernel launch, in the order they ran."""
    lib = _library(module)
    lib.cuda_emu_last_launch_order.restype = ctypes.c_longlong
    lib.cuda_emu_last_launch_order.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.c_longlong]
    count = lib.cuda_emu_last_launch_order(None, 0)
    buffer = (ctypes.c_longlong * max(count, 1))()
    lib.cuda_emu_last_launch_order(buffer, count)
    return list(buffer[:count])


def set_barrier_timeout(module, seconds: float) -> None:
    lib = _library(module)
    lib.cuda_emu_set_barrier_timeout.argtypes = [ctypes.c_double]
    lib.cuda_emu_set_barrier_timeout(seconds)


# ---------------------------------------------------------------- host programs (race check, planted kernels)

def build_host_program(sources: Sequence[Path], defines: Sequence[str] = (), race_check: bool = False,
                       cache_root: Optional[Path] = None, name: str = "program", verbose: bool = False) -> Path:
    """Compile sources (kernels and a main) as one torch-free host program; returns the executable.

    Every source is transformed like the extension's (launches rewritten; with `race_check`, the shared arrays
    instrumented and -DCUDA_EMU_RACE_CHECK defined) and compiled with the emulation runtime. Each translation
    unit is cached by content as an object under `cache_root` (default: emulation_root()/programs), so a planted
    copy of the kernel recompiles only itself.
    """
    root = Path(cache_root or emulation_root() / "programs")
    cxx = compiler()
    runtime_flags = [*PROGRAM_FLAGS, *(["-DCUDA_EMU_RACE_CHECK"] if race_check else [])]
    flags = [*runtime_flags, *defines]
    common = {"compiler": compiler_version(cxx)}
    units = [(Path(s), transform_source(Path(s), race_check=race_check)) for s in sources]
    units.append((RUNTIME_SOURCE, RUNTIME_SOURCE.read_text()))
    objects, compiles = [], []
    (root / "objects").mkdir(parents=True, exist_ok=True)
    for source, text in units:
        unit_flags = runtime_flags if source == RUNTIME_SOURCE else flags  # the runtime needs no defines
        digest = content_hash({**common, "flags": unit_flags, "source": text})
        target = root / "objects" / f"{source.stem}_{digest[:16]}.o"
        objects.append(target)
        if not target.exists():
            copy = root / "objects" / f"{source.stem}_{digest[:16]}.emu.cpp"
            if source != RUNTIME_SOURCE:
                write_if_changed(copy, text)
            else:
                copy = source
            compiles.append(([cxx, *unit_flags, "-I", str(INCLUDE_DIR), "-c", str(copy)], target))
    _run_compiles(compiles, verbose)
    digest = content_hash({**common, "objects": [o.name for o in objects]})
    executable = root / f"{name}_{digest[:16]}"
    if not executable.exists():
        _run_compiles([([cxx, "-pthread", *map(str, objects)], executable)], verbose)
    return executable


def build_race_check(kernel_source: Path = KERNEL_SOURCE, head_size: int = 16, fp32: bool = True,
                     max_t: int = 64, cache_root: Optional[Path] = None) -> Path:
    """The race-check program for a copy of cuda/wkv6_cuda.cu: run it with [B T H seed]; exit 0 = no race."""
    defines = [f"-D_N_={head_size}", f"-D_T_={max_t}"] + (["-DWKV6_FP32"] if fp32 else [])
    return build_host_program([kernel_source, RACE_DRIVER_SOURCE], defines, race_check=True, cache_root=cache_root,
                              name="wkv6_race_check")


def build_race_checks(kernel_sources: Sequence[Path], **kwargs) -> List[Path]:
    """build_race_check for several kernel copies, two compiles at a time."""
    return run_in_parallel([lambda source=source: build_race_check(source, **kwargs) for source in kernel_sources])


def run_program(executable: Path, args: Sequence[str] = (), timeout_s: float = 120,
                env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run a host program; a hang becomes a TimeoutExpired after `timeout_s` (the test then fails, not hangs)."""
    return subprocess.run([str(executable), *map(str, args)], capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **(env or {})})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the host-emulated WKV6 extension into the cache")
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--max-t", type=int, default=4096)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    import torch

    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    module = emulated_wkv6(args.head_size, args.max_t, dtype, verbose=args.verbose)
    print(module.__file__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
