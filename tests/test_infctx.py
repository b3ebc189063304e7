"""Exact long-context training (--chunk_ctx, src/train/infctx.py) and state tuning (--peft state, src/peft/state.py).

The reference for the chunked loss and gradient is one pass over the whole sequence, in float64; the reference for
the state-file layout is the `rwkv` package reading it (RWKV6: from the .pth as it loads time_state; RWKV-7: the
file's [head, value, key] tensors put into its state list, the layout its WKV state has).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from demo.chat import main as chat_main
from src.data import get_tokenizer, render_sft_prompt
from src.eval.math import main as eval_main
from src.model import RWKV6
from src.peft import (
    BoneConfig,
    LoraConfig,
    MissConfig,
    PissaConfig,
    apply_peft,
    apply_state_tuning,
    initial_state_for,
    load_state_for,
    read_state_file,
    save_state,
    time_states,
)
from src.train.infctx import chunked_loss
from src.train.launch import main as train_main
from src.train.loss import L2Wrap, masked_cross_entropy
from tests.rwkv7_fixtures import package_reference, random_rwkv7
from tests.rwkv_fixtures import random_rwkv6, rwkv_package_model

ROOT = Path(__file__).resolve().parents[1]
T, CHUNK = 23, 8  # three chunks: 8, 8 and a ragged 7
ADAPTERS = {
    "bone-factored": BoneConfig(b=16, impl="factored"),
    "bone-materialize": BoneConfig(b=16, impl="materialize"),
    "lora": LoraConfig(r=4, alpha=8.0),
    "pissa": PissaConfig(r=4),
    "miss": MissConfig(r=16),
    "state": None,
}


def tiny_model(generation, seed=0):
    if generation == "x060":
        return random_rwkv6(n_layer=2, n_embd=64, vocab_size=256, dim_maa_lora=8, dim_decay_lora=8, seed=seed)
    return random_rwkv7(n_layer=2, n_embd=64, vocab_size=256, head_size=32, dim_w_lora=8, dim_a_lora=8,
                        dim_v_lora=8, dim_g_lora=8, seed=seed)


def sft_batch():
    """Two rows whose supervised spans (the answers) cross the chunk boundaries at 8 and 16."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (2, T), generator=generator)
    targets = torch.randint(0, 256, (2, T), generator=generator)
    mask = torch.zeros(2, T, dtype=torch.float64)
    mask[0, 5:14] = 1
    mask[1, 12:] = 1
    return ids, targets, mask


def gradients(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("generation", ["x060", "x070"])
@pytest.mark.parametrize("method", list(ADAPTERS))
def test_chunked_loss_and_gradient_equal_the_single_pass(generation, method):
    torch.manual_seed(0)
    model = tiny_model(generation).double()
    if ADAPTERS[method] is None:
        apply_state_tuning(model)
    else:
        apply_peft(model, ADAPTERS[method])
    with torch.no_grad():  # adapters start at zero (Bone, LoRA's B, the states): move them so every path counts
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.2)
    model.train()
    ids, targets, mask = sft_batch()

    def single():
        logits = model(ids, state=initial_state_for(model, 2))
        return L2Wrap.apply(masked_cross_entropy(logits, targets, mask), logits)

    expected_loss, expected = gradients(model, single)
    # Layer checkpointing nested in the chunk checkpoints for half the cases (--grad_cp layer with --chunk_ctx).
    model.config.layer_checkpointing = method in ("bone-factored", "lora", "miss")
    loss, got = gradients(model, lambda: chunked_loss(model, ids, targets, mask, CHUNK, initial_state_for(model, 2)))
    assert abs(float(loss - expected_loss)) < 1e-12
    assert set(got) == set(expected) and len(got) >= 2
    for name in expected:
        scale = float(expected[name].abs().max())
        assert scale > 0, f"{name}: zero gradient, the test would prove nothing"
        assert float((got[name] - expected[name]).abs().max()) <= 1e-10 * scale, name


