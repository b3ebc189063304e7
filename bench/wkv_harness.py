"""The harness both WKV operator benchmarks run on (bench/wkv.py for WKV6, bench/wkv7.py for WKV7).

An operator is described by a `WkvBench` (its input maker, its torch / sequential / cuda / fla callables, its
shapes); everything else is common:

CPU: fp32, forward+backward of a training step (gradients for every input; the loss is sum(y * g) for a fixed
random g) and forward alone:
- the chunked torch op at chunk lengths 16, 32, 64 (the sweep behind each op's DEFAULT_CHUNK_LEN), and
- the sequential loop, timed at the full T when a probe says that fits the time budget, otherwise at a smaller T
  and scaled linearly to the full T (its cost is linear in T); the output says which.
Every variant is timed interleaved with the others (one step of each in turn), --repeats steps after a warm-up
round, so load from other processes hits them alike. The headline is the median; the minimum is reported beside
it, because on a shared machine interference only ever adds time. Oversubscribed OpenMP threads slow small ops by
10x or more on a shared machine: --threads 1 gives steadier ratios (the count is recorded). Before timing, the
torch op is checked against the sequential loop on the same inputs.

GPU: our cuda op (bf16, fp32), the torch op (bf16 and fp32 inputs) and fla's chunked Triton kernel (bf16) where
`fla` imports; forward+backward and forward, peak CUDA memory, and the error of y against the float64 torch op on
the same bf16-rounded inputs. Rows are written after every variant (a run cut short keeps what it measured;
"partial" says so). fla's first call autotunes its Triton kernels (minutes), so it can be measured in a second
run that adds its row to the same files (`--variants fla --update`).
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

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

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_SWEEP = (16, 32, 64)
TARGET_SPEEDUP = 10.0
GPU_FAMILIES = ("cuda", "torch", "fla")


@dataclasses.dataclass(frozen=True)
class WkvBench:
    """One WKV operator as the harness sees it. Sequence inputs are the 4-D [B, T, H, N] tensors of
    `make_inputs`; any other input (WKV6's u) keeps its own dtype."""
    title: str  # "WKV6"
    script: str  # "bench/wkv.py"
    stem: str  # results file stem: <stem>-cpu.json, <stem>-<gpu>.json
    input_names: str  # "r, k, v, w, u"
    make_inputs: Callable  # (B, T, H, N, dtype, device, seed) -> (inputs list, grad_y)
    torch_op: Callable  # (chunk_len) -> fn(*inputs) -> (y, state)
    sequential_op: Callable  # fn(*inputs) -> (y, state), float64 inside
    cuda_op: Callable  # (dtype) -> fn(*inputs) -> (y, state), the extension built before it returns
    fla_op: Callable  # () -> (fn or None, reason)
    default_chunk_len: int
    cpu_shape: dict
    gpu_shape: dict
    sequential_budget_s: float  # time allowed for the sequential loop's timed steps before it runs at a smaller T
    fla_label: str  # the fla row's variant name


def training_step(fn, inputs, grad_y):
    """One forward+backward through fn(*inputs) -> (y, state), gradients to every input."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    y, _ = fn(*leaves)
    y.backward(grad_y)


def forward_step(fn, inputs):
    with torch.no_grad():
        fn(*inputs)


def in_dtype(inputs, dtype):
    """The sequence inputs cast to dtype, the others (WKV6's u, fp32) as they are."""
    return [x.to(dtype) if x.dim() == 4 else x for x in inputs]


def interleaved_times(steps: dict, warmup: int, repeats: int) -> dict:
    """Median and minimum seconds per named step, the steps run round-robin so that machine load hits all alike."""
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


def sequential_length(bench: WkvBench, inputs, grad_y, repeats: int):
    """The T the sequential loop is timed at, and the probe's estimate of one full-T step (seconds): probed at T/8
    (fastest of 3, as interference only adds time) and extrapolated linearly."""
    T = bench.cpu_shape["T"]
    probe_T = T // 8
    probe = [x[:, :probe_T] if x.dim() == 4 else x for x in inputs]
    training_step(bench.sequential_op, probe, grad_y[:, :probe_T])
    probe_times = []
    for _ in range(3):
        start = time.perf_counter()
        training_step(bench.sequential_op, probe, grad_y[:, :probe_T])
        probe_times.append(time.perf_counter() - start)
    estimated_full_s = min(probe_times) * T / probe_T
    seq_T = T
    while seq_T > probe_T and estimated_full_s * seq_T / T * (repeats + 1) > bench.sequential_budget_s:
        seq_T //= 2
    return seq_T, estimated_full_s


def bench_cpu(bench: WkvBench, repeats: int) -> dict:
    shape = bench.cpu_shape
    T = shape["T"]
    inputs, grad_y = bench.make_inputs(**shape, dtype=torch.float32, device="cpu", seed=0)
    with torch.no_grad():  # the op is checked before it is timed
        y_torch, s_torch = bench.torch_op(bench.default_chunk_len)(*inputs)
        y_seq, s_seq = bench.sequential_op(*inputs)
    check = {
        "max_abs_y_diff_rel": ((y_torch - y_seq).abs().max() / y_seq.abs().max()).item(),
        "max_abs_state_diff_rel": ((s_torch - s_seq).abs().max() / s_seq.abs().max()).item(),
    }
    seq_T, estimated_full_s = sequential_length(bench, inputs, grad_y, repeats)
    seq_inputs = [x[:, :seq_T] if x.dim() == 4 else x for x in inputs]
    seq_grad, seq_scale = grad_y[:, :seq_T], T / seq_T

    steps = {}
    for L in CHUNK_SWEEP:
        steps[f"torch L={L} fwd+bwd"] = lambda L=L: training_step(bench.torch_op(L), inputs, grad_y)
    steps["torch fwd"] = lambda: forward_step(bench.torch_op(bench.default_chunk_len), inputs)
    steps["sequential fwd+bwd"] = lambda: training_step(bench.sequential_op, seq_inputs, seq_grad)
    steps["sequential fwd"] = lambda: forward_step(bench.sequential_op, seq_inputs)
    measured = interleaved_times(steps, warmup=1, repeats=repeats)

    rows = []
    for name, result in measured.items():
        is_seq = name.startswith("sequential")
        scale = seq_scale if is_seq else 1.0
        rows.append({
            "variant": name,
            "op": "sequential" if is_seq else "torch",
            "chunk_len": None if is_seq else (bench.default_chunk_len if name == "torch fwd"
                                              else int(name.split("L=")[1].split()[0])),
            "pass": "forward" if name.endswith(" fwd") else "forward+backward",
            "timed_T": seq_T if is_seq else T,
            "median_s_as_timed": result["median_s"],
            "median_s_at_full_T": result["median_s"] * scale,
            "min_s_at_full_T": result["min_s"] * scale,
            "times_s": result["times_s"],
        })
    by_name = {row["variant"]: row for row in rows}
    default_train = by_name[f"torch L={bench.default_chunk_len} fwd+bwd"]
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
            f"{estimated_full_s:.2f} s per step, over the {bench.sequential_budget_s:.0f} s budget"
            if seq_T != T else " (the full length, no scaling)"
        ),
        f"chunk length in use: DEFAULT_CHUNK_LEN={bench.default_chunk_len}; fastest in this run by median: "
        f"{fastest_by_median}, by minimum: {fastest_by_min}",
        f"interleaved timing, median (and minimum) of {repeats} steps after 1 warm-up round per variant",
        f"torch op vs sequential loop on these inputs (fp32): max |dy| / max |y| = "
        f"{check['max_abs_y_diff_rel']:.1e}, final state {check['max_abs_state_diff_rel']:.1e}",
    ]
    return {
        "benchmark": f"{bench.title.lower()} operator, CPU",
        "machine": machine_info("cpu"),
        "shape": shape,
        "dtype": "float32",
        "default_chunk_len": bench.default_chunk_len,
        "correctness": check,
        "results": rows,
        "speedup_vs_sequential": speedup,
        "target_speedup_forward_backward": TARGET_SPEEDUP,
        "meets_target": speedup["forward+backward"] >= TARGET_SPEEDUP,
        "notes": notes,
    }


