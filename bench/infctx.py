"""Where exact long-context training (--chunk_ctx) pays: peak memory and tokens/s of Bone training at growing
context lengths, in one pass and in chunks of 512 tokens with the state carried (src/train/infctx.py).

Each row trains real steps (forward, masked cross-entropy with L2Wrap, backward, clipping at 1.0, AdamW) of Bone
b=64 (factored) on random weights, micro-batch 1, and runs in a fresh process, so its memory peak is its own:
- CPU: the process's peak resident set (kernel-measured, bench/common.run_fresh_process; glibc told to mmap
  allocations from 64 KiB, see WORKER_ENV), fp32, torch WKV op, at a scaled shape (L4 D256 vocab 4096) chosen so
  the whole table runs in a few minutes on one thread. A baseline row (the same process stopping before its
  first step) shows what the model and the interpreter hold.
- CUDA: torch.cuda.max_memory_allocated over the steps, bf16, the CUDA WKV op, at the RWKV6-1.6B shape.

    python bench/infctx.py --device cpu                      # CPU table -> bench/results/infctx-cpu.{json,md}
    python bench/infctx.py --device cuda                     # GPU rows  -> bench/results/infctx-<gpu>.{json,md}
    python bench/infctx.py                                   # cuda when present, else the CPU table
    python bench/infctx.py --ctx 512,2048 --steps 1          # fewer rows
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import load_note, machine_info, markdown_table, median, run_fresh_process, slug, write_json
from bench.table7 import build_model
from src.checkpoint.files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHAPES = {
    "cpu": {"n_layer": 4, "n_embd": 256, "vocab_size": 4096, "label": "scaled CPU shape (L4 D256 vocab 4096)"},
    "1.6b": {"n_layer": 24, "n_embd": 2048, "vocab_size": 65536, "label": "RWKV6-1.6B (L24 D2048 vocab 65536)"},
}
DEFAULTS = {"cpu": {"ctx": "512,2048,8192,16384", "dtype": "fp32", "warmup": 1, "steps": 2},
            "cuda": {"ctx": "512,2048,8192,16384", "dtype": "bf16", "warmup": 1, "steps": 2}}
CHUNK = 512
# glibc keeps freed heap blocks resident, so a process's peak RSS would count memory a chunk freed as if the next
# chunk still held it; allocations from 64 KiB up are mmap-ed instead (and returned on free), so the peak RSS
# follows the memory actually live. (Without it the chunked rows grow with ctx_len by heap retention alone.)
WORKER_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
BONE_B = 64


def make_train_step(model, batch, chunk_ctx):
    """One optimizer step as train.py takes it (src/train/module.py's loss, one pass or chunked)."""
    import torch

    from src.train.infctx import chunked_loss
    from src.train.loss import L2Wrap, masked_cross_entropy
    from src.train.module import OptimizerSpec, build_optimizer

    spec = OptimizerSpec(name="adamw", lr=1e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, layerwise_lr=True)
    optimizer = build_optimizer(model.named_parameters(), spec)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids, targets, mask = batch

    def step_fn():
        optimizer.zero_grad(set_to_none=True)
        if chunk_ctx:
            wrapped = chunked_loss(model, ids, targets, mask, chunk_ctx)
        else:
            logits = model(ids)
            wrapped = L2Wrap.apply(masked_cross_entropy(logits, targets, mask), logits)
        wrapped.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return wrapped.detach()

    return step_fn


def run_worker(args) -> dict:
    """Build, adapt and train one row in this process; the parent adds the process's peak RSS."""
    import torch

    from src.ops import resolve_wkv_op
    from src.ops.wkv6_cuda import build_max_t_for, configure_wkv6_cuda
    from src.peft import BoneConfig, apply_peft

    shape = SHAPES[args.shape]
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    chunk = args.chunk or None
    result = {"ctx_len": args.ctx_len, "chunk_ctx": chunk, "shape": args.shape, "dtype": args.dtype,
              "status": "error"}
    torch.manual_seed(0)
    if device.type == "cuda":  # one kernel build serves every row: its T limit is the run's longest context
        configure_wkv6_cuda(max_t=build_max_t_for(max(int(c) for c in args.ctx.split(","))))
        torch.backends.cuda.matmul.allow_tf32 = True
    result["wkv_op"] = wkv_op = resolve_wkv_op("auto", device, head_size=64, dtype=dtype).op
    model = build_model(shape, False, wkv_op, device, dtype, seed=0)
    apply_peft(model, BoneConfig(b=BONE_B, impl="factored"))
    model.train()
    result["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if args.ctx_len == 0:  # the baseline: what the process holds before any step
        result["status"] = "ok"
        return result
    tokens = torch.randint(0, shape["vocab_size"], (1, args.ctx_len + 1), generator=torch.Generator().manual_seed(0))
    batch = (tokens[:, :-1].to(device), tokens[:, 1:].to(device), torch.ones(1, args.ctx_len, device=device))
    step_fn = make_train_step(model, batch, chunk)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result["cuda_allocated_before_mb"] = torch.cuda.memory_allocated(device) / 2 ** 20
    times, losses = [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = step_fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(loss))
    result.update(status="ok", step_s=median(times), tokens_per_s=args.ctx_len / median(times), losses=losses)
    if device.type == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        result["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2 ** 20
    return result


def measure(args) -> list:
    rows = [(0, 0)] if args.device == "cpu" else []
    for ctx in [int(c) for c in args.ctx.split(",")]:
        rows += [(ctx, 0)] + ([(ctx, CHUNK)] if ctx > CHUNK else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-infctx-") as work:
        for ctx, chunk in rows:
            out = Path(work) / f"ctx{ctx}-chunk{chunk}.json"
            run = run_fresh_process([Path(__file__).resolve(), "--worker", "--device", args.device, "--shape",
                                     args.shape, "--dtype", args.dtype, "--ctx", args.ctx, "--ctx_len", ctx,
                                     "--chunk", chunk,
                                     "--warmup", args.warmup, "--steps", args.steps, "--result", out],
                                    out, timeout_s=args.timeout, env=WORKER_ENV)
            row = run["result"] or {"ctx_len": ctx, "chunk_ctx": chunk or None, "status": f"rc {run['rc']}"}
            if row.get("status") == "ok" or run["rc"] != 0:
                row["peak_rss_mb"] = run["peak_rss_mb"]
            if run["rc"] != 0:
                row["status"] = f"failed (rc {run['rc']})"
                row["log_tail"] = run["log_tail"][-1500:]
            print(f"[infctx] ctx {ctx} chunk {chunk or '-'}: {row.get('status')} "
                  f"{row.get('peak_rss_mb', 0):.0f} MB RSS {row.get('cuda_peak_allocated_mb', 0):.0f} MB CUDA "
                  f"{row.get('tokens_per_s', 0):.0f} tok/s", file=sys.stderr, flush=True)
            results.append(row)
    return results


def markdown(results, info, args) -> str:
    gpu = args.device == "cuda"
    headers = ["ctx_len", "chunk_ctx", "peak CUDA allocated (MB)" if gpu else "peak RSS (MB)",
               "above baseline (MB)" if not gpu else "peak CUDA reserved (MB)", "tokens/s", "status"]
    baseline = next((r["peak_rss_mb"] for r in results if r["ctx_len"] == 0 and "peak_rss_mb" in r), None)
    body = []
    for r in results:
        if r["ctx_len"] == 0:
            body.append(["baseline (model, no step)", "-", f"{r.get('peak_rss_mb', 0):.0f}", "0", "-", r["status"]])
            continue
        if gpu:
            memory = [f"{r.get('cuda_peak_allocated_mb', 0):.0f}", f"{r.get('cuda_peak_reserved_mb', 0):.0f}"]
        else:
            peak = r.get("peak_rss_mb", 0)
            memory = [f"{peak:.0f}", f"{peak - baseline:.0f}" if baseline is not None else "-"]
        body.append([str(r["ctx_len"]), str(r["chunk_ctx"] or "-"), *memory,
                     f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-", r["status"]])
    shape = SHAPES[args.shape]["label"]
    lines = [
        f"# Long-context training memory: one pass vs --chunk_ctx {CHUNK} ({args.device})",
        "",
        f"Bone b={BONE_B} (factored), micro-batch 1, {args.dtype}, {shape}, {args.steps} timed step(s) after "
        f"{args.warmup} warm-up; every row in a fresh process. Measured on {info.get('device_name', args.device)}.",
        "",
        markdown_table(headers, body, right_align=(2, 3, 4)),
        "",
        ("Memory is torch.cuda.max_memory_allocated over the steps (the CUDA context is not in it)." if gpu else
         "Memory is the whole process's peak resident set (kernel-measured, with MALLOC_MMAP_THRESHOLD_=65536 so "
         "that freed memory leaves the resident set); 'above baseline' subtracts the process that built the model "
         "and stopped before its first step."),
        "Without chunks the activation memory grows linearly with ctx_len; with chunks it stays near the "
        f"{CHUNK}-token figure plus the per-chunk states and inputs (each chunk is recomputed in backward, so a "
        "step costs about one extra forward).",
        f"tokens/s: {load_note(info)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if present")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default: cpu on CPU, 1.6b on cuda")
    parser.add_argument("--ctx", default=None, help="comma-separated context lengths")
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16"))
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    parser.add_argument("--out_dir", default=str(RESULTS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ctx_len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    defaults = DEFAULTS[args.device]
    args.shape = args.shape or ("cpu" if args.device == "cpu" else "1.6b")
    for name in ("ctx", "dtype", "warmup", "steps"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.worker:
        import torch

        torch.set_num_threads(1)
        write_json(args.result, run_worker(args))
        return 0
    info = machine_info(args.device)
    results = measure(args)
    tag = "cpu" if args.device == "cpu" else slug(info.get("device_name", "cuda"))
    out = Path(args.out_dir)
    write_json(out / f"infctx-{tag}.json", {"machine": info, "settings": vars(args), "rows": results})
    write_text_atomic(markdown(results, info, args), out / f"infctx-{tag}.md")
    print(f"wrote {out / f'infctx-{tag}.json'} and .md")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
