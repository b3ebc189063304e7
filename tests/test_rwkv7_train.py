"""RWKV-7 (x070) through README's RWKV6 commands: train.py (planning, --arch, dry-run counts, optimizer groups,
default targets), then train -> merge -> the `rwkv` package / eval / chat, and a SIGKILLed run resuming.

The generation comes from the --load_model checkpoint; --arch x070 (or RWKV-PEFT's --my_testing x070) only
matters for a new model. Everything runs on the CPU at tiny shapes.
"""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.checkpoint.io import load_rwkv
from src.data import get_tokenizer
from src.data.make_binidx import convert
from src.model import RWKV7
from src.peft import BoneConfig, LoraConfig, apply_peft, load_adapter, peft_summary
from src.train.launch import main
from src.train.module import optimizer_groups
from tests.rwkv7_fixtures import package_reference, random_rwkv7, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR",
                    "OMP_NUM_THREADS")
# Released RWKV-7 shapes (rwkv7-notes.md section 1.5): name -> (n_layer, n_embd)
X070_SHAPES = {"0.4b": (24, 1024), "1.5b": (24, 2048), "2.9b": (32, 2560), "7.2b": (32, 4096)}
TINY = dict(n_layer=2, n_embd=64, vocab_size=256, dim_w_lora=32, dim_a_lora=32, dim_v_lora=32, dim_g_lora=32)
WORDS = "the cat sat on a mat and then ran to the red house where two dogs slept by the warm fire".split()


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch):
    """main() sets launcher variables for DeepSpeed; give them back after each test."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.setenv(name, "unset-by-test")
        monkeypatch.delenv(name)


def environment():
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RWKV_V7_ON", None)  # the chat demo must set it itself for an x070 model
    return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny x070 base (L2 D64, one head, vocab 256) and byte-level text as binidx."""
    folder = tmp_path_factory.mktemp("x070")
    write_random_checkpoint(folder / "base.pth", seed=5, **TINY)
    with open(folder / "text.jsonl", "w", encoding="utf-8") as handle:
        for i in range(120):
            words = [WORDS[(i * 3 + j * 5) % len(WORDS)] for j in range(6 + i % 17)]
            handle.write(json.dumps({"text": " ".join(words)}) + "\n")
    convert(str(folder / "text.jsonl"), str(folder / "text"), get_tokenizer("byte"))
    return folder


def run_main(argv, capsys):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def dry_run_summary(argv, capsys):
    status, out, err = run_main(list(argv) + ["--dry_run"], capsys)
    assert status == 0, err
    return json.loads(out.strip().splitlines()[-1]), out


