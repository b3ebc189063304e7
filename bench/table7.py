"""Table 7 of the Bone paper (memory and throughput of fine-tuning), measured on this framework.

For each strategy — the no-adapter floor (only the LayerNorm weights trainable: the cost every adapter pays for
the frozen base's forward and input backward), full fine-tune, LoRA r=32, Bone b=64 materialised (the paper's
implementation), the same with
Bone-only checkpointing, the same with whole-layer checkpointing, Bone b=64 factored (ours), MiSS r=64 (default
form), MiSS-mini r=64 mini_r=64 and Bone-col b=64 — it reports the trainable parameters, the peak memory and the
tokens/s of real training steps (forward, masked cross-entropy, backward, optimizer step, through the training
module train.py uses), as the median of several steps after warm-up, and each row's tokens/s and memory as a ratio
to LoRA's and to the floor's. Every row runs in a fresh process, so its memory peak is its own.

    python bench/table7.py                      # auto: CUDA if present, else the CPU table
    python bench/table7.py --device cpu         # scaled shape, fp32, torch WKV op, peak RSS per process
    python bench/table7.py --device cuda        # RWKV6-1.6B and 3B shapes, bf16, CUDA op, CUDA allocator peak
    python bench/table7.py --device cpu --shapes x070-cpu          # the same rows on an RWKV-7 (x070)
    python bench/table7.py --device cuda --shapes x070-1.5b,x070-2.9b

GPU mode: RWKV6-1.6B (L24 D2048) and 3B (L32 D2560), vocab 65536, random weights (memory and speed do not depend
on the values), bf16, batch 1 ctx 512 (the paper's setting) and batch 8 ctx 1024; the RWKV-7 shapes x070-1.5b
(L24 D2048) and x070-2.9b (L32 D2560) with the released models' mini-LoRA widths, on request.
CPU mode: a scaled shape chosen so the whole table runs in a few minutes on 2 cores (x070-cpu: its RWKV-7 twin).
Results: bench/results/table7-<device>.json and .md (the paper's numbers and each row's ratio to LoRA beside ours).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    load_note,
    machine_info,
    markdown_table,
    median,
    proc_status_mb,
    run_fresh_process,
    slug,
    write_json,
)
from src.checkpoint.files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent

# Model shapes. vocab 65536 is the world tokenizer's; the CPU shape is scaled down to run in minutes.
SHAPES = {
    "1.6b": {"arch": "x060", "n_layer": 24, "n_embd": 2048, "vocab_size": 65536, "label": "RWKV6-1.6B (L24 D2048)"},
    "3b": {"arch": "x060", "n_layer": 32, "n_embd": 2560, "vocab_size": 65536, "label": "RWKV6-3B (L32 D2560)"},
    "cpu": {"arch": "x060", "n_layer": 4, "n_embd": 512, "vocab_size": 4096,
            "label": "scaled CPU shape (L4 D512 vocab 4096)"},
    "x070-1.5b": {"arch": "x070", "n_layer": 24, "n_embd": 2048, "vocab_size": 65536,
                  "label": "RWKV-7 1.5B (L24 D2048)"},
    "x070-2.9b": {"arch": "x070", "n_layer": 32, "n_embd": 2560, "vocab_size": 65536,
                  "label": "RWKV-7 2.9B (L32 D2560)"},
    "x070-cpu": {"arch": "x070", "n_layer": 4, "n_embd": 512, "vocab_size": 4096,
                 "label": "scaled CPU shape, RWKV-7 (L4 D512 vocab 4096)"},
}
# Batch settings: (micro batch, context length).
SETTINGS = {"b1t512": (1, 512), "b8t1024": (8, 1024), "b2t256": (2, 256)}
DEFAULTS = {
    "cuda": {"shapes": "1.6b,3b", "settings": "b1t512,b8t1024", "dtype": "bf16", "warmup": 3, "steps": 10,
             "rounds": 1},
    "cpu": {"shapes": "cpu", "settings": "b2t256", "dtype": "fp32", "warmup": 2, "steps": 5, "rounds": 2},
}

# The rows: name -> (label, adapter: (method, keyword arguments), FULL or FLOOR; layer checkpointing).
FULL, FLOOR = "full", "floor"
ROWS = {
    "floor": ("No adapter: LayerNorm weights only (the floor)", FLOOR, False),
    "full": ("Full fine-tune (reference)", FULL, False),
    "lora": ("LoRA r=32", ("lora", {"r": 32, "alpha": 32.0}), False),
    "bone_mat": ("Bone b=64, materialised (paper's impl)", ("bone", {"b": 64, "impl": "materialize"}), False),
    "bone_mat_ckpt": ("Bone b=64, materialised + Bone checkpoint",
                      ("bone", {"b": 64, "impl": "materialize", "checkpoint": True}), False),
    "bone_mat_layer_ckpt": ("Bone b=64, materialised + layer checkpoint",
                            ("bone", {"b": 64, "impl": "materialize"}), True),
    "bone_factored": ("Bone b=64, factored (ours)", ("bone", {"b": 64, "impl": "factored"}), False),
    "miss": ("MiSS r=64 (default form)", ("miss", {"r": 64}), False),
    "miss_mini": ("MiSS-mini r=64 mini_r=64", ("miss", {"r": 64, "form": "mini", "mini_r": 64}), False),
    "bone_col": ("Bone-col b=64 (materialised)", ("bone", {"b": 64, "grouping": "col"}), False),
}

# The paper's Table 7 (one RTX 4090, bf16, batch 1, ctx 512): row -> shape -> (GPU MB, kt/s).
PAPER = {
    "lora": {"1.6b": (7314, 5.86), "3b": (12074, 3.62)},
    "bone_mat": {"1.6b": (12276, 4.11), "3b": (22978, 2.16)},
    "bone_mat_ckpt": {"1.6b": (7398, 3.46), "3b": (12168, 1.72)},
    "bone_mat_layer_ckpt": {"1.6b": (7398, 1.59)},
}
PAPER_TRAINABLE = {"1.6b": "33.0M", "3b": "55.1M"}

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# ----------------------------------------------------------------------------------------------------------
# Worker: one row in this (fresh) process.
# ----------------------------------------------------------------------------------------------------------

def fill_random_(model, seed: int) -> None:
    """Cheap random weights: norms at weight 1 / bias 0, everything else N(0, 0.02²) (adapters untouched).

    Memory and speed do not depend on the values; small normal values keep every activation finite and avoid
    the exact zeros and subnormals that could make CPU arithmetic unrepresentative.
    """
    import torch

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_norm_parameter(name):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)


def build_model(shape: dict, layer_checkpointing: bool, wkv_op: str, device, dtype, seed: int):
    """An RWKV6 or RWKV-7 (shape["arch"], default x060) of the given shape with random weights, built on the meta
    device and filled in place. RWKV-7 gets the released models' mini-LoRA widths for its n_embd."""
    import torch

    from src.model import RWKV6, RWKV6Config
    from src.model.rwkv7 import RWKV7, RWKV7Config
    from src.train.plan import default_x070_lora_dims

    dims = dict(n_layer=shape["n_layer"], n_embd=shape["n_embd"], vocab_size=shape["vocab_size"], wkv_op=wkv_op,
                layer_checkpointing=layer_checkpointing)
    if shape.get("arch", "x060") == "x070":
        w, a, v, g = default_x070_lora_dims(shape["n_embd"])
        model_class, config = RWKV7, RWKV7Config(**dims, dim_w_lora=w, dim_a_lora=a, dim_v_lora=v, dim_g_lora=g)
    else:
        model_class, config = RWKV6, RWKV6Config(**dims)
    with torch.device("meta"):
        model = model_class(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    fill_random_(model, seed)
    return model


def is_norm_parameter(name: str) -> bool:
    """LayerNorm / GroupNorm parameters (ln0, ln1, ln2, ln_out, att.ln_x): what the floor row trains."""
    return any(part in "." + name for part in (".ln0.", ".ln1.", ".ln2.", ".ln_out.", ".ln_x."))


def make_adapter_config(spec):
    from src.peft import METHODS

    kind, kwargs = spec
    return METHODS[kind].config(**kwargs)


def make_train_step(model, batch):
    """One training step as train.py takes it, built from the same pieces src/train's module uses: masked
    cross-entropy with L2Wrap, backward, gradient clipping at 1.0 (train.py's default), the optimizer step
    (torch AdamW over the trainable parameters, RWKV's parameter groups).

    Returns (step_fn, description); step_fn() runs one step and returns the loss as a detached tensor.
    """
    import torch

    from src.train.module import L2Wrap, OptimizerSpec, build_optimizer, masked_cross_entropy

    spec = OptimizerSpec(name="adamw", lr=1e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, layerwise_lr=True)
    optimizer = build_optimizer(model.named_parameters(), spec)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step_fn():
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch["input_ids"])
        loss = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
        L2Wrap.apply(loss, logits).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return loss.detach()

    return step_fn, "forward + masked CE (L2Wrap) + backward + clip 1.0 + AdamW step (src/train/module.py)"


