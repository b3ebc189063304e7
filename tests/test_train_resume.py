"""A run killed with SIGKILL mid-epoch and resumed ends with the same adapter as a run never interrupted.

CPU, fp32, fixed seed, DeepSpeed ZeRO stage 2 in one process (the default engine and its checkpoint format).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.rwkv_fixtures import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EPOCH_STEPS, EPOCH_COUNT, ACCUMULATE = 16, 3, 2
STEPS_PER_EPOCH = EPOCH_STEPS // ACCUMULATE
STRATEGY = "deepspeed_stage_2"  # the default engine: its own checkpoint format is what must resume
KILL_AFTER_STEP = STEPS_PER_EPOCH + 1  # the first checkpoint inside the second epoch


def environment():
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    write_random_checkpoint(folder / "base.pth", n_layer=2, n_embd=64, vocab_size=256, seed=3)
    with open(folder / "text.jsonl", "w", encoding="utf-8") as handle:
        for i in range(60):
            words = " ".join(f"item{(i * 7 + j) % 23} is {(i + j) % 10}" for j in range(8))
            handle.write(json.dumps({"text": words}) + "\n")
    return folder


def command(workdir, proj_dir):
    return [
        sys.executable, str(ROOT / "train.py"), "--peft", "bone", "--bone_b", "16",
        "--load_model", str(workdir / "base.pth"), "--data_file", str(workdir / "text.jsonl"), "--data_type", "jsonl",
        "--proj_dir", str(proj_dir), "--ctx_len", "48", "--micro_bsz", "2", "--epoch_steps", str(EPOCH_STEPS),
        "--epoch_count", str(EPOCH_COUNT), "--accumulate_grad_batches", str(ACCUMULATE), "--epoch_save", "1",
        "--save_every_steps", "1", "--lr_init", "5e-3", "--lr_final", "5e-4", "--warmup_steps", "3",
        "--strategy", STRATEGY, "--accelerator", "cpu", "--precision", "fp32", "--seed", "11", "--num_threads", "1",
    ]


def latest_point(proj_dir):
    path = Path(proj_dir) / "checkpoints" / "latest.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(workdir):
    reference = workdir / "reference"
    done = subprocess.run(command(workdir, reference), cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = workdir / "interrupted"
    process = subprocess.Popen(command(workdir, interrupted), cwd=ROOT, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while True:
            point = latest_point(interrupted)
            if point is not None and point["step"] >= KILL_AFTER_STEP:
                break
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        assert process.poll() is None, "the run finished before the kill: nothing was interrupted"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    killed_at = latest_point(interrupted)
    assert 0 < killed_at["batch"] < EPOCH_STEPS, f"the checkpoint is not mid-epoch: {killed_at}"
    assert killed_at["step"] < EPOCH_COUNT * STEPS_PER_EPOCH
    assert not (interrupted / "adapter-final.pth").exists()

    resumed = subprocess.run(command(workdir, interrupted), cwd=ROOT, env=environment(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming checkpoints/step-{killed_at['step']:08d}" in resumed.stdout

    expected = torch.load(reference / "adapter-final.pth", weights_only=True)
    got = torch.load(interrupted / "adapter-final.pth", weights_only=True)
    assert set(got["tensors"]) == set(expected["tensors"]) and got["tensors"]
    for name, tensor in expected["tensors"].items():
        torch.testing.assert_close(got["tensors"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert any(t.abs().max() > 0 for t in got["tensors"].values()), "the adapter never trained"

    # The metrics log continues without duplicated or missing steps.
    steps = [int(line.split(",")[0]) for line in (interrupted / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, EPOCH_COUNT * STEPS_PER_EPOCH + 1))

