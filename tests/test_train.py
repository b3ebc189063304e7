"""train.py end to end on a tiny byte-level RWKV6 (CPU), and the loss / lr / optimizer pieces against formulas.

The two DeepSpeed tests run the real engine (ZeRO stage 2, gloo): one process on binidx data, two processes on
jsonl SFT data. Everything else uses the single-device strategy or no trainer at all, to keep CI fast.
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

from src.checkpoint.io import load_rwkv
from src.data import DataConfig, build_dataset, get_tokenizer, render_sft_prompt
from src.data.make_binidx import convert
from src.model import RWKV6
from src.peft import adapter_state_dict, load_adapter, read_adapter
from src.train.module import L2Wrap, masked_cross_entropy, optimizer_groups
from src.train.schedule import LRSchedule
from tests.rwkv_fixtures import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--ctx_len", "32", "--micro_bsz", "4", "--num_threads", "1", "--accelerator", "cpu", "--precision", "fp32",
          "--seed", "0"]
WORDS = "the cat sat on a mat and then ran to the red house where two dogs slept by the warm fire".split()


def environment():
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_train(args, timeout=900, observed=False):
    """train.py with `args`; observed=True runs it through tests/train_observed.py, which also saves each rank's
    final trainable tensors as PROJ_DIR/rank{R}-trainable.pt."""
    command = [sys.executable, "-m", "tests.train_observed"] if observed else [sys.executable, str(ROOT / "train.py")]
    result = subprocess.run([*command, *map(str, args)], cwd=ROOT, env=environment(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random L2 D64 vocab-256 base checkpoint, text data as binidx, and arithmetic SFT data as jsonl."""
    folder = tmp_path_factory.mktemp("tiny")
    write_random_checkpoint(folder / "base.pth", n_layer=2, n_embd=64, vocab_size=256, seed=5)
    with open(folder / "text.jsonl", "w", encoding="utf-8") as handle:
        for i in range(120):
            words = [WORDS[(i * 3 + j * 5) % len(WORDS)] for j in range(6 + i % 17)]
            handle.write(json.dumps({"text": " ".join(words)}) + "\n")
    convert(str(folder / "text.jsonl"), str(folder / "text"), get_tokenizer("byte"))
    with open(folder / "sft.jsonl", "w", encoding="utf-8") as handle:
        for i in range(120):
            a, b = i % 9 + 1, (i * 7) % 9 + 1
            handle.write(json.dumps({"query": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."})
                         + "\n")
    return folder


def metric_rows(proj_dir):
    with open(Path(proj_dir) / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_loss_went_down(rows):
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, f"loss did not go down: first steps {losses[:3]}, last steps {losses[-3:]}"


def reload_adapter(base, path):
    """A fresh base model with the saved adapter applied by load_adapter."""
    model = load_rwkv(base, wkv_op="torch")
    meta = load_adapter(model, path)
    return model, meta


def assert_outputs_written(proj_dir, stdout, final_name):
    proj_dir = Path(proj_dir)
    assert (proj_dir / final_name).is_file()
    assert (proj_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((proj_dir / "checkpoints" / "latest.json").read_text())["step"] == len(metric_rows(proj_dir))
    assert "trainable " in stdout and "engine    " in stdout  # start summary
    assert f"final     {proj_dir.resolve() / final_name}" in stdout  # end summary names the files


def test_bone_deepspeed_stage2_one_process_binidx(tiny, tmp_path):
    proj = tmp_path / "bone-ds1"
    result = run_train([
        "--peft", "bone", "--bone_b", "16", "--bone_impl", "materialize", "--grad_cp", "bone",
        "--load_model", tiny / "base.pth",
        "--data_file", tiny / "text", "--data_type", "binidx", "--epoch_steps", "10", "--epoch_count", "2",
        "--epoch_save", "1", "--lr_init", "2e-2", "--lr_final", "5e-3", "--strategy", "deepspeed_stage_2",
        "--proj_dir", proj, *COMMON,
    ], observed=True)
    assert "deepspeed_stage_2" in result.stdout
    rows = metric_rows(proj)
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    for row in rows:  # the lr reaches DeepSpeed's optimizer groups (the losses would differ otherwise)
        assert float(row["lr"]) == pytest.approx(reference_lr(int(row["step"]) - 1, 2e-2, 5e-3, 20, 0, "exp"),
                                                 rel=1e-5)
    assert_loss_went_down(rows)
    assert_outputs_written(proj, result.stdout, "adapter-final.pth")
    assert (proj / "adapter-0.pth").is_file() and (proj / "adapter-1.pth").is_file()

    model, meta = reload_adapter(tiny / "base.pth", proj / "adapter-final.pth")
    assert meta["config"] == {"method": "bone", "b": 16, "grouping": "row", "form": "affine",
                              "impl": "materialize", "checkpoint": True}
    live = torch.load(proj / "rank0-trainable.pt", weights_only=True)  # the weights the engine ended with
    loaded = adapter_state_dict(model)
    assert set(loaded) == set(live) and len(loaded) == 16
    for name, tensor in live.items():
        assert torch.equal(loaded[name], tensor), name
    base = load_rwkv(tiny / "base.pth", wkv_op="torch")
    ids = torch.tensor([list(b"the cat sat on the mat")])
    with torch.no_grad():
        assert not torch.allclose(model(ids), base(ids)), "the loaded adapter changes nothing"


def test_bone_deepspeed_stage2_two_processes_sft_identical_adapters(tiny, tmp_path):
    proj = tmp_path / "bone-ds2"
    result = run_train([
        "--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file", tiny / "sft.jsonl",
        "--data_type", "sft", "--epoch_steps", "8", "--epoch_count", "2", "--epoch_save", "0",
        "--lr_init", "2e-2", "--lr_final", "5e-3", "--strategy", "deepspeed_stage_2", "--devices", "2",
        "--proj_dir", proj, *COMMON,
    ], observed=True)
    for fragment in ("x 2 process(es)", "2 device(s) x 1 node(s)", "loss_mask qa"):
        assert fragment in result.stdout
    rank0 = torch.load(proj / "rank0-trainable.pt", weights_only=True)
    rank1 = torch.load(proj / "rank1-trainable.pt", weights_only=True)
    assert set(rank0) == set(rank1) and len(rank0) == 16
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    assert any(t.abs().max() > 0 for t in rank0.values())
    saved = read_adapter(proj / "adapter-final.pth")["tensors"]
    for name in rank0:
        assert torch.equal(saved[name], rank0[name]), name
    rows = metric_rows(proj)
    assert len(rows) == 16
    assert_loss_went_down(rows)
    assert_outputs_written(proj, result.stdout, "adapter-final.pth")
    reload_adapter(tiny / "base.pth", proj / "adapter-final.pth")


def reference_lr(step, lr_init, lr_final, total, warmup, kind):
    """The schedule written out directly: warmup factor, then exp or cos over the steps after warmup."""
    span = total - 1 - warmup
    p = min(1.0, max(0.0, (step - warmup) / span))
    if lr_init == lr_final:
        lr = lr_init
    elif kind == "cos":
        lr = lr_final + 0.5 * (lr_init - lr_final) * (1 + math.cos(math.pi * p))
    elif lr_final == 0:
        lr = lr_init * (1 - p)
    else:
        lr = lr_init * (lr_final / lr_init) ** p
    if step < warmup:
        lr = lr * (0.2 + 0.8 * step / warmup)
    return lr


def test_full_finetune_of_new_model_saves_official_checkpoint(tiny, tmp_path):
    """--peft none without --load_model: official init, every weight trains, rwkv-*.pth in the official layout;
    single device, gradient accumulation 2, cosine lr with warmup checked step by step, layer checkpointing."""
    proj = tmp_path / "full"
    result = run_train([
        "--peft", "none", "--n_layer", "2", "--n_embd", "64", "--vocab_size", "256", "--data_file", tiny / "text",
        "--epoch_steps", "8", "--epoch_count", "3", "--epoch_save", "2", "--accumulate_grad_batches", "2",
        "--lr_init", "4e-3", "--lr_final", "1e-3", "--lr_schedule", "cos", "--warmup_steps", "3",
        "--grad_cp", "1", "--strategy", "auto", "--proj_dir", proj, *COMMON,
    ])
    assert "full fine-tune" in result.stdout and "grad_cp layer" in result.stdout
    rows = metric_rows(proj)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))  # 8 micro-batches / 2 per step x 3 epochs
    for row in rows:  # the lr used by optimizer step s (1-based) is the schedule at s - 1 steps taken
        expected = reference_lr(int(row["step"]) - 1, 4e-3, 1e-3, 12, 3, "cos")
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-5)
    assert_loss_went_down(rows)
    assert_outputs_written(proj, result.stdout, "rwkv-final.pth")
    assert sorted(p.name for p in proj.glob("rwkv-*.pth")) == ["rwkv-0.pth", "rwkv-2.pth", "rwkv-final.pth"]

    trained = load_rwkv(proj / "rwkv-final.pth", wkv_op="torch")  # strict: every key and shape
    fresh = RWKV6(trained.config).init_weights(seed=0)
    assert set(trained.state_dict()) == set(fresh.state_dict())
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, fresh.state_dict()[k])]
    assert "head.weight" in changed and "blocks.1.ffn.value.weight" in changed


