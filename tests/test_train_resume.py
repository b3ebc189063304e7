"""A run killed with SIGKILL mid-epoch and resumed ends with the same adapter as a run never interrupted; so does a
run stopped with SIGTERM (what schedulers send), which first saves a checkpoint at its last step and exits 143.

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


def command(workdir, proj_dir, save_every_steps=1):
    return [
        sys.executable, str(ROOT / "train.py"), "--peft", "bone", "--bone_b", "16",
        "--load_model", str(workdir / "base.pth"), "--data_file", str(workdir / "text.jsonl"), "--data_type", "jsonl",
        "--proj_dir", str(proj_dir), "--ctx_len", "48", "--micro_bsz", "2", "--epoch_steps", str(EPOCH_STEPS),
        "--epoch_count", str(EPOCH_COUNT), "--accumulate_grad_batches", str(ACCUMULATE), "--epoch_save", "1",
        "--save_every_steps", str(save_every_steps), "--lr_init", "5e-3", "--lr_final", "5e-4", "--warmup_steps", "3",
        "--strategy", STRATEGY, "--accelerator", "cpu", "--precision", "fp32", "--seed", "11", "--num_threads", "1",
    ]


def latest_point(proj_dir):
    path = Path(proj_dir) / "checkpoints" / "latest.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.fixture(scope="module")
def reference(workdir):
    """The uninterrupted run."""
    folder = workdir / "reference"
    done = subprocess.run(command(workdir, folder), cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def assert_same_final_adapter(reference, proj_dir):
    expected = torch.load(reference / "adapter-final.pth", weights_only=True)
    got = torch.load(proj_dir / "adapter-final.pth", weights_only=True)
    assert set(got["tensors"]) == set(expected["tensors"]) and got["tensors"]
    for name, tensor in expected["tensors"].items():
        torch.testing.assert_close(got["tensors"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert any(t.abs().max() > 0 for t in got["tensors"].values()), "the adapter never trained"


def metric_steps(proj_dir):
    return [int(line.split(",")[0]) for line in (Path(proj_dir) / "metrics.csv").read_text().splitlines()[1:]]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(workdir, reference):

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

    assert_same_final_adapter(reference, interrupted)
    # The metrics log continues without duplicated or missing steps.
    assert metric_steps(interrupted) == list(range(1, EPOCH_COUNT * STEPS_PER_EPOCH + 1))


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_to_the_same_adapter(workdir, reference):
    """Checkpoints only at epoch ends (--save_every_steps 0): what SIGTERM saves is the only way not to lose the
    steps since. The signal lands anywhere, also inside a gradient accumulation (that step is trained again)."""
    proj = workdir / "sigterm"
    log = open(workdir / "sigterm.log", "w")
    process = subprocess.Popen(command(workdir, proj, save_every_steps=0), cwd=ROOT, env=environment(),
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    try:
        while not ((proj / "metrics.csv").is_file() and metric_steps(proj)
                   and metric_steps(proj)[-1] >= KILL_AFTER_STEP + 1):
            assert process.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline, "the run made no progress in time"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    output = (workdir / "sigterm.log").read_text()
    assert process.returncode == 143, output[-3000:]
    point = latest_point(proj)
    assert point["step"] > STEPS_PER_EPOCH, f"nothing was saved at the signal: {point}"  # beyond the epoch end
    assert point["step"] in (metric_steps(proj)[-1], metric_steps(proj)[-1] - 1)
    last = output.strip().splitlines()[-1]
    assert last.startswith("train.py: error: interrupted by SIGTERM at optimizer step") and "Traceback" not in output
    assert f"the checkpoint of that step is saved: {proj / 'checkpoints' / 'step-{:08d}'.format(point['step'])}" \
        in last
    assert "Rerun the same command to continue" in last
    assert not (proj / "adapter-final.pth").exists()

    resumed = subprocess.run(command(workdir, proj, save_every_steps=0), cwd=ROOT, env=environment(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming checkpoints/step-{point['step']:08d}" in resumed.stdout
    assert_same_final_adapter(reference, proj)
    assert metric_steps(proj) == list(range(1, EPOCH_COUNT * STEPS_PER_EPOCH + 1))



def test_sigterm_inside_a_gradient_accumulation_saves_the_step_before_it(workdir, reference):
    """The signal lands after the first micro-batch of an optimizer step (accumulate 2): the checkpoint is that of
    the step before, with the rng of that moment, and the half-accumulated step is trained again on resume."""
    proj = workdir / "sigterm-mid-accumulation"
    env = dict(environment(), TEST_SIGTERM_AT="1:4")  # epoch 1, micro-batch 4: the first half of step 3 of it
    stopped = subprocess.run([sys.executable, "-m", "tests.train_observed", *command(workdir, proj, 0)[2:]],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    expected_step = STEPS_PER_EPOCH + 2  # two steps of epoch 1 done; the third was half accumulated
    point = latest_point(proj)
    assert (point["step"], point["epoch"], point["batch"]) == (expected_step, 1, 4)
    assert f"interrupted by SIGTERM at optimizer step {expected_step}; the checkpoint of that step is saved" \
        in stopped.stderr
    resumed = subprocess.run(command(workdir, proj, save_every_steps=0), cwd=ROOT, env=environment(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_final_adapter(reference, proj)
    assert metric_steps(proj) == list(range(1, EPOCH_COUNT * STEPS_PER_EPOCH + 1))