def run_worker(args) -> dict:
    """Build, adapt and train one row; return its measurements (the parent adds the process's peak RSS)."""
    import torch

    shape = SHAPES[args.shape]
    micro_bsz, ctx_len = SETTINGS[args.setting]
    label, adapter, layer_ckpt = ROWS[args.row]
    device = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    torch.manual_seed(args.seed)
    result = {"row": args.row, "label": label, "shape": args.shape, "setting": args.setting,
              "micro_bsz": micro_bsz, "ctx_len": ctx_len, "dtype": args.dtype, "status": "error"}
    try:
        from src.ops import resolve_wkv_op
        from src.ops.wkv7 import resolve_wkv7_op

        resolve = resolve_wkv7_op if shape.get("arch") == "x070" else resolve_wkv_op
        wkv_op = resolve(args.wkv_op, device, head_size=64, dtype=dtype).op
        result["wkv_op"] = wkv_op
        model = build_model(shape, layer_ckpt, wkv_op, device, dtype, args.seed)
        if adapter == FULL:
            model.requires_grad_(True)
        elif adapter == FLOOR:
            for name, param in model.named_parameters():
                param.requires_grad_(is_norm_parameter(name))
        else:
            from src.peft import apply_peft

            apply_peft(model, make_adapter_config(adapter))
        model.train()
        result["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result["total_params"] = sum(p.numel() for p in model.parameters())

        generator = torch.Generator().manual_seed(args.seed)
        vocab = shape["vocab_size"]
        tokens = torch.randint(0, vocab, (micro_bsz, ctx_len + 1), generator=generator)
        batch = {"input_ids": tokens[:, :-1].to(device), "targets": tokens[:, 1:].to(device),
                 "loss_mask": torch.ones(micro_bsz, ctx_len, device=device)}
        step_fn, how = make_train_step(model, batch)
        result["step"] = how

        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            result["cuda_allocated_before_train_mb"] = torch.cuda.memory_allocated(device) / 2 ** 20
        result["rss_before_train_mb"] = proc_status_mb("VmRSS")

        losses, times = [], []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss = step_fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            losses.append(float(loss))
            if i >= args.warmup:
                times.append(elapsed)
        if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
            raise RuntimeError(f"non-finite loss during the benchmark steps: {losses}")
        step_s = median(times)
        result.update({
            "status": "ok", "warmup_steps": args.warmup, "step_times_s": times, "median_step_s": step_s,
            "tokens_per_s": micro_bsz * ctx_len / step_s, "losses": losses,
            "self_vmhwm_mb": proc_status_mb("VmHWM"),
        })
        if device.type == "cuda":
            from bench.common import cuda_memory_mb

            result.update(cuda_memory_mb(device))
    except Exception as exc:  # reported per row: one failing row (e.g. out of memory) must not stop the table
        import traceback

        oom = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        result["status"] = "oom" if oom else "error"
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        result["traceback"] = traceback.format_exc()[-4000:]
    return result


# ----------------------------------------------------------------------------------------------------------
# Parent: run every row in a fresh process, then write the tables.
# ----------------------------------------------------------------------------------------------------------

def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


def split_names(text: str, known: dict, what: str) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or text!r}; choose from {', '.join(known)} (comma-separated)")
    return names


