"""Speed of the WKV7 (RWKV-7) operator implementations.

    .venv/bin/python bench/wkv7.py                 # CPU figures; GPU figures too where torch sees a CUDA device
    .venv/bin/python bench/wkv7.py --threads 1     # pin torch's CPU threads (a shared machine: see below)
    .venv/bin/python bench/wkv7.py --skip-gpu      # CPU only

CPU (always): fp32, B=1 H=16 T=512 N=64 (the target shape), forward+backward of a training step (gradients
for r, w, k, v, a, b; the loss is sum(y * g) for a fixed random g) and forward alone, with model-like inputs
(raw w in [-4, 2], a = -kappa_hat, b = kappa_hat * iclr, kappa_hat of unit norm per head):
- the chunked torch op at chunk lengths 16, 32, 64 (the sweep behind DEFAULT_CHUNK_LEN), and
- the sequential loop. It is timed at the full T when a probe says that fits the time budget, otherwise at a
  smaller T and scaled linearly to the full T (its cost is linear in T); the output says which.
Every variant is timed interleaved with the others (one step of each in turn), --repeats steps after a warm-up
round, so load from other processes hits them alike. The headline is the median; the minimum is reported
beside it, because on a shared machine interference only ever adds time. On a machine whose cores are shared
with other work, oversubscribed OpenMP threads slow small ops by 10x or more; --threads 1 gives steadier ratios
(the thread count is recorded with the results). Before timing, the torch op is checked against the sequential
loop on the same inputs (max error of y, relative to max |y|).
Results: bench/results/wkv7-cpu.json and .md, with the machine description.

GPU (when available): B=8 T=1024 H=32 N=64 (C=2048, the RWKV-7 1.5B layer shape), the torch op with fp32 and
bf16 inputs, forward+backward and forward, peak CUDA memory, and the error of y against the float64 torch op on
the same (bf16-rounded) inputs. Results: bench/results/wkv7-<gpu name>.json and .md.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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
from src.ops.wkv7_sequential import wkv7_sequential
from src.ops.wkv7_torch import DEFAULT_CHUNK_LEN, wkv7_torch

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
CPU_SHAPE = dict(B=1, T=512, H=16, N=64)
GPU_SHAPE = dict(B=8, T=1024, H=32, N=64)
CHUNK_SWEEP = (16, 32, 64)
TARGET_SPEEDUP = 10.0
SEQUENTIAL_BUDGET_S = 90.0  # time allowed for the sequential loop's timed steps before it runs at a smaller T


def make_inputs(B, T, H, N, dtype, device, seed=0):
    """r, w, k, v, a, b in the ranges a trained RWKV-7 produces, and a gradient for y."""
    gen = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=gen) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=gen) * 6.0 - 4.0
    kappa = F.normalize(torch.randn(B, T, H, N, generator=gen), dim=-1)
    iclr = torch.sigmoid(torch.randn(B, T, H, N, generator=gen))
    grad_y = torch.randn(B, T, H, N, generator=gen)
    tensors = [x.to(device=device, dtype=dtype) for x in (r, w, k, v, -kappa, kappa * iclr)]
    return tensors, grad_y.to(device=device, dtype=dtype)


def training_step(fn, tensors, grad_y):
    """One forward+backward through fn(r, w, k, v, a, b) -> (y, state), gradients to all six inputs."""
    leaves = [x.detach().requires_grad_() for x in tensors]
    y, _ = fn(*leaves)
    y.backward(grad_y)


def forward_step(fn, tensors):
    with torch.no_grad():
        fn(*tensors)


def torch_op(chunk_len):
    return lambda r, w, k, v, a, b: wkv7_torch(r, w, k, v, a, b, None, chunk_len=chunk_len)


def sequential_op(r, w, k, v, a, b):
    return wkv7_sequential(r, w, k, v, a, b, None)


def interleaved_times(steps: dict, warmup: int, repeats: int) -> dict:
    """Median and minimum seconds per named step, the steps run round-robin so machine load hits all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": median(v), "min_s": min(v), "times_s": v} for name, v in times.items()}