def test_lr_schedule_against_formula():
    cases = [(6e-4, 1e-5, 100, 0, "exp"), (6e-4, 1e-5, 100, 10, "exp"), (1e-3, 1e-4, 50, 5, "cos"),
             (2e-5, 2e-5, 30, 0, "exp"), (1e-3, 0.0, 40, 4, "exp"), (1e-3, 0.0, 40, 0, "cos")]
    for lr_init, lr_final, total, warmup, kind in cases:
        schedule = LRSchedule(lr_init, lr_final, total, warmup, kind)
        for step in range(total):
            assert schedule.lr_at(step) == pytest.approx(reference_lr(step, lr_init, lr_final, total, warmup, kind),
                                                         rel=1e-12, abs=1e-15)
    exp = LRSchedule(1e-3, 1e-5, 11, 0, "exp")
    assert exp.lr_at(0) == pytest.approx(1e-3) and exp.lr_at(5) == pytest.approx(1e-4) and exp.lr_at(10) == \
        pytest.approx(1e-5)
    cos = LRSchedule(1e-3, 1e-4, 11, 0, "cos")
    assert cos.lr_at(5) == pytest.approx(5.5e-4)
    warm = LRSchedule(1e-3, 1e-3, 10, 4, "exp")
    assert [warm.lr_at(s) for s in range(5)] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])

    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "my_lr_scale": 2.0},
                                   {"params": [torch.nn.Parameter(torch.zeros(2))], "my_lr_scale": 1.0}], lr=1.0)
    lr = exp.apply(optimizer, 5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2 * lr, lr])