def measure_all(args, device: str) -> list:
    """Every (shape, setting, row) in rounds; each measurement in a fresh process. Returns the raw runs."""
    runs = []
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    with tempfile.TemporaryDirectory(prefix="table7-") as tmp:
        for round_index in range(args.rounds):
            for shape in args.shape_list:
                for setting in args.setting_list:
                    # Alternate the row order between rounds so slow drifts of a shared machine average out.
                    rows = args.row_list if round_index % 2 == 0 else list(reversed(args.row_list))
                    for row in rows:
                        result_path = Path(tmp) / f"{shape}-{setting}-{row}-{round_index}.json"
                        worker_args = [
                            Path(__file__).resolve(), "--worker", "--device", device, "--shape", shape,
                            "--setting", setting, "--row", row, "--dtype", args.dtype, "--wkv_op", args.wkv_op,
                            "--warmup", args.warmup, "--steps", args.steps, "--seed", args.seed,
                            "--result", result_path,
                        ]
                        run = run_fresh_process(worker_args, result_path, args.timeout, env=env)
                        result = run["result"] or {"row": row, "shape": shape, "setting": setting,
                                                   "status": "error", "label": ROWS[row][0]}
                        if run["result"] is None:
                            result["error"] = f"worker exited with rc={run['rc']} and no result: {run['log_tail']}"
                        result.update({"round": round_index, "peak_rss_mb": run["peak_rss_mb"],
                                       "process_wall_s": run["wall_s"], "rc": run["rc"]})
                        runs.append(result)
                        print(summary_line(result), flush=True)
    return runs


