"""What Bone costs against LoRA on the CPU: one layer, a small RWKV-shaped stack, and initialisation time.

    .venv/bin/python bench/bone_layer.py            # writes bench/results/bone-layer-cpu.{json,md}

Setups (fp32, forward + backward of adapter training, every adapter parameter trained):
  layer  one frozen 1024×1024 nn.Linear, x of 512 tokens (x needs a gradient, as inside a network)
  stack  an RWKV6-shaped stack, L4 D512 F1792: per layer att r,k,v,g,o [D,D] and ffn key [F,D], receptance [D,D],
         value [D,F] (the RWKV6 wiring of those projections, without the WKV recurrence), B=2 T=256
Variants: LoRA r=32; Bone-row b=64 factored / materialised / materialised + Bone-only checkpoint; Bone-col b=64
materialised / + checkpoint.

Speed: all variants of a setup are built in one process and timed interleaved (one step of each in turn), so load
from other processes on the machine hits them alike; median of 20 steps after 3 warm-up rounds.

Memory, each variant in a fresh subprocess: (1) bytes autograd keeps from forward to backward (unique storages of
the saved tensors, parameters excluded), measured with torch.autograd.graph.saved_tensors_hooks; (2) the peak
memory of a training step: the resident set's high-water mark over 3 steps minus the resident set before them,
with glibc told to mmap every buffer of 64 KiB or more so that freed tensors leave the resident set at once.
Init: apply_peft's recorded peft_init_seconds for PiSSA r=32 (svd_lowrank, niter=4), LoRA r=32 and Bone b=64 on
2 layers of RWKV6-1.6B shapes (D2048 F7168, random fp32 weights), scaled by 12 to the model's 24 layers.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from src.peft import BoneConfig, LoraConfig, PissaConfig, apply_peft

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    "lora-r32": LoraConfig(r=32, alpha=32.0),
    "bone-row-b64-factored": BoneConfig(b=64, impl="factored"),
    "bone-row-b64-materialised": BoneConfig(b=64, impl="materialize"),
    "bone-row-b64-materialised-checkpoint": BoneConfig(b=64, impl="materialize", checkpoint=True),
    "bone-col-b64-materialised": BoneConfig(b=64, grouping="col"),
    "bone-col-b64-materialised-checkpoint": BoneConfig(b=64, grouping="col", checkpoint=True),
}
BASELINE = "lora-r32"


class SingleLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.layer = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return self.layer(x)


class StackTimeMix(nn.Module):
    def __init__(self, c):
        super().__init__()
        for name in ("receptance", "key", "value", "gate", "output"):
            setattr(self, name, nn.Linear(c, c, bias=False))

    def forward(self, x):
        mixed = torch.sigmoid(self.receptance(x)) * torch.tanh(self.key(x)) * self.value(x)
        return self.output(mixed * torch.nn.functional.silu(self.gate(x)))


class StackChannelMix(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.key = nn.Linear(c, f, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    def forward(self, x):
        return torch.sigmoid(self.receptance(x)) * self.value(torch.relu(self.key(x)).square())


class StackBlock(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.att, self.ffn = StackTimeMix(c), StackChannelMix(c, f)

    def forward(self, x):
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class Stack(nn.Module):
    """RWKV6 module names and Linear shapes; the mixing between them is simplified (no WKV recurrence)."""

    def __init__(self, n_layer, c, f):
        super().__init__()
        self.blocks = nn.ModuleList(StackBlock(c, f) for _ in range(n_layer))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def build(setup: str, variant: str, seed: int = 0):
    """(model with adapters, input, tokens per step) for a setup; adapters get small random values."""
    torch.manual_seed(seed)
    if setup == "layer":
        model, targets = SingleLayer(1024), ["layer"]
        x = torch.randn(512, 1024, requires_grad=True)
        tokens = 512
    else:
        model, targets = Stack(4, 512, 1792), None
        x = torch.randn(2, 256, 512)
        tokens = 512
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    apply_peft(model, VARIANTS[variant], targets=targets)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.01)
    return model, x, tokens


def train_step(model, x):
    loss = model(x).float().square().mean()
    loss.backward()
    for p in model.parameters():
        p.grad = None
    if x.grad is not None:
        x.grad = None


def time_setup(setup: str, steps: int, warmup: int) -> dict:
    """Median step time of every variant, timed interleaved in this process."""
    built = {v: build(setup, v) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for round_index in range(warmup + steps):
        for variant, (model, x, _) in built.items():
            started = time.perf_counter()
            train_step(model, x)
            if round_index >= warmup:
                times[variant].append(time.perf_counter() - started)
    out = {}
    for variant, (_, _, tokens) in built.items():
        median = statistics.median(times[variant])
        out[variant] = {"median_ms": 1e3 * median, "tokens_per_s": tokens / median,
                        "min_ms": 1e3 * min(times[variant]), "max_ms": 1e3 * max(times[variant])}
    return out


def proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def measure_memory(setup: str, variant: str) -> dict:
    """Saved-for-backward bytes, and the peak growth of the resident set over 3 training steps.

    Run in a fresh process started with MALLOC_MMAP_THRESHOLD_=65536, so every tensor buffer is its own mmap and
    goes back to the OS when freed: the resident set then follows the live tensors, and its high-water mark
    (VmHWM, reset through /proc/self/clear_refs after a warm-up step) is the peak of the step.
    """
    model, x, _ = build(setup, variant)
    parameter_ptrs = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.data_ptr() not in parameter_ptrs:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).float().square().mean()
    loss.backward()  # also the warm-up step: one-time buffers are allocated before the peak is reset
    for p in model.parameters():
        p.grad = None
    if x.grad is not None:
        x.grad = None
    del loss
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    rss_before = proc_status_bytes("VmRSS")
    for _ in range(3):
        train_step(model, x)
    peak = proc_status_bytes("VmHWM")
    return {"saved_for_backward_MB": sum(saved.values()) / 2**20, "peak_step_MB": (peak - rss_before) / 2**20}


def measure_init(layers: int, full_layers: int) -> dict:
    """peft_init_seconds of PiSSA / LoRA / Bone on `layers` layers of RWKV6-1.6B shapes, scaled to full_layers."""
    out = {}
    for name, config in (("pissa-r32-niter4", PissaConfig(r=32, svd_niter=4)), ("lora-r32", LoraConfig(r=32)),
                         ("bone-b64", BoneConfig(b=64))):
        torch.manual_seed(0)
        model = Stack(layers, 2048, 7168)  # nn.Linear's own init gives random fp32 weights
        apply_peft(model, config)
        seconds = model.peft_state.peft_init_seconds
        out[name] = {"measured_layers": layers, "measured_s": seconds,
                     f"estimated_{full_layers}_layers_s": seconds * full_layers / layers}
        del model
    return out


def run_worker(argv) -> None:
    spec = json.loads(argv)
    torch.set_num_threads(spec["threads"])
    if spec["task"] == "time":
        result = time_setup(spec["setup"], spec["steps"], spec["warmup"])
    elif spec["task"] == "memory":
        result = measure_memory(spec["setup"], spec["variant"])
    else:
        result = measure_init(spec["layers"], spec["full_layers"])
    print("RESULT " + json.dumps(result))


def in_subprocess(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if spec["task"] == "memory" else None
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def markdown(report: dict) -> str:
    lines = [f"# Bone vs LoRA on CPU ({report['date']})", "",
             f"{report['machine']}; torch {report['torch']}, {report['threads']} threads, fp32. "
             f"Produced by `bench/bone_layer.py`; method in its docstring.", ""]
    for setup, title in (("layer", "One 1024×1024 layer, 512 tokens"),
                         ("stack", "RWKV6-shaped stack L4 D512 F1792, B=2 T=256")):
        rows = report["setups"][setup]
        lines += [f"## {title}", "",
                  "| variant | median step | tokens/s | speed vs LoRA | saved for backward | vs LoRA | "
                  "peak memory of a step | vs LoRA |",
                  "|---|---|---|---|---|---|---|---|"]
        for variant, r in rows.items():
            lines.append(
                f"| {variant} | {r['median_ms']:.1f} ms | {r['tokens_per_s']:,.0f} | {r['speed_vs_lora']:.2f}× | "
                f"{r['saved_for_backward_MB']:.1f} MB | {r['saved_vs_lora']:.2f}× | {r['peak_step_MB']:.1f} MB | "
                f"{r['peak_vs_lora']:.2f}× |")
        lines.append("")
    init = report["init"]
    lines += ["## Initialisation time, RWKV6-1.6B shapes (24 layers × 8 linears)", "",
              "| method | measured | on | estimated for 24 layers |", "|---|---|---|---|"]
    for name, r in init.items():
        lines.append(f"| {name} | {r['measured_s']:.3f} s | {r['measured_layers']} layers | "
                     f"{r['estimated_24_layers_s']:.2f} s |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init_layers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bone-layer-cpu"))
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return

    started = time.perf_counter()
    setups = {}
    for setup in ("layer", "stack"):
        print(f"timing {setup} ...", flush=True)
        timing = in_subprocess({"task": "time", "setup": setup, "steps": args.steps, "warmup": args.warmup,
                                "threads": args.threads})
        for variant in VARIANTS:
            print(f"  memory {setup} {variant}", flush=True)
            timing[variant].update(in_subprocess({"task": "memory", "setup": setup, "variant": variant,
                                                  "threads": args.threads}))
        base = timing[BASELINE]
        for r in timing.values():
            r["speed_vs_lora"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["saved_vs_lora"] = r["saved_for_backward_MB"] / base["saved_for_backward_MB"]
            r["peak_vs_lora"] = r["peak_step_MB"] / base["peak_step_MB"]
        setups[setup] = timing
    print("timing initialisation ...", flush=True)
    init = in_subprocess({"task": "init", "layers": args.init_layers, "full_layers": 24, "threads": args.threads})

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "setups": setups,
        "init": init,
        "bench_seconds": time.perf_counter() - started,
        "notes": [
            "Speed: variants of a setup timed interleaved in one process (one step each in turn), median of "
            f"{args.steps} after {args.warmup} warm-up rounds; the machine is shared, so compare ratios, not times.",
            "saved for backward: unique storages autograd keeps between forward and backward (parameters "
            "excluded). peak memory of a step: growth of the resident set's high-water mark over 3 steps, in a "
            "fresh process per variant with MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the resident set "
            "(see measure_memory).",
            f"Init: measured on {args.init_layers} layers of 1.6B shapes with random fp32 weights and scaled "
            "linearly to 24 layers (every layer has the same 8 shapes).",
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
