"""Speed of the WKV6 operator implementations.

    .venv/bin/python bench/wkv.py               # CPU figures; GPU figures too where torch sees a CUDA device
    .venv/bin/python bench/wkv.py --skip-gpu    # CPU only

CPU (always): fp32, B=1 H=32 T=512 N=64 (the issue's shape), forward+backward of a training step (gradients for
r, k, v, w, u; the loss is sum(y * g) for a fixed random g) and forward alone:
- the chunked torch op at chunk lengths 16, 32, 64 (the sweep that picked DEFAULT_CHUNK_LEN), and
- the sequential loop. It is timed at the full T when a probe says that fits the time budget, otherwise at a
  smaller T and scaled linearly to T=512 (its cost is linear in T); the output says which.
Every variant is timed interleaved with the others (one step of each in turn), --repeats steps after a warm-up
round, so load from other processes on a shared machine hits them alike. The headline is the median; the minimum
is reported beside it, because on a shared machine interference only ever adds time.
Results: bench/results/wkv-cpu.json and .md, with the machine description.

GPU (when available): B=8 T=1024 H=32 N=64 (C=2048, the RWKV6-1.6B layer shape), forward+backward and forward:
our cuda op (bf16 and fp32), the torch op (bf16 and fp32 inputs), and fla's chunk_rwkv6 (bf16) if `fla`
imports. Peak CUDA memory per variant, and a correctness cross-check of each against the float64 torch op on
the same inputs. Results: bench/results/wkv-<gpu name>.json and .md, rewritten after every variant (a run cut
short keeps the rows it measured; "partial" says so). fla's first call autotunes its Triton kernels, which can
take minutes, so scripts/gpu_check.sh measures it in a second run that adds its row to the same files:

    python bench/wkv.py --skip-cpu --variants cuda,torch
    python bench/wkv.py --skip-cpu --variants fla --update
"""
import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import torch

from bench.common import (
    cuda_memory_mb,
    load_note,
    machine_info,
    markdown_table,
    median,
    slug,
    synchronize,
    timed_steps,
    write_json,
)
from src.checkpoint.files import write_text_atomic
from src.ops import wkv6
from src.ops.wkv6_sequential import wkv6_sequential
from src.ops.wkv6_torch import DEFAULT_CHUNK_LEN, wkv6_torch

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
CPU_SHAPE = dict(B=1, T=512, H=32, N=64)
GPU_SHAPE = dict(B=8, T=1024, H=32, N=64)
CHUNK_SWEEP = (16, 32, 64)
TARGET_SPEEDUP = 10.0
SEQUENTIAL_BUDGET_S = 60.0  # time allowed for the sequential loop's timed steps before it is run at a smaller T


def make_inputs(B, T, H, N, dtype, device, seed=0):
    """Inputs in the ranges a trained RWKV6 produces: w in [-6, 1] (log-decay -0.0025 to -2.7 per step)."""
    gen = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=gen) * 0.5 for _ in range(3))
    w = torch.rand(B, T, H, N, generator=gen) * 7.0 - 6.0
    u = torch.randn(H, N, generator=gen) * 0.5
    grad_y = torch.randn(B, T, H, N, generator=gen)
    tensors = [x.to(device=device, dtype=dtype) for x in (r, k, v, w)]
    return tensors, u.to(device), grad_y.to(device=device, dtype=dtype)


def training_step(fn, tensors, u, grad_y):
    """One forward+backward through fn(r, k, v, w, u) -> (y, state), gradients to all five inputs."""
    leaves = [x.detach().requires_grad_() for x in tensors]
    u_leaf = u.detach().requires_grad_()
    y, _ = fn(*leaves, u_leaf)
    y.backward(grad_y)


def forward_step(fn, tensors, u):
    with torch.no_grad():
        fn(*tensors, u)