def expect_error(argv, capsys, *fragments):
    status, out, err = run_main(argv, capsys)
    assert status == 2, f"expected a refusal, got status {status}: {out[-2000:]} {err[-2000:]}"
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("train.py: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in last_line, f"{fragment!r} not in {last_line!r}"
    return last_line


# ---- dry-run counts at the released shapes ------------------------------------------------------------------------

def x070_projections(n_embd: int) -> list:
    """(in, out) of the default x070 targets of one layer: att.receptance/key/value/output, ffn.key/value."""
    C, F = n_embd, 4 * n_embd
    return [(C, C)] * 4 + [(C, F), (F, C)]


@pytest.mark.parametrize("size", list(X070_SHAPES))
@pytest.mark.parametrize("method", ["bone", "lora"])
def test_dry_run_counts_for_released_x070_shapes(size, method, capsys):
    n_layer, n_embd = X070_SHAPES[size]
    flags = ["--peft", "bone", "--bone_b", "64"] if method == "bone" else ["--peft", "lora", "--lora_r", "32"]
    summary, out = dry_run_summary(flags + ["--arch", "x070", "--n_layer", n_layer, "--n_embd", n_embd,
                                            "--vocab_size", 65536], capsys)
    if method == "bone":  # Bone-row: a (b, out) block per projection = in * b parameters (b divides in and out)
        expected = sum(i * 64 for _ in range(n_layer) for i, o in x070_projections(n_embd))
    else:  # LoRA: A (r, in) and B (out, r)
        expected = sum(32 * (i + o) for _ in range(n_layer) for i, o in x070_projections(n_embd))
    assert summary["trainable"] == expected
    assert summary["adapted_modules"] == 6 * n_layer
    assert summary["arch"] == "x070" and summary["dim_ffn"] == 4 * n_embd
    assert "RWKV-7 (x070)" in out and "att.gate" not in out and "ffn.receptance" not in out


def test_new_x070_model_gets_the_released_mini_lora_widths():
    from src.train.plan import default_x070_lora_dims

    assert default_x070_lora_dims(768) == (64, 64, 32, 128)
    assert default_x070_lora_dims(1024) == (64, 64, 32, 128)
    assert default_x070_lora_dims(2048) == (96, 96, 64, 256)
    assert default_x070_lora_dims(2560) == (96, 96, 64, 320)
    assert default_x070_lora_dims(4096) == (128, 128, 96, 480)


# ---- planning: the checkpoint decides, --arch is checked -----------------------------------------------------------

def test_generation_is_read_from_the_checkpoint_and_arch_is_checked(tiny, capsys):
    base = ["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth"]
    summary, out = dry_run_summary(base, capsys)
    assert summary["arch"] == "x070" and summary["adapted_modules"] == 12 and "RWKV-7 (x070) L2 D64" in out
    assert dry_run_summary(base + ["--my_testing", "x070"], capsys)[0]["trainable"] == summary["trainable"]
    expect_error(base + ["--arch", "x060"], capsys, "--arch x060 (RWKV6 (x060))", "RWKV-7 (x070) checkpoint")
    expect_error(base + ["--my_testing", "x060"], capsys, "--arch x060", "x070")
    expect_error(base + ["--dim_maa_lora", "32"], capsys, "--dim_maa_lora 32 (RWKV6 only)")
    expect_error(base + ["--n_embd", "128"], capsys, "--n_embd 128 (checkpoint: 64)", "RWKV-7 L2 D64")
    # A target the generation lacks is refused, never skipped.
    expect_error(base + ["--peft_targets", "att.key,att.gate"], capsys, "['att.gate'] match no module",
                 "RWKV-7 (x070)")
    expect_error(base + ["--peft_targets", "ffn.receptance"], capsys, "match no module")


def test_wkv7_op_is_chosen_for_x070_runs(tiny, capsys):
    base = ["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file", tiny / "text",
            "--accelerator", "cpu", "--wkv_op", "cuda"]
    expect_error(base, capsys, "WKV7 op 'cuda' cannot run here")
    expect_error(base + ["--ctx_len", str(2 ** 31)], capsys, f"--ctx_len {2 ** 31}", "cuda WKV7 kernel")


def test_default_targets_and_parts_per_generation():
    model = random_rwkv7(**TINY)
    names = apply_peft(model, BoneConfig(b=16))
    assert names == [f"blocks.{i}.{s}" for i in range(2) for s in
                     ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")]
    assert apply_peft(random_rwkv7(**TINY), LoraConfig(r=4), targets="ffn") == [
        f"blocks.{i}.ffn.{s}" for i in range(2) for s in ("key", "value")]
    with pytest.raises(ValueError, match=r"\['att.gate'\] match no module of this RWKV-7"):
        apply_peft(random_rwkv7(**TINY), LoraConfig(r=4), targets=["att.key", "att.gate"])
    # The w/a/v/g mini-LoRAs are parameters: trainable through train_parts, never adapted.
    model = random_rwkv7(**TINY)
    apply_peft(model, BoneConfig(b=16), train_parts="att.w1,att.w2")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"blocks.0.att.w1", "blocks.1.att.w2"} <= trainable
    assert peft_summary(model)["adapted_modules"] == 12


def test_optimizer_groups_follow_rwkv_lm_for_x070():
    """Full fine-tune: att.w0 at 2x lr; weight decay only on the >= 2-D `.weight` tensors (emb, head, the
    Linears), never on w1..g2, r_k or the vectors. With an adapter, the adapter tensors decay."""
    model = random_rwkv7(**TINY)
    model.requires_grad_(True)
    named = dict(model.named_parameters())
    groups = optimizer_groups(model.named_parameters(), weight_decay=0.1, layerwise_lr=True)
    names = {id(p): n for n, p in named.items()}
    by_key = {(g["my_lr_scale"], g["weight_decay"]): {names[id(p)] for p in g["params"]} for g in groups}
    assert by_key[(2.0, 0.0)] == {f"blocks.{i}.att.w0" for i in range(2)}
    expected_decay = {n for n, p in named.items() if n.endswith(".weight") and p.dim() >= 2}
    assert by_key[(1.0, 0.1)] == expected_decay
    assert {"emb.weight", "head.weight", "blocks.1.att.output.weight", "blocks.0.ffn.value.weight"} <= expected_decay
    assert "blocks.1.att.v1" in by_key[(1.0, 0.0)] and "blocks.0.att.r_k" in by_key[(1.0, 0.0)]
    assert sum(len(v) for v in by_key.values()) == len(named)
    one_lr = optimizer_groups(model.named_parameters(), weight_decay=0.0, layerwise_lr=False)
    assert [g["my_lr_scale"] for g in one_lr] == [1.0]
    adapted = random_rwkv7(**TINY)
    apply_peft(adapted, BoneConfig(b=16), train_parts="att.w0")
    groups = optimizer_groups(adapted.named_parameters(), weight_decay=0.1, layerwise_lr=True)
    adapted_names = {id(p): n for n, p in adapted.named_parameters()}
    decayed = {adapted_names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and all(n.endswith(".bone") for n in decayed)
    assert {adapted_names[id(p)] for g in groups if g["my_lr_scale"] == 2.0 for p in g["params"]} == \
        {"blocks.0.att.w0", "blocks.1.att.w0"}


def test_new_x070_model_from_scratch_uses_the_official_init(tiny, tmp_path):
    from src.train.args import parse_args
    from src.train.plan import build_model, plan_training

    cfg = parse_args([str(a) for a in ["--arch", "x070", "--n_layer", 2, "--n_embd", 64, "--vocab_size", 256,
                                       "--data_file", tiny / "text", "--proj_dir", tmp_path / "p", "--accelerator",
                                       "cpu", "--ctx_len", 16, "--micro_bsz", 2, "--epoch_steps", 2,
                                       "--epoch_count", 1]])
    plan = plan_training(cfg)
    assert plan.wkv_op == "torch" and plan.run_key["arch"] == "x070"
    model, adapted = build_model(plan)
    assert isinstance(model, RWKV7) and adapted == []
    reference = RWKV7(plan.model_config).init_weights(seed=0)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


# ---- train -> merge -> rwkv package, eval, chat ---------------------------------------------------------------------

COMMON = ["--ctx_len", "32", "--micro_bsz", "4", "--num_threads", "1", "--accelerator", "cpu", "--precision", "fp32",
          "--strategy", "deepspeed_stage_2"]


def run(args, timeout=900):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=environment(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def metric_losses(proj_dir):
    with open(Path(proj_dir) / "metrics.csv", newline="") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle)]


@pytest.mark.slow
def test_bone_train_merge_then_package_eval_and_chat(tiny, tmp_path):
    proj = tmp_path / "bone"
    result = run(["train.py", "--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth",
                  "--data_file", tiny / "text", "--epoch_steps", "12", "--epoch_count", "1", "--lr_init", "2e-2",
                  "--lr_final", "5e-3", "--proj_dir", proj, "--seed", "0", *COMMON])
    assert "RWKV-7 (x070) L2 D64" in result.stdout and "wkv op torch" in result.stdout
    losses = metric_losses(proj)
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, f"loss did not go down: {losses}"

    merged = tmp_path / "merged.pth"
    run(["-m", "src.merge", "--base", tiny / "base.pth", "--adapter", proj / "adapter-final.pth",
         "--output", merged])
    base_sd = torch.load(tiny / "base.pth", weights_only=True)
    merged_sd = torch.load(merged, weights_only=True)
    assert {k: (v.shape, v.dtype) for k, v in merged_sd.items()} == {k: (v.shape, v.dtype) for k, v in base_sd.items()}

    tokens = [ord(c) for c in "the cat sat on a mat and ran"]
    adapted = load_rwkv(tiny / "base.pth", wkv_op="torch", dtype=torch.float32).eval()
    load_adapter(adapted, proj / "adapter-final.pth")
    with torch.no_grad():
        expected = adapted(torch.tensor([tokens]))[0]
    (package,) = package_reference([(merged, tokens)], tmp_path)
    error = (package["logits"] - expected).abs().max().item()
    assert error <= 1e-4, f"rwkv package on the merged file vs the adapted model: max |logit diff| {error:.2e}"

    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} plus 1?", "answer": f"#### {a + 1}"}) + "\n"
                            for a in range(3)))
    evaluated = run(["-m", "src.eval.math", "--model", merged, "--data", data, "--format", "gsm8k", "--tokenizer",
                     "byte", "--wkv_op", "torch", "--device", "cpu", "--max_new_tokens", "8", "--batch_size", "2",
                     "--out", tmp_path / "eval.jsonl", "--log_every", "0"])
    records = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert len(records) == 3 and "accuracy" in evaluated.stdout.lower() + evaluated.stderr.lower()

    replies = {}
    for engine in ("native", "rwkv"):
        chat = run(["demo/chat.py", "--model", merged, "--engine", engine, "--temperature", "0", "--max_tokens",
                    "12", "--fresh", "--jsonl", "--prompt", "the cat"])
        replies[engine] = json.loads(chat.stdout.strip().splitlines()[-1])["reply"]
    assert replies["native"] == replies["rwkv"], replies
    in_memory = run(["demo/chat.py", "--base", tiny / "base.pth", "--adapter", proj / "adapter-final.pth",
                     "--engine", "rwkv", "--temperature", "0", "--max_tokens", "12", "--fresh", "--jsonl",
                     "--prompt", "the cat"])
    assert json.loads(in_memory.stdout.strip().splitlines()[-1])["reply"] == replies["rwkv"]


