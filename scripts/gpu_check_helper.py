"""Small steps of scripts/gpu_check.sh that are easier in Python than in bash.

    python3 scripts/gpu_check_helper.py env                 # KEY=VALUE lines (shell-quoted) about torch and the GPU
    python3 scripts/gpu_check_helper.py imports             # versions of the packages the check needs
    python3 scripts/gpu_check_helper.py checkpoint OUT.pth --n_layer 24 --n_embd 2048 --vocab_size 65536
    python3 scripts/gpu_check_helper.py build-wkv bf16      # JIT-build (or load) our WKV6 kernel, run it once
    python3 scripts/gpu_check_helper.py build-fused-adam    # JIT-build DeepSpeed's FusedAdam, take one step
    python3 scripts/gpu_check_helper.py build-rwkv DIR      # JIT-build the rwkv package's CUDA ops via a tiny model
    python3 scripts/gpu_check_helper.py figure train|wkv|wkv-fla|table7 PATH    # one-line key figure of a part's output
    python3 scripts/gpu_check_helper.py summary PARTS.tsv --md OUT.md --json OUT.json [--info KEY=VALUE ...]

Random checkpoints are built the way bench/table7.py builds its models (meta device, then filled in place on
the GPU when there is one: seconds even at 3B) and written by src.checkpoint's save_official, so they have the
official layout every loader of this project and the `rwkv` package read. Nothing here downloads anything.
`figure` and `summary` import no torch, so they work even where torch is broken.
"""
import argparse
import csv
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- environment


def cmd_env(args) -> int:
    """Shell assignments: TORCH_VERSION, TORCH_CUDA, CUDA_OK, GPU_NAME, GPU_SLUG, GPU_MEM_GIB, GPU_ARCH, EXT_DIR."""
    values = {"TORCH_VERSION": "missing", "TORCH_CUDA": "none", "CUDA_OK": "0", "GPU_NAME": "none",
              "GPU_SLUG": "cpu", "GPU_MEM_GIB": "0", "GPU_ARCH": "", "EXT_DIR": ""}
    status = 0
    try:
        import torch

        values["TORCH_VERSION"] = torch.__version__
        values["TORCH_CUDA"] = str(torch.version.cuda)
        if torch.cuda.is_available():
            from bench.common import slug

            props = torch.cuda.get_device_properties(0)
            values.update(CUDA_OK="1", GPU_NAME=torch.cuda.get_device_name(0),
                          GPU_SLUG=slug(torch.cuda.get_device_name(0)),
                          GPU_MEM_GIB=f"{props.total_memory / 2 ** 30:.0f}",
                          GPU_ARCH="%d.%d" % torch.cuda.get_device_capability(0))
    except Exception as error:  # report, do not crash: the script prints what is missing
        print(f"torch: {type(error).__name__}: {error}", file=sys.stderr)
        status = 1
    try:
        from src.ops.wkv6_cuda import DEFAULT_CACHE_DIR

        values["EXT_DIR"] = str(DEFAULT_CACHE_DIR)
    except Exception:  # the project's default, should the module be unimportable
        values["EXT_DIR"] = str(Path.home() / ".cache" / "rwkv_bone" / "torch_extensions")
    for key, value in values.items():
        print(f"{key}={shlex.quote(value)}")
    return status


REQUIRED_IMPORTS = ("torch", "pytorch_lightning", "deepspeed", "pydantic", "hjson", "rwkv", "ninja", "numpy",
                    "yaml", "matplotlib", "pytest", "einops")
OPTIONAL_IMPORTS = ("fla", "triton", "tensorboard")


DISTRIBUTIONS = {"pytorch_lightning": "pytorch-lightning", "yaml": "pyyaml", "fla": "fla-core"}


def module_version(name: str, module) -> str:
    version = getattr(module, "__version__", None)
    if version is None:
        from importlib import metadata

        try:
            version = metadata.version(DISTRIBUTIONS.get(name, name))
        except metadata.PackageNotFoundError:
            version = "?"
    return str(version)