def interleaved_medians(steps: dict, warmup: int, repeats: int) -> dict:
    """Median seconds per named step, the steps run round-robin so that machine load affects all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": median(values), "min_s": min(values), "times_s": values}
            for name, values in times.items()}


def torch_op(chunk_len):
    return lambda r, k, v, w, u: wkv6_torch(r, k, v, w, u, None, chunk_len=chunk_len)


def sequential_op(r, k, v, w, u):
    return wkv6_sequential(r, k, v, w, u, None)


def bench_cpu(repeats: int) -> dict:
    torch.manual_seed(0)
    shape = CPU_SHAPE
    tensors, u, grad_y = make_inputs(**shape, dtype=torch.float32, device="cpu")

    # How long is one sequential step at the full T? Probe at T/8 (fastest of 3, as interference only adds time)
    # and extrapolate: its cost is linear in T.
    probe_T = shape["T"] // 8
    probe = [x[:, :probe_T] for x in tensors]
    training_step(sequential_op, probe, u, grad_y[:, :probe_T])
    probe_times = []
    for _ in range(3):
        start = time.perf_counter()
        training_step(sequential_op, probe, u, grad_y[:, :probe_T])
        probe_times.append(time.perf_counter() - start)
    estimated_full_s = min(probe_times) * 8
    seq_T = shape["T"]
    while seq_T > probe_T and estimated_full_s * seq_T / shape["T"] * (repeats + 1) > SEQUENTIAL_BUDGET_S:
        seq_T //= 2
    seq_inputs = [x[:, :seq_T] for x in tensors]
    seq_grad = grad_y[:, :seq_T]
    seq_scale = shape["T"] / seq_T

    steps = {}
    for L in CHUNK_SWEEP:
        steps[f"torch L={L} fwd+bwd"] = lambda L=L: training_step(torch_op(L), tensors, u, grad_y)
    steps["torch fwd"] = lambda: forward_step(torch_op(DEFAULT_CHUNK_LEN), tensors, u)
    steps["sequential fwd+bwd"] = lambda: training_step(sequential_op, seq_inputs, u, seq_grad)
    steps["sequential fwd"] = lambda: forward_step(sequential_op, seq_inputs, u)
    measured = interleaved_medians(steps, warmup=1, repeats=repeats)

    rows = []
    for name, result in measured.items():
        is_seq = name.startswith("sequential")
        rows.append({
            "variant": name,
            "op": "sequential" if is_seq else "torch",
            "chunk_len": None if is_seq else (
                DEFAULT_CHUNK_LEN if name == "torch fwd" else int(name.split("L=")[1].split()[0])),
            "pass": "forward" if name.endswith(" fwd") else "forward+backward",
            "timed_T": seq_T if is_seq else shape["T"],
            "median_s_at_T512": result["median_s"] * (seq_scale if is_seq else 1.0),
            "median_s_as_timed": result["median_s"],
            "min_s_at_T512": result["min_s"] * (seq_scale if is_seq else 1.0),
            "times_s": result["times_s"],
        })
    by_name = {row["variant"]: row for row in rows}
    default_train = by_name[f"torch L={DEFAULT_CHUNK_LEN} fwd+bwd"]["median_s_at_T512"]
    speedup_train = by_name["sequential fwd+bwd"]["median_s_at_T512"] / default_train
    speedup_fwd = by_name["sequential fwd"]["median_s_at_T512"] / by_name["torch fwd"]["median_s_at_T512"]
    speedup_train_min = (
        by_name["sequential fwd+bwd"]["min_s_at_T512"]
        / by_name[f"torch L={DEFAULT_CHUNK_LEN} fwd+bwd"]["min_s_at_T512"]
    )
    fastest_by_median = min(CHUNK_SWEEP, key=lambda L: by_name[f"torch L={L} fwd+bwd"]["median_s_at_T512"])
    fastest_by_min = min(CHUNK_SWEEP, key=lambda L: by_name[f"torch L={L} fwd+bwd"]["min_s_at_T512"])
    notes = [
        f"sequential loop timed at T={seq_T}" + (
            f" and scaled x{seq_scale:g} to T={shape['T']} (linear in T); a probe estimated the full T at "
            f"{estimated_full_s:.2f} s per step, over the {SEQUENTIAL_BUDGET_S:.0f} s budget"
            if seq_T != shape["T"] else " (the full length, no scaling)"
        ),
        f"chunk length in use: DEFAULT_CHUNK_LEN={DEFAULT_CHUNK_LEN}; fastest in this run by median: "
        f"{fastest_by_median}, by minimum: {fastest_by_min}",
        "interleaved timing, median (and minimum) of %d steps after 1 warm-up round per variant" % repeats,
    ]
    return {
        "benchmark": "wkv6 operator, CPU",
        "machine": machine_info("cpu"),
        "shape": shape,
        "dtype": "float32",
        "default_chunk_len": DEFAULT_CHUNK_LEN,
        "results": rows,
        "speedup_vs_sequential": {
            "forward+backward": speedup_train,
            "forward": speedup_fwd,
            "forward+backward, ratio of minima": speedup_train_min,
        },
        "target_speedup_forward_backward": TARGET_SPEEDUP,
        "meets_target": speedup_train >= TARGET_SPEEDUP,
        "notes": notes,
    }


def cpu_markdown(report: dict) -> str:
    shape = report["shape"]
    info = report["machine"]
    rows = [
        [row["variant"], f"{row['timed_T']}", f"{row['median_s_as_timed'] * 1e3:.1f} ms",
         f"{row['median_s_at_T512'] * 1e3:.1f} ms", f"{row['min_s_at_T512'] * 1e3:.1f} ms"]
        for row in report["results"]
    ]
    speed = report["speedup_vs_sequential"]
    lines = [
        "# WKV6 operator on the CPU",
        "",
        f"{info['device_name']}; torch {info['torch']}, {info['torch_threads']} threads; {info['date_utc']}; "
        f"{load_note(info)}. Produced by `bench/wkv.py`; method in its docstring.",
        "",
        f"fp32, B={shape['B']} H={shape['H']} T={shape['T']} N={shape['N']}; fwd+bwd = forward and backward with "
        "gradients for r, k, v, w, u.",
        "",
        markdown_table(
            ["variant", "timed at T", "median (as timed)", f"median at T={shape['T']}", f"minimum at T={shape['T']}"],
            rows, (1, 2, 3, 4),
        ),
        "",
        f"**Speed-up of the torch op (chunk {report['default_chunk_len']}) over the sequential loop: "
        f"{speed['forward+backward']:.1f}x forward+backward, {speed['forward']:.1f}x forward** "
        f"({speed['forward+backward, ratio of minima']:.1f}x forward+backward from the minima) "
        f"(target: >= {report['target_speedup_forward_backward']:g}x forward+backward: "
        f"{'met' if report['meets_target'] else 'NOT met'}).",
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in report["notes"]],
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- GPU


def fla_op():
    """fla's chunk_rwkv6 as fn(r, k, v, w, u) -> (y [B,T,H,N], state), or (None, reason) if unavailable.

    fla's w is the log of the decay (ours is w with decay = exp(-exp(w))), and its default scale is K**-0.5
    (RWKV uses 1.0). Current fla (0.3 on, e.g. fla-core 0.6.0) takes [B, T, H, N], as we do, and has no
    `head_first` argument; versions that have it are told head_first=False.
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