# ---- a SIGKILLed x070 run resumes to the same adapter --------------------------------------------------------------

EPOCH_STEPS, EPOCH_COUNT = 6, 2


def resume_command(tiny, proj_dir):
    return [sys.executable, str(ROOT / "train.py"), "--peft", "bone", "--bone_b", "16", "--load_model",
            str(tiny / "base.pth"), "--data_file", str(tiny / "text.jsonl"), "--data_type", "jsonl", "--proj_dir",
            str(proj_dir), "--ctx_len", "24", "--micro_bsz", "2", "--epoch_steps", str(EPOCH_STEPS),
            "--epoch_count", str(EPOCH_COUNT), "--epoch_save", "1", "--save_every_steps", "1", "--lr_init", "5e-3",
            "--lr_final", "5e-4", "--warmup_steps", "2", "--strategy", "deepspeed_stage_2", "--accelerator", "cpu",
            "--precision", "fp32", "--seed", "11", "--num_threads", "1"]


def latest_point(proj_dir):
    try:
        return json.loads((Path(proj_dir) / "checkpoints" / "latest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.mark.slow
def test_sigkilled_x070_run_resumes_to_the_same_adapter(tiny, tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(resume_command(tiny, reference), cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(resume_command(tiny, interrupted), cwd=ROOT, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while True:
            point = latest_point(interrupted)
            if point is not None and point["step"] >= EPOCH_STEPS + 1:  # inside the second epoch
                break
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_at = latest_point(interrupted)
    assert killed_at["step"] < EPOCH_COUNT * EPOCH_STEPS and not (interrupted / "adapter-final.pth").exists()

    resumed = subprocess.run(resume_command(tiny, interrupted), cwd=ROOT, env=environment(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming checkpoints/step-{killed_at['step']:08d}" in resumed.stdout
    expected = torch.load(reference / "adapter-final.pth", weights_only=True)["tensors"]
    got = torch.load(interrupted / "adapter-final.pth", weights_only=True)["tensors"]
    assert set(got) == set(expected) and len(got) == 12
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert any(t.abs().max() > 0 for t in got.values()), "the adapter never trained"