def bench_cpu(repeats: int) -> dict:
    shape = CPU_SHAPE
    T = shape["T"]
    tensors, grad_y = make_inputs(**shape, dtype=torch.float32, device="cpu")

    with torch.no_grad():  # the op is checked before it is timed
        y_torch, s_torch = wkv7_torch(*tensors)
        y_seq, s_seq = wkv7_sequential(*tensors)
    check = {
        "max_abs_y_diff_rel": ((y_torch - y_seq).abs().max() / y_seq.abs().max()).item(),
        "max_abs_state_diff_rel": ((s_torch - s_seq).abs().max() / s_seq.abs().max()).item(),
    }

    # One sequential step at the full T, estimated from a probe at T/8 (fastest of 3) and its linear cost.
    probe_T = T // 8
    probe = [x[:, :probe_T] for x in tensors]
    training_step(sequential_op, probe, grad_y[:, :probe_T])
    probe_times = []
    for _ in range(3):
        start = time.perf_counter()
        training_step(sequential_op, probe, grad_y[:, :probe_T])
        probe_times.append(time.perf_counter() - start)
    estimated_full_s = min(probe_times) * T / probe_T
    seq_T = T
    while seq_T > probe_T and estimated_full_s * seq_T / T * (repeats + 1) > SEQUENTIAL_BUDGET_S:
        seq_T //= 2
    seq_inputs, seq_grad, seq_scale = [x[:, :seq_T] for x in tensors], grad_y[:, :seq_T], T / seq_T

    steps = {}
    for L in CHUNK_SWEEP:
        steps[f"torch L={L} fwd+bwd"] = lambda L=L: training_step(torch_op(L), tensors, grad_y)
    steps["torch fwd"] = lambda: forward_step(torch_op(DEFAULT_CHUNK_LEN), tensors)
    steps["sequential fwd+bwd"] = lambda: training_step(sequential_op, seq_inputs, seq_grad)
    steps["sequential fwd"] = lambda: forward_step(sequential_op, seq_inputs)
    measured = interleaved_times(steps, warmup=1, repeats=repeats)

    rows = []
    for name, result in measured.items():
        is_seq = name.startswith("sequential")
        scale = seq_scale if is_seq else 1.0
        rows.append({
            "variant": name,
            "op": "sequential" if is_seq else "torch",
            "chunk_len": None if is_seq else (DEFAULT_CHUNK_LEN if name == "torch fwd"
                                              else int(name.split("L=")[1].split()[0])),
            "pass": "forward" if name.endswith(" fwd") else "forward+backward",
            "timed_T": seq_T if is_seq else T,
            "median_s_as_timed": result["median_s"],
            "median_s_at_full_T": result["median_s"] * scale,
            "min_s_at_full_T": result["min_s"] * scale,
            "times_s": result["times_s"],
        })
    by_name = {row["variant"]: row for row in rows}
    default_train = by_name[f"torch L={DEFAULT_CHUNK_LEN} fwd+bwd"]
    speedup = {
        "forward+backward": by_name["sequential fwd+bwd"]["median_s_at_full_T"] / default_train["median_s_at_full_T"],
        "forward": by_name["sequential fwd"]["median_s_at_full_T"] / by_name["torch fwd"]["median_s_at_full_T"],
        "forward+backward, ratio of minima": (by_name["sequential fwd+bwd"]["min_s_at_full_T"]
                                              / default_train["min_s_at_full_T"]),
    }
    fastest_by_median = min(CHUNK_SWEEP, key=lambda L: by_name[f"torch L={L} fwd+bwd"]["median_s_at_full_T"])
    fastest_by_min = min(CHUNK_SWEEP, key=lambda L: by_name[f"torch L={L} fwd+bwd"]["min_s_at_full_T"])
    notes = [
        f"sequential loop timed at T={seq_T}" + (
            f" and scaled x{seq_scale:g} to T={T} (linear in T); a probe estimated the full T at "
            f"{estimated_full_s:.2f} s per step, over the {SEQUENTIAL_BUDGET_S:.0f} s budget"
            if seq_T != T else " (the full length, no scaling)"
        ),
        f"chunk length in use: DEFAULT_CHUNK_LEN={DEFAULT_CHUNK_LEN}; fastest in this run by median: "
        f"{fastest_by_median}, by minimum: {fastest_by_min}",
        f"interleaved timing, median (and minimum) of {repeats} steps after 1 warm-up round per variant",
        f"torch op vs sequential loop on these inputs (fp32): max |dy| / max |y| = "
        f"{check['max_abs_y_diff_rel']:.1e}, final state {check['max_abs_state_diff_rel']:.1e}",
    ]
    return {
        "benchmark": "wkv7 operator, CPU",
        "machine": machine_info("cpu"),
        "shape": shape,
        "dtype": "float32",
        "default_chunk_len": DEFAULT_CHUNK_LEN,
        "correctness": check,
        "results": rows,
        "speedup_vs_sequential": speedup,
        "target_speedup_forward_backward": TARGET_SPEEDUP,
        "meets_target": speedup["forward+backward"] >= TARGET_SPEEDUP,
        "notes": notes,
    }