def cmd_imports(args) -> int:
    """One 'pkg NAME VERSION FOLDER' line per package (or 'pkg NAME MISSING ...'); exit 1 when a required one is
    missing. Other output (import-time warnings) goes to stderr or is not prefixed."""
    import importlib

    missing = []
    for name in REQUIRED_IMPORTS + OPTIONAL_IMPORTS:
        try:
            module = importlib.import_module(name)
            if name == "fla":  # the kernels bench/wkv.py and bench/wkv7.py compare against
                importlib.import_module("fla.ops.rwkv6").chunk_rwkv6  # noqa: B018
                importlib.import_module("fla.ops.rwkv7").chunk_rwkv7  # noqa: B018
            where = os.path.dirname(getattr(module, "__file__", "") or "")
            print(f"pkg {name:18s} {module_version(name, module):14s} {where}", flush=True)
        except Exception as error:
            kind = "required" if name in REQUIRED_IMPORTS else "optional"
            print(f"pkg {name:18s} MISSING ({kind}): {type(error).__name__}: {str(error)[:200]}", flush=True)
            if name in REQUIRED_IMPORTS:
                missing.append(name)
    if missing:
        print(f"missing required packages: {', '.join(missing)}")
    return 1 if missing else 0


# ---------------------------------------------------------------- random checkpoints