def test_chunk_loss_is_the_sample_mean_not_a_mean_of_chunk_means():
    model = tiny_model("x060").double()
    ids, targets, mask = sft_batch()
    with torch.no_grad():
        logits = model(ids)
        token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1),
                                                       reduction="none").view(2, T)
        by_hand = float((token_loss * mask).sum() / mask.sum())  # 21 supervised tokens
        chunk_means = [float((token_loss * mask)[:, s:s + CHUNK].sum() / mask[:, s:s + CHUNK].sum())
                       for s in range(0, T, CHUNK)]
        chunked = float(chunked_loss(model, ids, targets, mask, CHUNK))
    assert abs(chunked - by_hand) < 1e-12
    assert abs(sum(chunk_means) / len(chunk_means) - by_hand) > 1e-3


def random_time_states(model, seed=7):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in time_states(model).values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))


def test_rwkv6_state_file_gives_the_rwkv_package_logits(tmp_path):
    model = random_rwkv6(n_layer=2, n_embd=128, vocab_size=256, seed=4).eval()  # 2 heads of 64
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_state_tuning(model)
    random_time_states(model)
    path = save_state(model, tmp_path / "state-final.pth")
    saved = torch.load(path, weights_only=True)
    assert sorted(saved) == ["blocks.0.att.time_state", "blocks.1.att.time_state"]
    assert all(t.shape == (2, 64, 64) and t.dtype == torch.float32 for t in saved.values())
    # The package reads time_state from the model file itself (with its own transpose) as its initial state.
    torch.save(dict(base, **saved), tmp_path / "with-state.pth")
    package = rwkv_package_model(tmp_path / "with-state.pth")
    tokens = [5, 80, 13, 200, 7, 7, 41, 99, 3]
    expected, _ = package.forward(tokens, None, full_output=True)

    fresh = random_rwkv6(n_layer=2, n_embd=128, vocab_size=256, seed=4).eval()
    with torch.no_grad():
        ours = fresh(torch.tensor([tokens]), state=load_state_for(fresh, path))[0]
        untransposed = fresh(torch.tensor([tokens]), state=[(None, t.unsqueeze(0), None) for t in saved.values()])[0]
        zero = fresh(torch.tensor([tokens]))[0]
    error = float((ours - expected).abs().max())
    assert error < 2e-4, error
    assert float((untransposed - expected).abs().max()) > 100 * error  # the transpose matters and is right
    assert float((zero - expected).abs().max()) > 100 * error  # and the state matters


def test_rwkv7_state_file_gives_the_rwkv_package_logits(tmp_path):
    kwargs = dict(n_layer=2, n_embd=128, vocab_size=256, head_size=64, seed=4)
    model = random_rwkv7(**kwargs).eval()
    torch.save(model.state_dict(), tmp_path / "base.pth")
    apply_state_tuning(model)
    random_time_states(model)
    path = save_state(model, tmp_path / "state-final.pth")
    tokens = [5, 80, 13, 200, 7, 7, 41, 99, 3]
    (run,) = package_reference([(tmp_path / "base.pth", tokens, path)], tmp_path)

    fresh = random_rwkv7(**kwargs).eval()
    with torch.no_grad():
        ours = fresh(torch.tensor([tokens]), state=load_state_for(fresh, path))[0]
        zero = fresh(torch.tensor([tokens]))[0]
    error = float((ours - run["logits"]).abs().max())
    assert error < 2e-4, error
    assert float((zero - run["logits"]).abs().max()) > 100 * error


def test_a_state_file_of_another_shape_is_refused(tmp_path):
    model = tiny_model("x070")
    apply_state_tuning(model)
    path = save_state(model, tmp_path / "x070.pth")  # 2 heads of 32
    other = tiny_model("x060")  # 1 head of 64
    with pytest.raises(ValueError, match=r"another shape .*needs \[1, 64, 64\] per layer"):
        load_state_for(other, path)
    with pytest.raises(ValueError, match="does not fit this 3-layer model"):
        read_state_file(path, n_layer=3, n_head=2, head_size=32)


def fail_line(capsys, argv):
    status = train_main(argv)
    return status, capsys.readouterr().err.strip().splitlines()[-1]