def test_masked_sft_loss_equals_hand_computed(tmp_path):
    tokenizer = get_tokenizer("byte")
    query, response = "What is 2 plus 3?", "2 plus 3 is 5."
    (tmp_path / "one.jsonl").write_text(json.dumps({"query": query, "response": response}) + "\n")
    cfg = DataConfig(data_file=str(tmp_path / "one.jsonl"), data_type="sft", ctx_len=64, micro_bsz=1, epoch_steps=1,
                     dataload="pad", loss_mask="qa")
    dataset = build_dataset(cfg, tokenizer=tokenizer)
    dataset.set_epoch(0)
    sample = dataset[0]
    prompt_length = len(render_sft_prompt(query).encode())
    document_length = prompt_length + len((" " + response).encode()) + 1  # + the end-of-document token
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 64, 256, generator=generator) * 3
    got = masked_cross_entropy(logits, sample["targets"][None], sample["loss_mask"][None])

    # By hand: target t is token t + 1; only response tokens (and the eod) count, padding never does.
    total, count = 0.0, 0
    for t in range(64):
        if not prompt_length <= t + 1 < document_length:
            continue
        row = [float(x) for x in logits[0, t]]
        largest = max(row)
        log_normaliser = largest + math.log(sum(math.exp(x - largest) for x in row))
        total += log_normaliser - row[int(sample["targets"][t])]
        count += 1
    assert count == len(response) + 2  # the space before it, the response, and the eod
    assert float(got) == pytest.approx(total / count, rel=1e-5)

    empty = masked_cross_entropy(logits, sample["targets"][None], torch.zeros(1, 64))
    assert float(empty) == 0.0  # a window with no reply contributes nothing (no division by zero)


def test_l2wrap_adds_rwkv_logit_penalty_gradient():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5), generator=generator)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    wrapped = L2Wrap.apply(loss, logits)
    assert float(wrapped.detach()) == float(loss.detach())
    (3.0 * wrapped).backward()
    got = logits.grad.clone()

    # Reference: the same loss plus 1e-4 * mean over positions of max_logit^2 / 2, differentiated by autograd.
    reference = logits.detach().clone().requires_grad_(True)
    plain = torch.nn.functional.cross_entropy(reference.reshape(-1, 11), targets.reshape(-1))
    penalty = 1e-4 * (reference.max(dim=-1).values ** 2 / 2).mean()
    (3.0 * (plain + penalty)).backward()
    torch.testing.assert_close(got, reference.grad, rtol=1e-10, atol=1e-12)