def cpu_markdown(report: dict) -> str:
    shape, info, speed = report["shape"], report["machine"], report["speedup_vs_sequential"]
    T = shape["T"]
    rows = [
        [row["variant"], f"{row['timed_T']}", f"{row['median_s_as_timed'] * 1e3:.1f} ms",
         f"{row['median_s_at_full_T'] * 1e3:.1f} ms", f"{row['min_s_at_full_T'] * 1e3:.1f} ms"]
        for row in report["results"]
    ]
    lines = [
        "# WKV7 operator on the CPU",
        "",
        f"{info['device_name']}; torch {info['torch']}, {info['torch_threads']} thread(s); {info['date_utc']}; "
        f"{load_note(info)}. Produced by `bench/wkv7.py`; method in its docstring.",
        "",
        f"fp32, B={shape['B']} H={shape['H']} T={T} N={shape['N']}; fwd+bwd = forward and backward with "
        "gradients for r, w, k, v, a, b.",
        "",
        markdown_table(["variant", "timed at T", "median (as timed)", f"median at T={T}", f"minimum at T={T}"],
                       rows, (1, 2, 3, 4)),
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


def bench_gpu(device, repeats: int, shape=None) -> dict:
    """The torch op on a CUDA device, fp32 and bf16 inputs (shape defaults to GPU_SHAPE)."""
    shape = shape or GPU_SHAPE
    bf16_inputs, _ = make_inputs(**shape, dtype=torch.bfloat16, device=device)
    y_reference, _ = wkv7_torch(*[x.double() for x in bf16_inputs])
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        name = f"torch {'bf16' if dtype == torch.bfloat16 else 'fp32'}"
        tensors, grad_y = make_inputs(**shape, dtype=dtype, device=device)
        fn = torch_op(DEFAULT_CHUNK_LEN)
        row = {"variant": name, "dtype": str(dtype).replace("torch.", "")}
        try:
            with torch.no_grad():
                y, _ = fn(*[x.to(dtype) for x in bf16_inputs])
            row["max_abs_diff_vs_float64"] = (y.double() - y_reference).abs().max().item()
            row["max_abs_reference"] = y_reference.abs().max().item()
            if torch.device(device).type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            train = timed_steps(lambda: training_step(fn, tensors, grad_y), 2, repeats, device)
            if torch.device(device).type == "cuda":
                row.update(cuda_memory_mb(device))
            forward = timed_steps(lambda: forward_step(fn, tensors), 2, repeats, device)
            row["forward+backward_median_ms"] = median(train) * 1e3
            row["forward_median_ms"] = median(forward) * 1e3
            row["tokens_per_s_forward+backward"] = shape["B"] * shape["T"] / median(train)
        except Exception as error:  # report a failing variant, keep the others
            row["error"] = f"{type(error).__name__}: {error}"
        synchronize(device)
        rows.append(row)
    return {
        "benchmark": "wkv7 operator, GPU",
        "machine": machine_info(device),
        "shape": shape,
        "default_chunk_len": DEFAULT_CHUNK_LEN,
        "results": rows,
        "notes": [f"median of {repeats} steps after 2 warm-up steps, CUDA synchronised around each step",
                  "there is no WKV7 CUDA kernel yet: these are the chunked torch op's figures"],
    }


def gpu_markdown(report: dict) -> str:
    info, shape = report["machine"], report["shape"]
    rows = []
    for row in report["results"]:
        if "error" in row:
            rows.append([row["variant"], "error", row["error"][:80], "", "", ""])
            continue
        rows.append([
            row["variant"], f"{row['forward+backward_median_ms']:.2f} ms", f"{row['forward_median_ms']:.2f} ms",
            f"{row['tokens_per_s_forward+backward']:,.0f}", f"{row.get('peak_allocated_mb', float('nan')):.0f} MiB",
            f"{row['max_abs_diff_vs_float64']:.2e} (of {row['max_abs_reference']:.1f})",
        ])
    lines = [
        f"# WKV7 operator on {info['device_name']}",
        "",
        f"torch {info['torch']}, CUDA {info.get('cuda')}; {info['date_utc']}. Produced by `bench/wkv7.py`.",
        "",
        f"B={shape['B']} T={shape['T']} H={shape['H']} N={shape['N']} (C={shape['H'] * shape['N']}), chunk "
        f"{report['default_chunk_len']}.",
        "",
        markdown_table(["variant", "fwd+bwd", "fwd", "tokens/s (fwd+bwd)", "peak allocated", "max abs(y - y_f64)"],
                       rows, (1, 2, 3, 4)),
        "",
        *[f"- {note}" for note in report["notes"]],
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-gpu", action="store_true", help="CPU figures only")
    parser.add_argument("--skip-cpu", action="store_true", help="GPU figures only")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if not args.skip_cpu:
        report = bench_cpu(args.repeats)
        write_json(RESULTS / "wkv7-cpu.json", report)
        text = cpu_markdown(report)
        write_text_atomic(text, RESULTS / "wkv7-cpu.md")
        print(text)
    if not args.skip_gpu and torch.cuda.is_available():
        device = torch.device("cuda")
        report = bench_gpu(device, max(args.repeats, 10))
        stem = f"wkv7-{slug(torch.cuda.get_device_name(device))}"
        write_json(RESULTS / f"{stem}.json", report)
        text = gpu_markdown(report)
        write_text_atomic(text, RESULTS / f"{stem}.md")
        print(text)
    elif not args.skip_gpu:
        print("no CUDA device: GPU figures skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