def summary_line(r: dict) -> str:
    where = f"[{r['shape']} {r['setting']} round {r.get('round', 0)}] {r['row']:<20}"
    if r.get("status") != "ok":
        return f"{where} {r.get('status')}: {r.get('error', '')[:300]}"
    memory = r.get("peak_allocated_mb", r["peak_rss_mb"])
    return (f"{where} trainable {r['trainable_params']:>12,}  step {1000 * r['median_step_s']:8.1f} ms  "
            f"{r['tokens_per_s']:9.1f} tok/s  peak {memory:9.1f} MiB  ({r['process_wall_s']:.0f} s)")


def combine(runs: list, device: str) -> list:
    """One row per (shape, setting, row): the median of the rounds' tokens/s, the largest memory peak."""
    grouped = {}
    for r in runs:
        grouped.setdefault((r["shape"], r["setting"], r["row"]), []).append(r)
    table = []
    for (shape, setting, row), group in grouped.items():
        ok = [r for r in group if r.get("status") == "ok"]
        entry = {"shape": shape, "setting": setting, "row": row, "label": ROWS[row][0], "rounds": len(group)}
        if not ok:
            entry.update({"status": group[0].get("status", "error"), "error": group[0].get("error", "")})
            table.append(entry)
            continue
        entry.update({
            "status": "ok",
            "trainable_params": ok[0]["trainable_params"],
            "total_params": ok[0]["total_params"],
            "tokens_per_s": median([r["tokens_per_s"] for r in ok]),
            "tokens_per_s_per_round": [r["tokens_per_s"] for r in ok],
            "median_step_s": median([r["median_step_s"] for r in ok]),
        })
        if device == "cuda":
            entry["memory_mb"] = max(r["peak_allocated_mb"] for r in ok)
            entry["peak_reserved_mb"] = max(r["peak_reserved_mb"] for r in ok)
            entry["memory_kind"] = "torch.cuda.max_memory_allocated"
        else:
            entry["memory_mb"] = max(r["peak_rss_mb"] for r in ok)
            # The training part of the peak: above the resident set of the built, adapted model.
            entry["train_peak_above_model_mb"] = max(r["peak_rss_mb"] - r["rss_before_train_mb"] for r in ok)
            entry["memory_kind"] = "peak RSS of the row's process (kernel ru_maxrss)"
        table.append(entry)
    for entry in table:
        if entry.get("status") != "ok":
            continue
        for reference_row, suffix in (("lora", "lora"), ("floor", "floor")):
            reference = next((e for e in table if e["shape"] == entry["shape"] and e["setting"] == entry["setting"]
                              and e["row"] == reference_row and e.get("status") == "ok"), None)
            if reference is None:
                continue
            entry[f"tokens_per_s_vs_{suffix}"] = entry["tokens_per_s"] / reference["tokens_per_s"]
            entry[f"memory_vs_{suffix}"] = entry["memory_mb"] / reference["memory_mb"]
            if "train_peak_above_model_mb" in entry:
                entry[f"train_peak_vs_{suffix}"] = (entry["train_peak_above_model_mb"]
                                                    / reference["train_peak_above_model_mb"])
    return table


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def paper_cell(row: str, shape: str) -> str:
    """'12276 MB, 4.11 kt/s (1.68× / 0.70×)' for a row the paper measured, else '—'."""
    if row not in PAPER or shape not in PAPER[row]:
        return "—"
    mem, speed = PAPER[row][shape]
    lora_mem, lora_speed = PAPER["lora"][shape]
    return f"{mem} MB, {speed:.2f} kt/s ({mem / lora_mem:.2f}× / {speed / lora_speed:.2f}×)"