SHAPE = ["--n_layer", "2", "--n_embd", "64", "--vocab_size", "256", "--dry_run"]


@pytest.mark.parametrize("chunk, ctx", [("40", "32"), ("0", "32"), ("-8", "32")])
def test_bad_chunk_ctx_is_refused(capsys, chunk, ctx):
    status, line = fail_line(capsys, [*SHAPE, "--ctx_len", ctx, "--chunk_ctx", chunk])
    assert status == 2
    assert line == (f"train.py: error: --chunk_ctx must be between 1 and --ctx_len {ctx}, got {chunk}; leave it "
                    f"out to train each sample in one pass")


@pytest.mark.parametrize("flags, named", [(["--bone_b", "32"], "--bone_b"),
                                          (["--lora_config", '{"r": 8}'], "--lora_config"),
                                          (["--train_parts", "ln"], "--train_parts"),
                                          (["--peft_targets", "att"], "--peft_targets"),
                                          (["--strategy", "deepspeed_stage_3"], "ZeRO-3")])
def test_state_tuning_with_adapter_flags_is_refused(capsys, flags, named):
    status, line = fail_line(capsys, [*SHAPE, "--peft", "state", *flags])
    assert status == 2 and line.startswith("train.py: error: --peft state ") and named in line
    if named != "ZeRO-3":
        assert f"trains only the initial WKV states (every weight frozen), but {named} sets adapter settings" in line


