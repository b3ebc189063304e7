"""train.py's GPU path on a CPU machine, with the host-emulated build of our CUDA kernel standing in for the GPU.

1. The GPU plan (tests/emulation/gpu_plan_run.py): torch reports a CUDA device while the run is planned, so the
   plan takes every GPU decision with the defaults — accelerator gpu, bf16, `--wkv_op auto` -> cuda (built for the
   checkpoint's head size and bf16), DeepSpeed stage 2 — and the run then trains its first steps with the model
   loaded with that op. Before the WKV op was chosen once per run, loading chose it again against the CPU and the
   run ended in "WKV op 'cuda' cannot run here" before the first step.
2. The same fine-tune through DeepSpeed stage 2 with `--wkv_op cuda` on the emulated kernel and with
   `--wkv_op torch` ends with the same adapter (fp32; tolerance below).
"""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.data import get_tokenizer
from src.data.make_binidx import convert
from src.peft import read_adapter
from tests.rwkv_fixtures import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Adapter tensors of the two fp32 runs: the kernel and the chunked op round differently (about 1e-6 relative per
# WKV call); four optimizer steps of Adam at lr 1e-3 keep the difference far below the 1e-3 size of an update.
ADAPTER_TOLERANCE = 2e-4


def environment():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR"):
        env.pop(name, None)
    return env


def run(module_or_script, args, timeout=900):
    command = [sys.executable, "-m", module_or_script] if not module_or_script.endswith(".py") else \
        [sys.executable, str(ROOT / module_or_script)]
    result = subprocess.run([*command, *map(str, args)], cwd=ROOT, env=environment(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{module_or_script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random L2 D64 (one head of 64) byte-vocabulary checkpoint and a little text as binidx."""
    folder = tmp_path_factory.mktemp("gpu-plan")
    write_random_checkpoint(folder / "base.pth", n_layer=2, n_embd=64, vocab_size=256, seed=11)
    with open(folder / "text.jsonl", "w", encoding="utf-8") as handle:
        for i in range(40):
            handle.write(json.dumps({"text": f"story {i}: the fox ran to the red house and slept by the fire"}) + "\n")
    convert(str(folder / "text.jsonl"), str(folder / "text"), get_tokenizer("byte"))
    return folder


def losses(proj_dir):
    with open(Path(proj_dir) / "metrics.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def common(tiny, proj_dir):
    return ["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file", tiny / "text",
            "--data_type", "binidx", "--ctx_len", "24", "--micro_bsz", "2", "--epoch_steps", "4",
            "--epoch_count", "1", "--num_threads", "1", "--seed", "3", "--proj_dir", proj_dir]


def test_gpu_plan_with_every_default_reaches_training(tiny, tmp_path):
    proj = tmp_path / "gpu-plan"
    result = run("tests.emulation.gpu_plan_run", common(tiny, proj))  # --wkv_op auto, precision and strategy default
    assert "planned: accelerator gpu, precision bf16, wkv op cuda" in result.stdout
    assert "WKV6 op 'auto' on cuda: using 'cuda' (head size 64, torch.bfloat16)" in result.stderr
    assert "deepspeed_stage_2" in result.stdout and "wkv op cuda" in result.stdout
    steps = losses(proj)
    assert len(steps) == 4 and all(math.isfinite(x) for x in steps), steps
    assert (proj / "adapter-final.pth").is_file()


def test_emulated_kernel_and_torch_op_train_the_same_adapter(tiny, tmp_path):
    settings = ["--strategy", "deepspeed_stage_2", "--accelerator", "cpu", "--precision", "fp32",
                "--lr_init", "1e-3", "--lr_final", "1e-3"]
    kernel = run("tests.emulation.train_emulated", common(tiny, tmp_path / "cuda") + settings + ["--wkv_op", "cuda"])
    assert "wkv op cuda" in kernel.stdout
    reference = run("train.py", common(tiny, tmp_path / "torch") + settings + ["--wkv_op", "torch"])
    assert "wkv op torch" in reference.stdout
    got = read_adapter(tmp_path / "cuda" / "adapter-final.pth")["tensors"]
    expected = read_adapter(tmp_path / "torch" / "adapter-final.pth")["tensors"]
    assert set(got) == set(expected) and len(got) == 16
    moved = 0.0
    for name, tensor in expected.items():
        scale = tensor.abs().max().item()
        moved = max(moved, scale)
        error = (got[name] - tensor).abs().max().item()
        assert error <= ADAPTER_TOLERANCE * max(scale, 1e-3), f"{name}: max error {error:.3e}, max |x| {scale:.3e}"
    assert moved > 1e-4, "the adapters did not train"
    assert torch.allclose(torch.tensor(losses(tmp_path / "cuda")), torch.tensor(losses(tmp_path / "torch")),
                          rtol=1e-4)