def render_markdown(table: list, info: dict, args, device: str) -> str:
    cpu = device == "cpu"
    lines = [f"# Table 7, measured: {info['device_name']}", ""]
    lines.append(
        f"Training steps (forward, masked cross-entropy, backward, optimizer step) through `src/train`'s module, "
        f"median of {args.steps} steps after {args.warmup} warm-up steps"
        + (f", median over {args.rounds} rounds (each row in a fresh process per round)" if args.rounds > 1
           else ", each row in a fresh process")
        + f"; dtype {args.dtype}, WKV op `{table_wkv_op(table)}`; random weights."
    )
    if cpu:
        lines.append("Memory: peak resident set (RSS) of the row's whole process as the kernel measured it "
                     "(Python and torch included); \"train peak\" is that peak minus the resident set just before "
                     "the first step (the built, adapted model), i.e. what training itself added.")
    else:
        lines.append("Memory: `torch.cuda.max_memory_allocated` over the training steps (weights included; the "
                     "CUDA context and allocator cache are not).")
    lines.append(f"Machine: {info['device_name']}, torch {info['torch']}, {info['torch_threads']} threads; "
                 f"{load_note(info)}; load average at the end {info['loadavg_end'][0]:.2f} / "
                 f"{info['loadavg_end'][1]:.2f}.")
    lines.append("Paper columns: the Bone paper's Table 7 (one RTX 4090, bf16, batch 1, ctx 512; GPU memory and "
                 "kt/s, in brackets the ratio to its LoRA row: memory / speed). Ratios are the comparable part "
                 "across machines.")
    lines.append("")
    for shape in args.shape_list:
        for setting in args.setting_list:
            micro_bsz, ctx_len = SETTINGS[setting]
            lines.append(f"## {SHAPES[shape]['label']}, batch {micro_bsz}, ctx {ctx_len}")
            lines.append("")
            headers = ["Strategy", "Trainable", "Peak memory (MiB)", "× LoRA", "× floor"]
            if cpu:
                headers += ["Train peak (MiB)", "× LoRA", "× floor"]
            headers += ["Tokens/s", "× LoRA", "× floor"]
            paper_shapes = [s for s in ("1.6b", "3b") if s == shape] or ["1.6b", "3b"]
            headers += [f"Paper {s.upper()} (× LoRA mem / speed)" for s in paper_shapes]
            rows = []
            for entry in table:
                if entry["shape"] != shape or entry["setting"] != setting:
                    continue
                if entry.get("status") != "ok":
                    cells = [entry["label"], "—", entry["status"]] + ["—"] * (len(headers) - 3 - len(paper_shapes))
                    rows.append(cells + [paper_cell(entry["row"], s) for s in paper_shapes])
                    continue
                cells = [entry["label"], fmt_params(entry["trainable_params"]), f"{entry['memory_mb']:.0f}",
                         ratio(entry, "memory_vs_lora"), ratio(entry, "memory_vs_floor")]
                if cpu:
                    cells += [f"{entry['train_peak_above_model_mb']:.0f}", ratio(entry, "train_peak_vs_lora"),
                              ratio(entry, "train_peak_vs_floor")]
                cells += [f"{entry['tokens_per_s']:.0f}", ratio(entry, "tokens_per_s_vs_lora"),
                          ratio(entry, "tokens_per_s_vs_floor")]
                cells += [paper_cell(entry["row"], s) for s in paper_shapes]
                rows.append(cells)
            right = set(range(1, len(headers) - len(paper_shapes)))
            lines.append(markdown_table(headers, rows, right_align=right))
            lines.append("")
            if any(e["row"] == "floor" and e["shape"] == shape for e in table):
                lines.append("× floor: memory and tokens/s as ratios to the floor row (only the LayerNorm weights "
                             "trainable: what the frozen model's forward and input backward cost anyway); the goal "
                             "for factored Bone is at least 0.95× the floor's tokens/s.")
                lines.append("")
            if shape in PAPER_TRAINABLE:
                lines.append(f"The paper's trainable count for this shape: {PAPER_TRAINABLE[shape]} (LoRA r=32 = "
                             f"Bone b=64).")
                lines.append("")
    return "\n".join(lines)