@pytest.mark.parametrize("arch, heads, size", [("x060", 1, 64), ("x070", 2, 32)])
def test_dry_run_counts_the_states(capsys, arch, heads, size):
    assert train_main([*SHAPE, "--peft", "state", "--arch", arch, "--head_size_a", str(size),
                       "--chunk_ctx", "256"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["trainable"] == summary["time_state"] == 2 * heads * size * size
    assert summary["chunk_ctx"] == 256
    assert f"state     2 x [{heads}, {size}, {size}] time_state = {2 * heads * size * size:,} trainable" in out


# ---- through train.py -------------------------------------------------------------------------------------------

COMMON = ["--micro_bsz", "2", "--num_threads", "1", "--accelerator", "cpu", "--precision", "fp32", "--seed", "0",
          "--epoch_count", "1", "--save_every_steps", "0", "--epoch_save", "0", "--data_type", "sft"]


def write_sft(path, rows):
    with open(path, "w", encoding="utf-8") as handle:
        for query, response in rows:
            handle.write(json.dumps({"query": query, "response": response}) + "\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("infctx")
    torch.save(random_rwkv6(n_layer=2, n_embd=64, vocab_size=256, dim_maa_lora=8, dim_decay_lora=8,
                            seed=5).state_dict(), folder / "base.pth")
    write_sft(folder / "sft.jsonl", [(f"What is {i % 9 + 1} plus {i * 7 % 9 + 1}?",
                                      f"It is {i % 9 + 1 + i * 7 % 9 + 1}.") for i in range(40)])
    return folder


def run_train(args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result


def test_training_in_chunks_reaches_the_single_pass_adapter(tiny, tmp_path):
    """Bone, fp32, DeepSpeed ZeRO stage 2, 4 steps on SFT samples of 40 tokens: with --chunk_ctx 16 (chunks 16, 16,
    8, with layer checkpointing nested) the adapter equals the one-pass adapter to float32 rounding."""
    adapters = {}
    for name, extra in (("one-pass", []), ("chunked", ["--chunk_ctx", "16", "--grad_cp", "layer"])):
        proj = tmp_path / name
        result = run_train(["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file",
                            tiny / "sft.jsonl", "--ctx_len", "40", "--epoch_steps", "4", "--lr_init", "1e-2",
                            "--lr_final", "1e-2", "--strategy", "deepspeed_stage_2", "--proj_dir", proj, *COMMON,
                            *extra])
        if extra:
            assert "in chunks of 16 tokens, state carried" in result.stdout
        adapters[name] = torch.load(proj / "adapter-final.pth", weights_only=True)["tensors"]
    one, chunked = adapters["one-pass"], adapters["chunked"]
    assert set(one) == set(chunked) and len(one) == 16
    moved = max(float(t.abs().max()) for t in one.values())
    assert moved > 1e-3  # 4 steps at lr 1e-2 moved the blocks
    difference = max(float((one[n] - chunked[n]).abs().max()) for n in one)
    assert difference < 2e-4 * moved, difference  # measured 1.5e-6 of 0.04 (fp32 rounding, amplified by Adam)


def greedy_reply(model, prompt_ids, state, length):
    ids, out = list(prompt_ids), []
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]), state=state, return_state=True)
        for _ in range(length):
            token = int(logits[0, -1].argmax())
            out.append(token)
            logits, state = model(torch.tensor([[token]]), state=state, return_state=True)
    return bytes(out).decode("latin-1")


def test_state_tuning_teaches_the_toy_answer(tiny, tmp_path, capsys):
    """Every answer of the toy task is "zebra": the tuned state (trained in chunks) makes it the greedy reply to an
    unseen question, which the untuned model does not give; the evaluator and chat --state serve the same reply."""
    write_sft(tmp_path / "zebra.jsonl", [(f"Name {i}?", "zebra") for i in range(30)])
    # The launcher variables main() sets are given back by conftest's autouse fixture.
    threads = torch.get_num_threads()
    proj = tmp_path / "state"
    try:
        status = train_main(["--peft", "state", "--load_model", str(tiny / "base.pth"), "--data_file",
                             str(tmp_path / "zebra.jsonl"), "--ctx_len", "32", "--chunk_ctx", "12", "--epoch_steps",
                             "40", "--dataload", "pad", "--lr_init", "1.0", "--lr_final", "0.2", "--strategy", "auto",
                             "--proj_dir", str(proj), *COMMON])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert status == 0
    assert "state tuning" in out and f"--state {proj / 'state-final.pth'}" in out
    base = torch.load(tiny / "base.pth", weights_only=True)
    model = RWKV6.from_state_dict(base, wkv_op="torch").eval()
    prompt = get_tokenizer("byte").encode(render_sft_prompt("Name 77?", "rwkv"))
    tuned = greedy_reply(model, prompt, load_state_for(model, proj / "state-final.pth"), 6)
    untuned = greedy_reply(model, prompt, None, 6)
    assert tuned.strip().startswith("zebra"), tuned
    assert not untuned.strip().startswith("zeb"), untuned

    # The evaluator's batched decoding (prompts of different lengths, src/eval/decode.py) starts from the state too.
    questions = tmp_path / "questions.jsonl"
    with open(questions, "w", encoding="utf-8") as handle:
        for query in ("Name 77?", "Name 123456?"):
            handle.write(json.dumps({"question": query, "answer": "#### 1"}) + "\n")
    records = tmp_path / "records.jsonl"
    assert eval_main(["--model", str(tiny / "base.pth"), "--state", str(proj / "state-final.pth"), "--data",
                      str(questions), "--format", "gsm8k", "--tokenizer", "byte", "--device", "cpu",
                      "--max_new_tokens", "6", "--out", str(records), "--log_every", "0"]) == 0
    generated = [json.loads(line)["generated"] for line in records.read_text().splitlines()]
    longer = get_tokenizer("byte").encode(render_sft_prompt("Name 123456?", "rwkv"))
    expected = [greedy_reply(model, p, load_state_for(model, proj / "state-final.pth"), 6) for p in (prompt, longer)]
    assert generated == [e.split("\x00")[0] for e in expected], (generated, expected)

    assert chat_main(["--model", str(tiny / "base.pth"), "--state", str(proj / "state-final.pth"), "--prompt",
                      "Name 77?", "--temperature", "0", "--max_tokens", "8", "--jsonl"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reply"].startswith("zebra")
    other = tmp_path / "other.pth"
    torch.save({f"blocks.{i}.att.time_state": torch.zeros(2, 32, 32) for i in range(2)}, other)
    assert chat_main(["--model", str(tiny / "base.pth"), "--state", str(other), "--prompt", "Hi"]) == 2
    assert "has states of another shape" in capsys.readouterr().err
