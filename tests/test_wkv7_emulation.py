"""Our WKV7 CUDA kernel (cuda/wkv7_cuda.cu + cuda/wkv7_op.cpp), compiled unchanged as host C++ and run on the CPU
(tests/emulation: one block at a time, blockDim real threads, real barriers), so CI without a GPU tests the
kernel's own indexing, arithmetic and barriers.

Reference: `wkv7_sequential` in float64 on exactly the values the kernel sees (bf16 inputs upcast exactly; the
output gradient gy is rounded to the build's element type first, as autograd does before the kernel sees it).
Inputs are in the model's regime: a = -kappa_hat, b = kappa_hat * iclr with kappa_hat unit-norm per head and
iclr ~ U(0, 1); r, k, v ~ N(0, 0.5^2); s0 ~ N(0, 0.5^2); gy, gs ~ N(0, 1). Decays (w is raw): "typical"
w ~ U(-6, 6); "strong" w ~ U(8, 12), at the clamp's strong end (d -> exp(-exp(-1/2)) = 0.545); "weak"
w ~ U(-12, -8), at its weak end (d -> 1); "mixed" half the channels strong, half weak, plus |w| = 30 entries
(sigmoid saturated in fp32). Error figure per output: max |kernel - reference| / max |reference|, printed per
case (pytest -s), with the chunked torch op's (`wkv7_torch` in the build's dtype) on the same inputs at the
longest T of each case for context.
Tolerances:
- fp32 builds: 2e-6 for y, the state and every gradient (fp32 accumulation of at most a few hundred terms; the
  backward recomputes every state from a checkpoint, so nothing is divided by a decay).
- bf16 builds: 5e-3 for y and the gradients of r, w, k, v, a, b (each rounded to bf16 once: at most 2^-8 = 3.9e-3
  relative to its own magnitude); 2e-6 for the fp32 outputs (the state and the state's gradient).
Cases: head size 16 through the torch extension (fp32 and bf16 builds), T in {1, 2, 15, 16, 17, 33} (around the
backward's 16-token checkpoint interval), B != H; head size 64 (fp32 and bf16), T in {17, 33}, through the
torch-free driver (tests/emulation/src/wkv7_race_driver.cpp, file mode), which needs no torch-extension build.
Also: identical results for every block order; the shared-memory race check (instrumented build) is clean, and
reports a race when any one __syncthreads() is removed (a copy per barrier, head size 16: about 10 s each); and
`src.ops.wkv7(..., op="cuda")` end to end through autograd on the emulated build (the real Wkv7CudaFunction).

CI cost: two torch-extension builds (fp32-N16, bf16-N16; about 50 s of compiler time each, almost all of it
parsing torch/extension.h) and two torch-free race-check programs (fp32-N64, bf16-N64: about 10 s each), all
started at once, two at a time, on a cold cache in $TORCH_EXTENSIONS_DIR/wkv6_emulation; a warm cache rebuilds
nothing. WKV7_EMULATION_FULL_MATRIX=1 adds the head-size-64 torch-extension builds (and the test that the driver
and the extension give identical bits).
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.ops import wkv7_cuda as wkv7_cuda_module
from src.ops.wkv7 import wkv7
from src.ops.wkv7_sequential import wkv7_sequential
from src.ops.wkv7_torch import wkv7_torch
from tests.emulation import build as emu

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNEL_SOURCE = REPO_ROOT / "cuda" / "wkv7_cuda.cu"
DRIVER_SOURCE = REPO_ROOT / "tests" / "emulation" / "src" / "wkv7_race_driver.cpp"
MAX_T = wkv7_cuda_module.DEFAULT_MAX_T

SEQ_NAMES = ("y", "gr", "gw", "gk", "gv", "ga", "gb")  # the driver's output order for [B, T, H, N] tensors
NAMES = ("y", "state", "gr", "gw", "gk", "gv", "ga", "gb", "gs0")
FP32_OUTPUTS = ("state", "gs0")
DTYPE_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16"}
EXTENSION_BUILDS = [(16, torch.float32), (16, torch.bfloat16)]
if os.environ.get("WKV7_EMULATION_FULL_MATRIX") == "1":
    EXTENSION_BUILDS += [(64, torch.float32), (64, torch.bfloat16)]
DRIVER_BUILDS = [(64, torch.float32), (64, torch.bfloat16)]
T_VALUES = (1, 2, 15, 16, 17, 33)
BATCH_HEADS = {16: (2, 3), 64: (2, 1)}  # (B, H), B != H where it costs little
DECAYS = {"typical": (-6.0, 6.0), "strong": (8.0, 12.0), "weak": (-12.0, -8.0), "mixed": None}
TOL = {
    torch.float32: {name: 2e-6 for name in NAMES},
    torch.bfloat16: {**{name: 5e-3 for name in NAMES}, **{name: 2e-6 for name in FP32_OUTPUTS}},
}

_summary = {}  # (build id, decay) -> {output: (kernel max error, torch op max error)}


def build_id(N, dtype):
    return f"{DTYPE_NAME[dtype]}-N{N}"


# ---------------------------------------------------------------- builds (all started at once)

def extension_spec(N, dtype):
    name = wkv7_cuda_module.extension_name(N, MAX_T, dtype)
    return name, wkv7_cuda_module.build_defines(N, MAX_T, dtype)


def driver_defines(N, dtype):
    return wkv7_cuda_module.build_defines(N, MAX_T, dtype)


def build_driver(N, dtype):
    return emu.build_host_program([KERNEL_SOURCE, DRIVER_SOURCE], driver_defines(N, dtype), race_check=True,
                                  name=f"wkv7_race_check_{build_id(N, dtype)}")


def _build_extension_in_subprocess(N, dtype):
    """Compile one emulated extension build in its own process (the in-process builder serialises builds)."""
    name, defines = extension_spec(N, dtype)
    if emu.is_built(name, wkv7_cuda_module.CUDA_SOURCES, defines):
        return
    code = ("import sys; from pathlib import Path; from tests.emulation.build import build_emulated_extension as b; "
            f"b({name!r}, [Path(p) for p in {[str(p) for p in wkv7_cuda_module.CUDA_SOURCES]!r}], {defines!r}, "
            "None, False)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        raise emu.EmulationError(f"building {name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")


@pytest.fixture(scope="module")
def all_builds():
    """Every build of this file, compiled two at a time (cold cache), then loaded: {"ext": .., "driver": ..}."""
    jobs = [("ext", spec, _build_extension_in_subprocess) for spec in EXTENSION_BUILDS]
    jobs += [("driver", spec, build_driver) for spec in DRIVER_BUILDS]
    values = emu.run_in_parallel([lambda spec=spec, job=job: job(*spec) for _, spec, job in jobs])
    results = {(kind, spec): value for (kind, spec, _), value in zip(jobs, values)}
    modules = {}
    for N, dtype in EXTENSION_BUILDS:
        name, defines = extension_spec(N, dtype)
        modules[(N, dtype)] = emu.build_emulated_extension(name, wkv7_cuda_module.CUDA_SOURCES, defines, None, False)
    drivers = {spec: results[("driver", spec)] for spec in DRIVER_BUILDS}
    yield {"ext": modules, "driver": drivers}
    if _summary:
        print("\n\nWKV7 kernel under host emulation: max error / max |ref| over T in", T_VALUES,
              "(kernel | torch op on the same inputs at the longest T)")
        for (bid, decay), errors_ in sorted(_summary.items()):
            row = "  ".join(f"{name} {k:.1e}|{t:.1e}" for name, (k, t) in errors_.items())
            print(f"  {bid:9s} {decay:8s} {row}")


# ---------------------------------------------------------------- inputs, reference, runners

def make_inputs(B, T, H, N, dtype, decay, seed):
    """Float32 tensors holding values exactly representable in `dtype` (r, w, k, v, a, b, gy); fp32 s0 and gs."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    uniform = lambda lo, hi: torch.rand(B, T, H, N, generator=gen) * (hi - lo) + lo  # noqa: E731
    as_dtype = lambda x: x.to(dtype).float()  # noqa: E731
    if decay == "mixed":
        w = torch.where(torch.arange(N) < N // 2, uniform(8.0, 12.0), uniform(-12.0, -8.0))
        w[..., 0], w[..., -1] = 30.0, -30.0
    else:
        w = uniform(*DECAYS[decay])
    kappa = F.normalize(rnd(B, T, H, N), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=gen)
    return {
        "r": as_dtype(rnd(B, T, H, N) * 0.5), "w": as_dtype(w), "k": as_dtype(rnd(B, T, H, N) * 0.5),
        "v": as_dtype(rnd(B, T, H, N) * 0.5), "a": as_dtype(-kappa), "b": as_dtype(kappa * iclr),
        "s0": rnd(B, H, N, N) * 0.5, "gy": as_dtype(rnd(B, T, H, N)), "gs": rnd(B, H, N, N),
    }


def autograd_results(fn, inputs, dtype):
    """y, state and the seven gradients of sum(y * gy) + sum(state * gs), fn's inputs cast to `dtype`."""
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [inputs[n].detach().to(dtype).clone().requires_grad_() for n in "rwkvab"]
    s0 = inputs["s0"].detach().to(state_dtype).clone().requires_grad_()
    y, state = fn(*leaves, s0)
    ((y.double() * inputs["gy"].double()).sum() + (state.double() * inputs["gs"].double()).sum()).backward()
    grads = dict(zip(("gr", "gw", "gk", "gv", "ga", "gb", "gs0"), [x.grad for x in leaves] + [s0.grad]))
    return {"y": y.detach(), "state": state.detach(), **grads}


def reference(inputs):
    return autograd_results(wkv7_sequential, inputs, torch.float64)


def kernel_results(ext, inputs, dtype):
    """The extension's forward and backward, called directly with the given gy and gs_out."""
    r, w, k, v, a, b, gy = (inputs[n].to(dtype).contiguous() for n in ("r", "w", "k", "v", "a", "b", "gy"))
    s0, gs = inputs["s0"].contiguous(), inputs["gs"].contiguous()
    y, state, checkpoints = ext.forward(r, w, k, v, a, b, s0)
    gr, gw, gk, gv, ga, gb, gs0 = ext.backward(r, w, k, v, a, b, checkpoints, gy, gs)
    assert y.dtype == dtype and gw.dtype == dtype and state.dtype == torch.float32 and gs0.dtype == torch.float32
    assert checkpoints.shape[2] == -(-r.shape[1] // ext.chunk_len)
    return dict(zip(NAMES, [y, state, gr, gw, gk, gv, ga, gb, gs0]))


def driver_results(program, inputs, dtype):
    """The same through the torch-free driver's file mode (inputs rounded to `dtype` inside)."""
    B, T, H, N = inputs["r"].shape
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "in.bin", Path(folder) / "out.bin"
        order = ("r", "w", "k", "v", "a", "b", "gy", "s0", "gs")
        np.concatenate([inputs[n].float().numpy().ravel() for n in order]).astype(np.float32).tofile(src)
        result = emu.run_program(program, [B, T, H, 0, src, dst], timeout_s=300)
        assert result.returncode == 0, result.stdout + result.stderr
        out = torch.from_numpy(np.fromfile(dst, dtype=np.float32))
    n, m = B * T * H * N, B * H * N * N
    got = {name: out[i * n:(i + 1) * n].view(B, T, H, N) for i, name in enumerate(SEQ_NAMES)}
    got["state"] = out[7 * n:7 * n + m].view(B, H, N, N)
    got["gs0"] = out[7 * n + m:].view(B, H, N, N)
    return got


def rel_error(actual, expected):
    expected = expected.double()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), "non-finite values"
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def check_cases(run, N, dtype, decay, t_values, label):
    B, H = BATCH_HEADS[N]
    worst = {name: (0.0, 0.0) for name in NAMES}
    failures = []
    for T in t_values:
        inputs = make_inputs(B, T, H, N, dtype, decay, seed=1000 * N + 10 * T + len(decay))
        ref = reference(inputs)
        got = run(inputs)
        errors = {name: rel_error(got[name], ref[name]) for name in NAMES}
        if T == max(t_values):  # the torch op's figure for context, at the longest T only (it costs time)
            torch_op = autograd_results(wkv7_torch, inputs, dtype)
            torch_errors = {name: rel_error(torch_op[name], ref[name]) for name in NAMES}
        else:
            torch_errors = {name: float("nan") for name in NAMES}
        print(f"\n{label} {decay} B{B} T{T} H{H}: " +
              "  ".join(f"{n} {errors[n]:.1e}|{torch_errors[n]:.1e}" for n in NAMES))
        for name in NAMES:
            torch_error = worst[name][1] if torch_errors[name] != torch_errors[name] else torch_errors[name]
            worst[name] = (max(worst[name][0], errors[name]), max(worst[name][1], torch_error))
            if errors[name] > TOL[dtype][name]:
                failures.append(f"T={T} {name}: {errors[name]:.2e} > {TOL[dtype][name]:g}")
    _summary[(label, decay)] = worst
    assert not failures, f"{label} {decay} B{B} H{H}: " + "; ".join(failures)


# ---------------------------------------------------------------- the kernel against the float64 reference

@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("build", EXTENSION_BUILDS, ids=[build_id(*b) for b in EXTENSION_BUILDS])
def test_kernel_matches_float64_reference(all_builds, build, decay):
    N, dtype = build
    ext = all_builds["ext"][build]
    check_cases(lambda inputs: kernel_results(ext, inputs, dtype), N, dtype, decay, T_VALUES, build_id(N, dtype))


@pytest.mark.parametrize("decay", ["typical", "mixed"])
@pytest.mark.parametrize("build", [b for b in DRIVER_BUILDS if b[0] == 64], ids=lambda b: build_id(*b))
def test_head_size_64_through_the_driver_matches_float64_reference(all_builds, build, decay):
    """Head size 64 (the RWKV-7 release size) without a torch-extension build: the race-check driver's file mode."""
    N, dtype = build
    program = all_builds["driver"][build]
    check_cases(lambda inputs: driver_results(program, inputs, dtype), N, dtype, decay, (17, 33),
                f"{build_id(N, dtype)}(driver)")


@pytest.mark.skipif((64, torch.float32) not in EXTENSION_BUILDS, reason="needs the fp32-N64 extension build "
                    "(WKV7_EMULATION_FULL_MATRIX=1)")
def test_driver_and_extension_agree_bitwise(all_builds):
    """The torch-free driver runs the same kernel code as the extension (same inputs -> identical bits)."""
    N, dtype = 64, torch.float32
    inputs = make_inputs(2, 17, 1, N, dtype, "typical", seed=5)
    via_driver = driver_results(all_builds["driver"][(N, dtype)], inputs, dtype)
    via_ext = kernel_results(all_builds["ext"][(N, dtype)], inputs, dtype)
    for name in NAMES:
        assert torch.equal(via_driver[name], via_ext[name].float()), name


def test_kernel_state_passing_and_zero_gradients(all_builds):
    """Two calls passing the state equal one call (exactly, on chunk-aligned pieces up to fp32 rounding)."""
    N, dtype = 16, torch.float32
    ext = all_builds["ext"][(N, dtype)]
    inputs = make_inputs(2, 33, 3, N, dtype, "typical", seed=9)
    seq = [inputs[n].contiguous() for n in "rwkvab"]
    y_all, s_all, _ = ext.forward(*seq, inputs["s0"])
    y_a, s_a, _ = ext.forward(*[x[:, :16].contiguous() for x in seq], inputs["s0"])
    y_b, s_b, _ = ext.forward(*[x[:, 16:].contiguous() for x in seq], s_a)
    assert torch.equal(torch.cat([y_a, y_b], 1), y_all) and torch.equal(s_b, s_all)
    # Zero output gradients give exactly zero input gradients.
    _, _, chk = ext.forward(*seq, inputs["s0"])
    grads = ext.backward(*seq, chk, torch.zeros_like(seq[0]), torch.zeros_like(inputs["s0"]))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


# ---------------------------------------------------------------- block order

@pytest.mark.parametrize("build", EXTENSION_BUILDS[:2], ids=[build_id(*b) for b in EXTENSION_BUILDS[:2]])
def test_results_do_not_depend_on_the_block_order(all_builds, build):
    N, dtype = build
    ext = all_builds["ext"][build]
    B, H = BATCH_HEADS[N]
    inputs = make_inputs(B, 17, H, N, dtype, "typical", seed=3)
    results = {}
    try:
        for order, seed in (("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)):
            emu.set_block_order(ext, order, seed)
            results[(order, seed)] = kernel_results(ext, inputs, dtype)
            schedule = emu.last_launch_order(ext)
            assert sorted(schedule) == list(range(B * H))
            if order == "reverse":
                assert schedule == list(reversed(range(B * H)))
            elif order == "shuffle":
                assert schedule != list(range(B * H)), "a shuffle left the blocks in order"
    finally:
        emu.set_block_order(ext, "forward")
    baseline = results[("forward", 0)]
    for key, got in results.items():
        for name in NAMES:
            assert torch.equal(got[name], baseline[name]), f"{name} differs with block order {key}"


# ---------------------------------------------------------------- shared-memory race check

@pytest.mark.parametrize("build", DRIVER_BUILDS, ids=[build_id(*b) for b in DRIVER_BUILDS])
def test_race_check_passes_on_the_kernel(all_builds, build):
    """Random inputs, T = 19 (a full and a partial checkpoint chunk), on the instrumented build."""
    program = all_builds["driver"][build]
    args = [2, 19, 3, 0] if build[0] == 16 else [1, 19, 2, 0]  # B != H
    result = emu.run_program(program, args, timeout_s=300)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no shared-memory race" in result.stdout


# A copy of the kernel per __syncthreads() with that one barrier removed, each built as a race-check program at
# head size 16 (fp32), beside the unchanged kernel at the same size: the check is clean on the kernel and reports
# a race on every copy, so each barrier is needed and the check can see its absence.
SOURCE = KERNEL_SOURCE.read_text()
SYNC_SITES = [m.start() for m in re.finditer(r"__syncthreads\(\)\s*;", emu.strip_comments(SOURCE))]
PLANTED_ARGS = [2, 19, 3, 0]  # B T H seed: B != H, a full and a partial checkpoint chunk


def line_of(offset):
    return SOURCE.count("\n", 0, offset) + 1


@pytest.fixture(scope="module")
def planted_race_checks(tmp_path_factory):
    """{None: the unchanged kernel's program, site: the program without the barrier at site}, two builds at once."""
    folder = tmp_path_factory.mktemp("planted7")
    sources = {None: KERNEL_SOURCE}
    for site in SYNC_SITES:
        copy = folder / f"wkv7_cuda_without_barrier_line{line_of(site)}.cu"
        copy.write_text(SOURCE[:site] + "/* barrier removed by the test */" + SOURCE[SOURCE.index(";", site) + 1:])
        sources[site] = copy
    defines = driver_defines(16, torch.float32)

    def build(site):
        name = f"wkv7_race_check_planted_{'none' if site is None else line_of(site)}"
        return emu.build_host_program([sources[site], DRIVER_SOURCE], defines, race_check=True, name=name)

    return dict(zip(sources, emu.run_in_parallel([lambda site=site: build(site) for site in sources])))


def test_the_kernel_has_barriers_to_plant():
    assert len(SYNC_SITES) >= 4, "expected barriers in both the forward and the backward kernel"


def test_race_check_passes_on_the_kernel_at_the_planted_size(planted_race_checks):
    result = emu.run_program(planted_race_checks[None], PLANTED_ARGS, timeout_s=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no shared-memory race" in result.stdout


@pytest.mark.parametrize("site", SYNC_SITES, ids=[f"line{line_of(s)}" for s in SYNC_SITES])
def test_race_check_fails_with_a_barrier_removed(planted_race_checks, site):
    result = emu.run_program(planted_race_checks[site], PLANTED_ARGS, timeout_s=300)
    first = result.stdout.splitlines()[0] if result.stdout else ""
    print(f"\nwithout the barrier on line {line_of(site)}: {first}")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "shared-memory race on" in result.stdout and "RACES:" in result.stdout


# ---------------------------------------------------------------- through src.ops.wkv7(op="cuda")

@pytest.fixture
def emulated_wkv7_cuda(monkeypatch):
    """op="cuda" runs the host-emulated build of cuda/wkv7_* on CPU tensors for the duration of the test."""
    monkeypatch.setattr(wkv7_cuda_module, "build_extension", emu.build_emulated_extension)
    monkeypatch.setattr(wkv7_cuda_module, "_loaded", {})
    yield emu


@pytest.mark.parametrize("build", EXTENSION_BUILDS[:2], ids=[build_id(*b) for b in EXTENSION_BUILDS[:2]])
def test_wkv7_op_cuda_on_the_emulated_build(all_builds, emulated_wkv7_cuda, build):
    """wkv7(..., op="cuda") on CPU tensors: the real Wkv7CudaFunction, forward and backward, through autograd."""
    N, dtype = build
    B, H = BATCH_HEADS[N]
    inputs = make_inputs(B, 21, H, N, dtype, "typical", seed=11)
    ext = all_builds["ext"][build]
    before = emu.blocks_run(ext)
    s0 = inputs["s0"].clone()
    got = autograd_results(lambda *args: wkv7(*args, op="cuda"), inputs, dtype)
    assert emu.blocks_run(ext) >= before + 2 * B * H, "op='cuda' did not run the emulated kernels"
    assert torch.equal(inputs["s0"], s0), "the op must not modify the initial state"
    ref = autograd_results(lambda *args: wkv7(*args, op="sequential"),
                           {n: x.double() for n, x in inputs.items()}, torch.float64)
    for name in NAMES:
        error = rel_error(got[name], ref[name])
        assert error <= TOL[dtype][name], f"{name}: {error:.2e}"

    # No state (zeros), only y used (the state's gradient arrives as None), and a sequence in two pieces.
    seq = [inputs[n].to(dtype).clone().requires_grad_() for n in "rwkvab"]
    y, _ = wkv7(*seq, op="cuda")
    (y.double() * inputs["gy"].double()).sum().backward()
    seq_ref = [inputs[n].double().clone().requires_grad_() for n in "rwkvab"]
    y_ref, state_ref = wkv7(*seq_ref, op="sequential")
    (y_ref * inputs["gy"].double()).sum().backward()
    assert rel_error(y, y_ref) <= TOL[dtype]["y"]
    for x, x_ref, name in zip(seq, seq_ref, ("gr", "gw", "gk", "gv", "ga", "gb")):
        assert rel_error(x.grad, x_ref.grad) <= TOL[dtype][name], name
    y_a, s_a = wkv7(*[x.detach()[:, :5] for x in seq], op="cuda")
    y_b, s_b = wkv7(*[x.detach()[:, 5:] for x in seq], state=s_a, op="cuda")
    assert rel_error(torch.cat([y_a, y_b], 1), y_ref) <= TOL[dtype]["y"]
    assert rel_error(s_b, state_ref) <= TOL[dtype]["state"]


def test_wkv7_op_cuda_rejects_what_the_kernel_cannot_take(emulated_wkv7_cuda):
    x = torch.zeros(1, 3, 1, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="bf16 or fp32"):
        wkv7(x, x, x, x, x, x, op="cuda")
    x = torch.zeros(1, MAX_T + 1, 1, 16)
    with pytest.raises(ValueError, match=f"T={MAX_T + 1} exceeds the compiled maximum"):
        wkv7(x, x, x, x, x, x, op="cuda")
    with pytest.raises(ValueError, match="max_t must be >= 1"):
        wkv7_cuda_module.configure_wkv7_cuda(max_t=0)