def fla_version() -> str:
    try:
        import fla

        return str(getattr(fla, "__version__", "?"))
    except Exception:
        return "not installed"


GPU_FAMILIES = ("cuda", "torch", "fla")


def bench_gpu(device, repeats: int, on_row=None, families=GPU_FAMILIES, previous=None) -> dict:
    """The GPU table for the variant families asked for (cuda, torch, fla).

    on_row(report so far) is called after each variant, so a run cut short keeps its rows. `previous` (an
    earlier report of this benchmark on the same GPU) supplies the rows of the families not measured now, so the
    fla row, whose first call includes Triton's autotuning (minutes), can be measured in a separate run
    (`--variants fla --update`) and land in the same table.
    """
    from src.ops.wkv6_cuda import load_wkv6_extension

    shape = GPU_SHAPE
    variants = {}
    for dtype in (torch.bfloat16, torch.float32):
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        if "cuda" in families:
            load_wkv6_extension(head_size=shape["N"], dtype=dtype)  # build before timing
            variants[f"cuda {name}"] = (dtype, lambda r, k, v, w, u: wkv6(r, k, v, w, u, op="cuda"))
        if "torch" in families:
            variants[f"torch {name}"] = (dtype, lambda r, k, v, w, u: wkv6(r, k, v, w, u, op="torch"))
    if "fla" in families:
        fla_run, fla_reason = fla_op()
        if fla_run is not None:
            variants["fla chunk_rwkv6 bf16"] = (torch.bfloat16, fla_run)
    else:
        fla_run = None
        fla_reason = (previous or {}).get("fla", "not measured in this run (bench/wkv.py --variants fla --update)")

    # Reference outputs for the cross-check: the float64 torch op on the bf16-rounded inputs.
    bf16_inputs, u, _ = make_inputs(**shape, dtype=torch.bfloat16, device=device)
    y_reference, _ = wkv6_torch(*[x.double() for x in bf16_inputs], u.double())

    kept = [row for row in (previous or {}).get("results", []) if row["variant"].split()[0] not in families]
    rows = []
    notes = [f"median of {repeats} steps after 2 warm-up steps, CUDA synchronised around each step",
             "the fla row's warm-up steps include Triton's autotuning of fla's kernels (not timed)"]
    if kept:
        notes.append(f"rows {', '.join(row['variant'] for row in kept)} come from an earlier run of this benchmark "
                     f"({(previous or {}).get('machine', {}).get('date_utc', '?')}); the others from this one")

    def report(partial: bool) -> dict:
        all_rows = kept + rows
        by_name = {row["variant"]: row for row in all_rows}
        ratios = {}
        for name in ("bf16", "fp32"):
            cuda_row, torch_row = by_name.get(f"cuda {name}", {}), by_name.get(f"torch {name}", {})
            if "forward+backward_median_ms" in cuda_row and "forward+backward_median_ms" in torch_row:
                ratios[f"torch/cuda {name} forward+backward"] = (
                    torch_row["forward+backward_median_ms"] / cuda_row["forward+backward_median_ms"]
                )
        fla_row = by_name.get("fla chunk_rwkv6 bf16", {})
        if "forward+backward_median_ms" in fla_row and "forward+backward_median_ms" in by_name.get("cuda bf16", {}):
            ratios["fla/cuda bf16 forward+backward"] = (
                fla_row["forward+backward_median_ms"] / by_name["cuda bf16"]["forward+backward_median_ms"]
            )
        return {
            "benchmark": "wkv6 operator, GPU",
            "machine": machine_info(device),
            "shape": shape,
            "results": all_rows,
            "speed_ratios": ratios,
            "fla": f"timed (fla {fla_version()})" if fla_run is not None else fla_reason,
            "partial": partial,
            "notes": notes,
        }

    for name, (dtype, fn) in variants.items():
        tensors, u, grad_y = make_inputs(**shape, dtype=dtype, device=device)
        row = {"variant": name, "dtype": str(dtype).replace("torch.", "")}
        try:
            with torch.no_grad():
                y, _ = fn(*[x.to(torch.bfloat16).to(dtype) for x in bf16_inputs], u)
            row["max_abs_diff_vs_float64"] = (y.double() - y_reference).abs().max().item()
            row["max_abs_reference"] = y_reference.abs().max().item()
            torch.cuda.reset_peak_memory_stats(device)
            train = timed_steps(lambda: training_step(fn, tensors, u, grad_y), 2, repeats, device)
            row.update(cuda_memory_mb(device))
            forward = timed_steps(lambda: forward_step(fn, tensors, u), 2, repeats, device)
            row["forward+backward_median_ms"] = median(train) * 1e3
            row["forward_median_ms"] = median(forward) * 1e3
            row["tokens_per_s_forward+backward"] = shape["B"] * shape["T"] / median(train)
        except Exception as error:  # one failing variant (e.g. an fla/triton mismatch) must not hide the rest
            row["error"] = f"{type(error).__name__}: {error}"
        synchronize(device)
        rows.append(row)
        if on_row is not None:
            on_row(report(partial=len(rows) < len(variants)))
    return report(partial=False)