def test_optimizer_groups_follow_rwkv_rules():
    model = torch.nn.Module()
    model.time_decay = torch.nn.Parameter(torch.zeros(1, 1, 4))
    model.time_decay_w1 = torch.nn.Parameter(torch.zeros(4, 2))
    model.bone = torch.nn.Parameter(torch.zeros(2, 2, 2))
    model.ln = torch.nn.Parameter(torch.zeros(4))
    model.head = torch.nn.Parameter(torch.zeros(3, 4))
    model.frozen = torch.nn.Parameter(torch.zeros(4, 4), requires_grad=False)
    groups = optimizer_groups(model.named_parameters(), weight_decay=0.1, layerwise_lr=True)
    shapes = {(g["my_lr_scale"], g["weight_decay"]): sorted(tuple(p.shape) for p in g["params"]) for g in groups}
    assert shapes == {(2.0, 0.0): [(1, 1, 4)], (1.0, 0.1): [(2, 2, 2), (3, 4)], (1.0, 0.0): [(4,), (4, 2)]}
    flat = optimizer_groups(model.named_parameters(), weight_decay=0.0, layerwise_lr=False)
    assert len(flat) == 1 and len(flat[0]["params"]) == 5


def test_non_finite_loss_goes_back_to_the_known_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    import src.train.module as module
    from src.train.launch import main

    real = module.masked_cross_entropy
    calls = []

    def poisoned(logits, targets, mask):
        calls.append(1)
        loss = real(logits, targets, mask)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(module, "masked_cross_entropy", poisoned)
    for name in ("OMP_NUM_THREADS", "DS_ACCELERATOR", "PL_GLOBAL_SEED"):  # main() sets them: give them back
        monkeypatch.setenv(name, "unset-by-test")
        monkeypatch.delenv(name)
    threads = torch.get_num_threads()
    proj = tmp_path / "nan"
    try:
        status = main([
            "--peft", "lora", "--lora_r", "4", "--load_model", str(tiny / "base.pth"), "--data_file",
            str(tiny / "text"), "--epoch_steps", "6", "--epoch_count", "1", "--save_every_steps", "1",
            "--strategy", "auto", "--proj_dir", str(proj), *COMMON,
        ])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert status == 3
    assert "loss became nan at optimizer step 3" in err
    # Checkpoint 2 holds the weights the bad loss was computed from: the known-good one is step 1, whose weights
    # gave step 2 a finite loss. The run goes back to it and says how to continue with other settings.
    assert f"the last known-good checkpoint is {proj / 'checkpoints' / 'step-00000001'} (step 1" in err
    assert "step-00000002" in err and "--change_on_resume lr_init,lr_final" in err
    assert json.loads((proj / "checkpoints" / "latest.json").read_text())["step"] == 1
    assert sorted(p.name for p in (proj / "checkpoints").glob("step-*")) == ["step-00000001"]
    assert not list(proj.glob("adapter-*.pth"))
    assert len(metric_rows(proj)) == 2

    # The same command with a lower lr is refused without --change_on_resume, and continues from step 1 with it.
    monkeypatch.setattr(module, "masked_cross_entropy", real)
    again = ["--peft", "lora", "--lora_r", "4", "--load_model", str(tiny / "base.pth"), "--data_file",
             str(tiny / "text"), "--epoch_steps", "6", "--epoch_count", "1", "--save_every_steps", "1",
             "--strategy", "auto", "--proj_dir", str(proj), *COMMON, "--lr_init", "1e-4"]
    try:
        assert main(again) == 2
        assert "lr_init: checkpoint 0.0006, now 0.0001" in capsys.readouterr().err
        assert main(again + ["--change_on_resume", "lr_init"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "resuming checkpoints/step-00000001" in capsys.readouterr().out
    assert [int(r["step"]) for r in metric_rows(proj)] == list(range(1, 7))
    assert (proj / "adapter-final.pth").is_file()


def test_metrics_history_survives_a_kill_during_the_resume_rewrite(tmp_path, monkeypatch):
    """On resume metrics.csv is cut back to the checkpoint's step; the cut is written beside the file and renamed
    over it, so a kill during the rewrite (here: before the rename) leaves the whole history."""
    import types

    import src.checkpoint.files as files
    from src.train.metrics import ProgressTracker

    header = "step,epoch,batch,loss,lr,tokens,kt_s,peak_mem_gb,elapsed_s\n"
    rows = "".join(f"{s},0,{s},{5 - s / 10},0.001,{32 * s},1.0,0.5,{s}\n" for s in range(1, 9))
    (tmp_path / "metrics.csv").write_text(header + rows)
    trainer = types.SimpleNamespace(strategy=types.SimpleNamespace(root_device=torch.device("cpu")),
                                    is_global_zero=True)
    tracker = ProgressTracker(tmp_path, tokens_per_step=32, accumulate=1, resume_step=5, use_tensorboard=False)

    def killed(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        tracker.on_train_start(trainer, None)
    assert (tmp_path / "metrics.csv").read_text() == header + rows
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind
    monkeypatch.undo()
    tracker.on_train_start(trainer, None)
    tracker.close()
    assert [int(r["step"]) for r in metric_rows(tmp_path)] == [1, 2, 3, 4, 5]