def cpu_markdown(bench: WkvBench, report: dict) -> str:
    shape, info, speed = report["shape"], report["machine"], report["speedup_vs_sequential"]
    T = shape["T"]
    rows = [
        [row["variant"], f"{row['timed_T']}", f"{row['median_s_as_timed'] * 1e3:.1f} ms",
         f"{row['median_s_at_full_T'] * 1e3:.1f} ms", f"{row['min_s_at_full_T'] * 1e3:.1f} ms"]
        for row in report["results"]
    ]
    lines = [
        f"# {bench.title} operator on the CPU",
        "",
        f"{info['device_name']}; torch {info['torch']}, {info['torch_threads']} thread(s); {info['date_utc']}; "
        f"{load_note(info)}. Produced by `{bench.script}`; method in bench/wkv_harness.py's docstring.",
        "",
        f"fp32, B={shape['B']} H={shape['H']} T={T} N={shape['N']}; fwd+bwd = forward and backward with "
        f"gradients for {bench.input_names}.",
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


def fla_version() -> str:
    try:
        import fla

        return str(getattr(fla, "__version__", "?"))
    except Exception:
        return "not installed"


def speed_ratios(by_name: dict, fla_label: str) -> dict:
    """torch/cuda per dtype and fla/cuda (bf16), forward+backward, for the rows that were measured."""
    def ms(name):
        return by_name.get(name, {}).get("forward+backward_median_ms")

    ratios = {}
    for name in ("bf16", "fp32"):
        if ms(f"cuda {name}") and ms(f"torch {name}"):
            ratios[f"torch/cuda {name} forward+backward"] = ms(f"torch {name}") / ms(f"cuda {name}")
    if ms(fla_label) and ms("cuda bf16"):
        ratios["fla/cuda bf16 forward+backward"] = ms(fla_label) / ms("cuda bf16")
    return ratios


def bench_gpu(bench: WkvBench, device, repeats: int, on_row=None, families=GPU_FAMILIES, previous=None) -> dict:
    """The GPU table for the variant families asked for (cuda, torch, fla).

    on_row(report so far) is called after each variant. `previous` (an earlier report of this benchmark on the same
    GPU) supplies the rows of the families not measured now.
    """
    shape = bench.gpu_shape
    variants = {}
    for dtype in (torch.bfloat16, torch.float32):
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        if "cuda" in families:
            variants[f"cuda {name}"] = (dtype, bench.cuda_op(dtype))
        if "torch" in families:
            variants[f"torch {name}"] = (dtype, bench.torch_op(bench.default_chunk_len))
    fla_run = None
    if "fla" in families:
        fla_run, fla_reason = bench.fla_op()
        if fla_run is not None:
            variants[bench.fla_label] = (torch.bfloat16, fla_run)
    else:
        fla_reason = (previous or {}).get("fla", f"not measured in this run ({bench.script} --variants fla --update)")

    # Reference outputs for the cross-check: the float64 torch op on the bf16-rounded inputs.
    bf16_inputs, _ = bench.make_inputs(**shape, dtype=torch.bfloat16, device=device, seed=0)
    y_reference, _ = bench.torch_op(bench.default_chunk_len)(*[x.double() for x in bf16_inputs])

    kept = [row for row in (previous or {}).get("results", []) if row["variant"].split()[0] not in families]
    rows = []
    notes = [f"median of {repeats} steps after 2 warm-up steps, CUDA synchronised around each step",
             "the fla row's warm-up steps include Triton's autotuning of fla's kernels (not timed)"]
    if kept:
        notes.append(f"rows {', '.join(row['variant'] for row in kept)} come from an earlier run of this benchmark "
                     f"({(previous or {}).get('machine', {}).get('date_utc', '?')}); the others from this one")

    def report(partial: bool) -> dict:
        all_rows = kept + rows
        return {
            "benchmark": f"{bench.title.lower()} operator, GPU",
            "machine": machine_info(device),
            "shape": shape,
            "default_chunk_len": bench.default_chunk_len,
            "results": all_rows,
            "speed_ratios": speed_ratios({row["variant"]: row for row in all_rows}, bench.fla_label),
            "fla": f"timed (fla {fla_version()})" if fla_run is not None else fla_reason,
            "partial": partial,
            "notes": notes,
        }

    for name, (dtype, fn) in variants.items():
        row = {"variant": name, "dtype": str(dtype).replace("torch.", "")}
        try:
            inputs, grad_y = bench.make_inputs(**shape, dtype=dtype, device=device, seed=0)
            with torch.no_grad():
                y, _ = fn(*in_dtype(bf16_inputs, dtype))
            row["max_abs_diff_vs_float64"] = (y.double() - y_reference).abs().max().item()
            row["max_abs_reference"] = y_reference.abs().max().item()
            torch.cuda.reset_peak_memory_stats(device)
            train = timed_steps(lambda: training_step(fn, inputs, grad_y), 2, repeats, device)
            row.update(cuda_memory_mb(device))
            forward = timed_steps(lambda: forward_step(fn, inputs), 2, repeats, device)
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


def gpu_markdown(bench: WkvBench, report: dict) -> str:
    info, shape = report["machine"], report["shape"]
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
        f"# {bench.title} operator on {info['device_name']}",
        "",
        f"torch {info['torch']}, CUDA {info.get('cuda')}; {info['date_utc']}. Produced by `{bench.script}`.",
        "",
        f"B={shape['B']} T={shape['T']} H={shape['H']} N={shape['N']} (C={shape['H'] * shape['N']}), torch op chunk "
        f"{report['default_chunk_len']}.",
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


def main(bench: WkvBench, description: str, argv=None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if not args.skip_cpu:
        report = bench_cpu(bench, args.repeats)
        write_json(RESULTS / f"{bench.stem}-cpu.json", report)
        text = cpu_markdown(bench, report)
        write_text_atomic(text, RESULTS / f"{bench.stem}-cpu.md")
        print(text)
    if not args.skip_gpu and torch.cuda.is_available():
        device = torch.device("cuda")
        stem = f"{bench.stem}-{slug(torch.cuda.get_device_name(device))}"

        def write_gpu(report):
            write_json(RESULTS / f"{stem}.json", report)
            text = gpu_markdown(bench, report)
            write_text_atomic(text, RESULTS / f"{stem}.md")
            return text

        def on_row(report):
            row = report["results"][-1]
            timing = (f"{row['forward+backward_median_ms']:.2f} ms fwd+bwd" if "error" not in row
                      else f"error: {row['error'][:200]}")
            print(f"[{bench.stem}] {row['variant']}: {timing}", flush=True)
            write_gpu(report)

        previous = None
        if args.update and (RESULTS / f"{stem}.json").is_file():
            previous = json.loads((RESULTS / f"{stem}.json").read_text(encoding="utf-8"))
        print(write_gpu(bench_gpu(bench, device, max(args.repeats, 10), on_row=on_row, families=families,
                                  previous=previous)))
    elif not args.skip_gpu:
        print("no CUDA device: GPU figures skipped")
    return 0
