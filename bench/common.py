"""Helpers shared by the benchmarks: timing, memory, machine description, fresh-process workers, result files.

Timing: `median` of per-step wall times taken after warm-up (CUDA work is synchronised before each clock read).
Memory:
- CPU: the peak resident set of a whole worker process, read by the parent from the kernel (`os.wait4`'s
  ru_maxrss) when the worker exits, so every measured row runs in a fresh process and no row inherits another's
  high-water mark. The worker also reports its own VmHWM/VmRSS from /proc/self/status as a cross-check.
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (what the allocator handed out to
  tensors; the CUDA context and the allocator's cache are not in it — `max_memory_reserved` is reported beside it).
"""
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from src.checkpoint.files import write_text_atomic

MIB = 1024 * 1024


def median(values):
    """The median of a non-empty list of numbers."""
    if not values:
        raise ValueError("median of no values: measure at least one step")
    return float(statistics.median(values))


def synchronize(device) -> None:
    """Wait for queued CUDA work so a wall-clock read covers it (no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step_fn, warmup: int, repeats: int, device="cpu") -> list:
    """Run step_fn warmup times untimed, then repeats times, returning each timed call's seconds."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        step_fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step_fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def proc_status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmHWM = peak resident, VmRSS = current resident) in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except OSError:
        pass
    if field == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
    raise RuntimeError(f"cannot read {field} from /proc/self/status on this system (Linux only)")


def cuda_memory_mb(device) -> dict:
    """Peak allocated and reserved CUDA memory since the last reset_peak_memory_stats, in MiB."""
    import torch

    return {
        "peak_allocated_mb": torch.cuda.max_memory_allocated(device) / MIB,
        "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / MIB,
    }


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device) -> str:
    """'NVIDIA H100 80GB HBM3' for a CUDA device; 'CPU model (N cores)' for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model_name()} ({os.cpu_count()} cores)"


def slug(text: str) -> str:
    """A file-name-safe lower-case slug: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    value = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return value or "device"


def machine_info(device) -> dict:
    """What the results were measured on, including the load average (the machine may be shared)."""
    import torch

    info = {
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_1_5_15": list(os.getloadavg()),
    }
    if torch.device(device).type == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu_total_memory_mb"] = torch.cuda.get_device_properties(device).total_memory / MIB
    return info


def run_fresh_process(args, result_path, timeout_s: float, env=None, log_path=None) -> dict:
    """Run `python args...` in a fresh process that writes its result JSON to result_path; return

    {"rc", "result" (parsed JSON or None), "peak_rss_mb" (the child's kernel-measured peak resident set),
     "wall_s", "log_tail"}. The child is killed after timeout_s (rc then reports the signal).
    """
    result_path = Path(result_path)
    if result_path.exists():
        result_path.unlink()
    log_path = Path(log_path) if log_path is not None else result_path.with_suffix(".log")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=log, stderr=subprocess.STDOUT, env=env)
        timer = threading.Timer(timeout_s, lambda: _kill_quietly(proc.pid))
        timer.start()
        try:
            # wait4 (not Popen.wait) so the kernel's rusage of exactly this child comes back with its status.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    result = None
    if result_path.exists():
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        tail = handle.read()[-4000:]
    return {"rc": proc.returncode, "result": result, "peak_rss_mb": usage.ru_maxrss / 1024.0, "wall_s": wall,
            "log_tail": tail}


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def write_json(path, obj) -> Path:
    """obj as indented JSON (atomically)."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def markdown_table(headers, rows, right_align=()) -> str:
    """A GitHub Markdown table; columns whose index is in right_align are right-aligned."""
    rule = ["---:" if i in right_align else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells, the header {len(headers)}: {row}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def load_note(info: dict) -> str:
    """A sentence on the machine's load while measuring: shared-machine numbers are flagged as such."""
    load1, load5, _ = info["loadavg_1_5_15"]
    cores = info.get("cpu_count") or 1
    text = f"load average at the start {load1:.2f} / {load5:.2f} (1 / 5 min) on {cores} cores"
    if load5 > 0.5 * cores:
        text += " — the machine was shared with other work, so absolute speeds are noisy; compare ratios"
    return text