def cmd_checkpoint(args) -> int:
    import torch

    from bench.table7 import build_model
    from src.checkpoint.io import save_official

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    started = time.perf_counter()
    shape = {"arch": args.arch, "n_layer": args.n_layer, "n_embd": args.n_embd, "vocab_size": args.vocab_size}
    model = build_model(shape, False, "torch", torch.device(device), dtype, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    built = time.perf_counter() - started
    path = save_official(model, args.out, dtype=dtype)
    del model
    size = Path(path).stat().st_size
    print(json.dumps({"path": str(path), "n_layer": args.n_layer, "n_embd": args.n_embd,
                      "vocab_size": args.vocab_size, "params": n_params, "bytes": size, "dtype": args.dtype,
                      "device": device, "build_s": round(built, 1),
                      "total_s": round(time.perf_counter() - started, 1)}))
    print(f"checkpoint {path}: {args.arch} L{args.n_layer} D{args.n_embd} vocab {args.vocab_size}, "
          f"{n_params / 1e9:.3f}B parameters, {size / 2 ** 30:.2f} GiB {args.dtype}")
    return 0


# ---------------------------------------------------------------- JIT builds, ahead of the parts that need them


def cmd_build_wkv(args) -> int:
    """Build our WKV6 (--arch x060) or WKV7 (x070) kernel for head size 64 and check one T=33 call against the
    float64 torch op on the same inputs (the benchmarks' input makers)."""
    import torch

    from src.ops.wkv6_cuda import configure_wkv6_cuda

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    configure_wkv6_cuda(cache_dir=os.environ.get("TORCH_EXTENSIONS_DIR"), verbose=True)  # WKV7 builds share it
    if args.arch == "x070":
        from bench.wkv7 import make_inputs
        from src.ops.wkv7 import wkv7 as op
        from src.ops.wkv7_cuda import load_wkv7_extension as load
    else:
        from bench.wkv import make_inputs
        from src.ops import wkv6 as op
        from src.ops.wkv6_cuda import load_wkv6_extension as load
    started = time.perf_counter()
    load(head_size=64, dtype=dtype)
    built = time.perf_counter() - started
    inputs, _ = make_inputs(1, 33, 2, 64, dtype=dtype, device="cuda", seed=0)
    y, _ = op(*inputs, op="cuda")
    y_ref, _ = op(*[x.double() for x in inputs], op="torch")
    error = (y.double() - y_ref).abs().max().item() / max(y_ref.abs().max().item(), 1e-30)
    name = "wkv7" if args.arch == "x070" else "wkv6"
    print(f"{name} cuda {args.dtype}: built/loaded in {built:.1f} s; T=33 relative max error vs float64 torch op "
          f"{error:.2e}")
    return 0 if error < 3e-2 else 1


def cmd_build_fused_adam(args) -> int:
    import torch

    started = time.perf_counter()
    from deepspeed.ops.adam import FusedAdam

    param = torch.nn.Parameter(torch.ones(1024, device="cuda"))
    optimizer = FusedAdam([param], lr=1e-3, adam_w_mode=True)
    param.grad = torch.ones_like(param)
    optimizer.step()
    torch.cuda.synchronize()
    moved = (1.0 - param.detach()).abs().max().item()
    print(f"DeepSpeed FusedAdam built/loaded and stepped in {time.perf_counter() - started:.1f} s "
          f"(parameter moved by {moved:.2e})")
    return 0 if moved > 0 else 1


def cmd_build_rwkv(args) -> int:
    """The rwkv package compiles its CUDA ops on import (wkv_cuda) and on loading a model of the generation
    (--arch): a tiny model with head size 64, as the large ones have, makes the builds demo/chat.py loads later."""
    import torch

    from demo.chat import set_rwkv_package_environment

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny-{args.arch}.pth"
    from bench.table7 import build_model
    from src.checkpoint.io import save_official

    model = build_model({"arch": args.arch, "n_layer": 1, "n_embd": 128, "vocab_size": 256}, False, "torch",
                        torch.device("cpu"), torch.float32, 0)
    save_official(model, path, dtype=torch.bfloat16)
    started = time.perf_counter()
    set_rwkv_package_environment(args.device, args.arch)
    print(f"RWKV_JIT_ON={os.environ.get('RWKV_JIT_ON')} RWKV_CUDA_ON={os.environ.get('RWKV_CUDA_ON')}", flush=True)
    from demo.chat import RwkvPackageEngine

    strategy = "cuda bf16" if args.device == "cuda" else "cpu fp32"
    logits, _ = RwkvPackageEngine(path, strategy, args.arch).forward([1, 2, 3, 4], None)
    finite = bool(torch.isfinite(logits.float()).all())
    print(f"rwkv package on {args.device}: built/loaded in {time.perf_counter() - started:.1f} s; "
          f"logits finite: {finite}")
    return 0 if finite else 1


# ---------------------------------------------------------------- key figures (no torch)


def figure_train(path: Path):
    """metrics.csv -> '8 steps, loss 11.1 -> 10.9, 52.3 kt/s (median after step 1), peak 9.1 GB'."""
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        return False, f"no {path}"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return False, f"{path} has no steps"
    losses = [float(r["loss"]) for r in rows]
    speeds = [float(r["kt_s"]) for r in rows[1:]] or [float(rows[0]["kt_s"])]
    peak = max(float(r.get("peak_mem_gb") or 0) for r in rows)
    finite = all(x == x and abs(x) != float("inf") for x in losses)
    text = (f"{len(rows)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {statistics.median(speeds):.2f} kt/s "
            f"(median after step 1), peak {peak:.2f} GB")
    return finite, text


def figure_wkv(path: Path, fla: bool = False):
    """wkv-<gpu>.json -> timings per variant and the speed ratios. fla=False: the cuda and torch rows must be there
    without errors; fla=True: the fla row must be."""
    if not path.is_file():
        return False, f"no {path}"
    report = json.loads(path.read_text(encoding="utf-8"))
    rows = {row["variant"]: row for row in report.get("results", [])}
    wanted = [name for name in rows if name.startswith("fla") == fla]
    parts, ok = [], bool(wanted)
    for name in wanted:
        row = rows[name]
        if "error" in row:
            ok = False
            parts.append(f"{name}: {row['error'][:120]}")
        else:
            parts.append(f"{name} {row['forward+backward_median_ms']:.2f} ms")
    for name, value in report.get("speed_ratios", {}).items():
        if name.startswith("fla") == fla:
            parts.append(f"{name.replace(' forward+backward', '')} {value:.2f}x")
    if fla and not wanted:
        parts.append(str(report.get("fla", "no fla row"))[:160])
    if not fla and not any(name.startswith("cuda") for name in wanted):
        ok = False
        parts.append("no cuda rows")
    if report.get("partial"):
        ok = False
        parts.append("partial (stopped early)")
    return ok, "; ".join(parts)


def figure_table7(path: Path):
    """table7-<tag>.json -> per row: tokens/s, memory, and the ratios to LoRA."""
    if not path.is_file():
        return False, f"no {path}"
    report = json.loads(path.read_text(encoding="utf-8"))
    parts, ok = [], True
    for entry in report.get("table", []):
        if entry.get("status") != "ok":
            ok = False
            parts.append(f"{entry['row']} {entry.get('status')}")
            continue
        text = f"{entry['row']} {entry['tokens_per_s']:.0f} tok/s {entry['memory_mb']:.0f} MiB"
        if entry["row"] != "lora" and "tokens_per_s_vs_lora" in entry:
            text += f" ({entry['tokens_per_s_vs_lora']:.2f}x/{entry['memory_vs_lora']:.2f}x LoRA)"
        parts.append(text)
    if not parts:
        return False, "empty table"
    return ok, "; ".join(parts)


def cmd_figure(args) -> int:
    figures = {"train": figure_train, "wkv": figure_wkv, "wkv-fla": lambda path: figure_wkv(path, fla=True),
               "table7": figure_table7}
    ok, text = figures[args.kind](Path(args.path))
    print(text)
    return 0 if ok else 1


# ---------------------------------------------------------------- summary files (no torch)


def write_text(text: str, path) -> None:
    """Write a text file through a temporary file and a rename (src.checkpoint.files would import torch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def cmd_summary(args) -> int:
    parts = []
    with open(args.tsv, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3:
                parts.append({"part": fields[0], "status": fields[1], "seconds": float(fields[2]),
                              "figure": fields[3] if len(fields) > 3 else ""})
    info = dict(item.split("=", 1) for item in args.info)
    failed = [p["part"] for p in parts if p["status"] == "FAIL"]
    skipped = [p["part"] for p in parts if p["status"] == "SKIP"]
    warned = [p["part"] for p in parts if p["status"] == "WARN"]
    report = {"check": "scripts/gpu_check.sh", "info": info, "parts": parts, "failed": failed, "skipped": skipped,
              "warned": warned, "all_passed": not failed}
    write_text(json.dumps(report, indent=2) + "\n", args.json)
    lines = [f"# GPU check on {info.get('gpu_name', '?')}", "",
             "Produced by `bash scripts/gpu_check.sh` (each part in its own process, timed, with a timeout). "
             + ", ".join(f"{k}: {v}" for k, v in info.items() if k != "gpu_name") + ".", "",
             "| part | status | seconds | key figure |", "| --- | --- | ---: | --- |"]
    for p in parts:
        figure = p["figure"].replace("|", "/")
        lines.append(f"| {p['part']} | {p['status']} | {p['seconds']:.0f} | {figure} |")
    lines += ["", f"Failed (or not run): {', '.join(failed)}." if failed else "Every part that ran passed.",
              *([f"Skipped: {', '.join(skipped)}."] if skipped else []),
              *([f"Optional parts that failed (WARN): {', '.join(warned)}."] if warned else []), ""]
    write_text("\n".join(lines), args.md)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env").set_defaults(fn=cmd_env)
    sub.add_parser("imports").set_defaults(fn=cmd_imports)
    p = sub.add_parser("checkpoint")
    p.add_argument("out")
    p.add_argument("--n_layer", type=int, required=True)
    p.add_argument("--n_embd", type=int, required=True)
    p.add_argument("--vocab_size", type=int, default=65536)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "fp16"))
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cuda | cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="x060", choices=("x060", "x070"))
    p.set_defaults(fn=cmd_checkpoint)
    p = sub.add_parser("build-wkv")
    p.add_argument("dtype", choices=("bf16", "fp32"))
    p.add_argument("--arch", default="x060", choices=("x060", "x070"))
    p.set_defaults(fn=cmd_build_wkv)
    sub.add_parser("build-fused-adam").set_defaults(fn=cmd_build_fused_adam)
    p = sub.add_parser("build-rwkv")
    p.add_argument("dir", help="folder for the tiny checkpoint")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: only a check of this step")
    p.add_argument("--arch", default="x060", choices=("x060", "x070"))
    p.set_defaults(fn=cmd_build_rwkv)
    p = sub.add_parser("figure")
    p.add_argument("kind", choices=("train", "wkv", "wkv-fla", "table7"))
    p.add_argument("path")
    p.set_defaults(fn=cmd_figure)
    p = sub.add_parser("summary")
    p.add_argument("tsv")
    p.add_argument("--md", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--info", action="append", default=[], help="KEY=VALUE shown in the summary (repeatable)")
    p.set_defaults(fn=cmd_summary)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