def table_wkv_op(table) -> str:
    return "cuda" if any(e.get("wkv_op") == "cuda" for e in table) else "torch"


def ratio(entry: dict, key: str) -> str:
    return f"{entry[key]:.2f}×" if key in entry else "—"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--shapes", default=None, help=f"comma-separated from {list(SHAPES)} (default per device)")
    parser.add_argument("--settings", default=None, help=f"comma-separated from {list(SETTINGS)} (default per device)")
    parser.add_argument("--rows", default="all", help=f"comma-separated from {list(ROWS)}, or all")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="bf16 on CUDA, fp32 on CPU by default")
    parser.add_argument("--wkv_op", default="auto", help="auto | torch | cuda (src.ops.resolve_wkv_op)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 CUDA, 2 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps, median taken (default 10 CUDA, 5 CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="repeat every row this often (default 1 CUDA, 2 CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per row's process")
    parser.add_argument("--out_dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--tag", default=None, help="results file tag (default: 'cpu' or the GPU name's slug)")
    # Internal: run one row (what the parent starts in a fresh process).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_worker(args)
        write_json(args.result, result)
        return 0 if result["status"] == "ok" else 1

    device = resolve_device(args.device)
    defaults = DEFAULTS[device]
    args.shape_list = split_names(args.shapes or defaults["shapes"], SHAPES, "shape")
    args.setting_list = split_names(args.settings or defaults["settings"], SETTINGS, "setting")
    args.row_list = split_names(args.rows, ROWS, "row")
    args.dtype = args.dtype or defaults["dtype"]
    args.warmup = defaults["warmup"] if args.warmup is None else args.warmup
    args.steps = defaults["steps"] if args.steps is None else args.steps
    args.rounds = defaults["rounds"] if args.rounds is None else args.rounds
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        raise ValueError("need --steps >= 1, --warmup >= 0 and --rounds >= 1")

    info = machine_info(device)
    started = time.perf_counter()
    runs = measure_all(args, device)
    info["loadavg_end"] = list(os.getloadavg())
    info["wall_s"] = time.perf_counter() - started
    table = combine(runs, device)
    for entry in table:  # the WKV op the workers resolved, for the record
        entry["wkv_op"] = next((r.get("wkv_op") for r in runs if r["row"] == entry["row"] and r.get("wkv_op")), None)

    tag = args.tag or ("cpu" if device == "cpu" else slug(info["device_name"]))
    out_dir = Path(args.out_dir)
    settings = {"shapes": {s: SHAPES[s] for s in args.shape_list},
                "settings": {s: SETTINGS[s] for s in args.setting_list}, "rows": args.row_list,
                "dtype": args.dtype, "wkv_op": args.wkv_op, "warmup": args.warmup, "steps": args.steps,
                "rounds": args.rounds, "seed": args.seed}
    json_path = write_json(out_dir / f"table7-{tag}.json",
                           {"machine": info, "settings": settings, "table": table, "runs": runs, "paper": PAPER})
    md_path = write_text_atomic(render_markdown(table, info, args, device) + "\n", out_dir / f"table7-{tag}.md")
    print(f"wrote {json_path} and {md_path} ({info['wall_s']:.0f} s)")
    failed = [e for e in table if e.get("status") != "ok"]
    return 1 if failed and len(failed) == len(table) else 0


if __name__ == "__main__":
    sys.exit(main())