def gpu_markdown(report: dict) -> str:
    info = report["machine"]
    shape = report["shape"]
    headers = ["variant", "fwd+bwd", "fwd", "tokens/s (fwd+bwd)", "peak allocated", "max |y - y_f64|"]
    rows = []
    for row in report["results"]:
        if "error" in row:
            rows.append([row["variant"], "error", row["error"][:80], "", "", ""])
            continue
        rows.append([
            row["variant"], f"{row['forward+backward_median_ms']:.2f} ms", f"{row['forward_median_ms']:.2f} ms",
            f"{row['tokens_per_s_forward+backward']:,.0f}", f"{row['peak_allocated_mb']:.0f} MiB",
            f"{row['max_abs_diff_vs_float64']:.2e} (of {row['max_abs_reference']:.1f})",
        ])
    lines = [
        f"# WKV6 operator on {info['device_name']}",
        "",
        f"torch {info['torch']}, CUDA {info.get('cuda')}; {info['date_utc']}. Produced by `bench/wkv.py`.",
        "",
        f"B={shape['B']} T={shape['T']} H={shape['H']} N={shape['N']} (C={shape['H'] * shape['N']}).",
        "",
        markdown_table(headers, rows, (1, 2, 3, 4)),
        "",
        *[f"- {name}: {value:.2f}x" for name, value in report["speed_ratios"].items()],
        f"- fla: {report['fla']}",
        *(["- PARTIAL: the run stopped before every variant was measured"] if report.get("partial") else []),
        *[f"- {note}" for note in report["notes"]],
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed steps per variant (median reported)")
    parser.add_argument("--skip-gpu", action="store_true", help="CPU figures only")
    parser.add_argument("--skip-cpu", action="store_true", help="GPU figures only")
    parser.add_argument("--variants", default=",".join(GPU_FAMILIES),
                        help="GPU variant families to measure, comma-separated from cuda,torch,fla (default: all)")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of the other families from the GPU's existing results file")
    args = parser.parse_args(argv)
    families = tuple(f.strip() for f in args.variants.split(",") if f.strip())
    unknown = [f for f in families if f not in GPU_FAMILIES]
    if unknown or not families:
        parser.error(f"--variants {args.variants!r}: choose from {', '.join(GPU_FAMILIES)}")

    if not args.skip_cpu:
        report = bench_cpu(args.repeats)
        write_json(RESULTS / "wkv-cpu.json", report)
        text = cpu_markdown(report)
        write_text_atomic(text, RESULTS / "wkv-cpu.md")
        print(text)
    if not args.skip_gpu and torch.cuda.is_available():
        device = torch.device("cuda")
        stem = f"wkv-{slug(torch.cuda.get_device_name(device))}"

        def write_gpu(report):
            write_json(RESULTS / f"{stem}.json", report)
            text = gpu_markdown(report)
            write_text_atomic(text, RESULTS / f"{stem}.md")
            return text

        def on_row(report):
            row = report["results"][-1]
            timing = (f"{row['forward+backward_median_ms']:.2f} ms fwd+bwd" if "error" not in row
                      else f"error: {row['error'][:200]}")
            print(f"[wkv] {row['variant']}: {timing}", flush=True)
            write_gpu(report)

        previous = None
        if args.update and (RESULTS / f"{stem}.json").is_file():
            previous = json.loads((RESULTS / f"{stem}.json").read_text(encoding="utf-8"))
        print(write_gpu(bench_gpu(device, max(args.repeats, 10), on_row=on_row, families=families,
                                  previous=previous)))
    elif not args.skip_gpu:
        print("no CUDA device: GPU figures skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
