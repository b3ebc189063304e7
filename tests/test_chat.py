"""demo/chat.py and demo/sampling.py: non-interactive replies, merged vs in-memory merge, rwkv vs native engine.

The model is a tiny random RWKV6 with a byte vocabulary plus a Bone adapter with random values, merged by the
project's merge command. References are independent of the chat code: the `rwkv` pip package driven by a
plain greedy loop written here, and closed-form sampling distributions.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from demo.sampling import Sampler, SamplingConfig, penalty_exempt_ids
from src.checkpoint.io import load_rwkv
from src.data import get_tokenizer, render_sft_prompt
from src.peft import BoneConfig, apply_peft, save_adapter
from tests.rwkv_fixtures import rwkv_package_model, write_random_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """base.pth (random, byte vocab), adapter.pth (Bone b=64, random values), merged.pth (python -m src.merge)."""
    folder = tmp_path_factory.mktemp("chat")
    base = folder / "base.pth"
    write_random_checkpoint(base, n_layer=2, n_embd=128, vocab_size=256, seed=3)
    model = load_rwkv(base, wkv_op="torch", dtype=torch.float32)
    apply_peft(model, BoneConfig(b=64))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # the Bone blocks (zero at init): give them values so the merge matters
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    adapter = save_adapter(model, folder / "adapter.pth")
    merged = folder / "merged.pth"
    subprocess.run([sys.executable, "-m", "src.merge", "--base", str(base), "--adapter", str(adapter),
                    "--output", str(merged)], cwd=ROOT, check=True, capture_output=True)
    return {"base": base, "adapter": adapter, "merged": merged}


def run_chat(*args, stdin=None):
    completed = subprocess.run([sys.executable, os.path.join(ROOT, "demo", "chat.py"), *map(str, args)],
                               cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=300)
    return completed


def chat_replies(*args, stdin=None):
    completed = run_chat(*args, "--jsonl", "--max_tokens", MAX_TOKENS, stdin=stdin)
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in completed.stdout.splitlines()]


SAMPLED = ["--temperature", "1.0", "--top_p", "0.9", "--presence_penalty", "0.3", "--frequency_penalty", "0.3",
           "--seed", "5"]


# ----------------------------------------------------------------------------------------------- sampling


def test_greedy_takes_argmax_and_eod_is_banned_only_at_the_start():
    logits = torch.tensor([5.0, 1.0, 3.0, 2.0])
    sampler = Sampler(SamplingConfig(temperature=0, presence_penalty=0, frequency_penalty=0), 4, seed=0)
    assert sampler.sample(logits) == 2  # id 0 is the end-of-document token, banned on the first step
    sampler.observe(2)
    assert sampler.sample(logits) == 0


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([0.05, 0.5, 0.3, 0.15], dtype=torch.float64)
    config = SamplingConfig(temperature=1.0, top_p=0.7, presence_penalty=0, frequency_penalty=0, ban_eod_steps=0)
    sampler = Sampler(config, 4, seed=1)
    draws = torch.tensor([sampler.sample(probs.log()) for _ in range(6000)])
    counts = torch.bincount(draws, minlength=4).double() / len(draws)
    # 0.5 + 0.3 reaches 0.7: tokens 1 and 2, renormalised to 0.625 / 0.375; 0 and 3 never.
    assert counts[0] == 0 and counts[3] == 0
    assert abs(counts[1] - 0.625) < 0.03 and abs(counts[2] - 0.375) < 0.03


def test_temperature_flattens_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    config = SamplingConfig(temperature=2.0, top_p=1.0, presence_penalty=0, frequency_penalty=0, ban_eod_steps=0)
    sampler = Sampler(config, 3, seed=2)
    draws = torch.tensor([sampler.sample(probs.log()) for _ in range(6000)])
    freq = torch.bincount(draws, minlength=3).double() / len(draws)
    expected = probs.sqrt() / probs.sqrt().sum()  # p^(1/T), renormalised
    assert torch.allclose(freq, expected, atol=0.03)


def test_presence_and_frequency_penalties_decay():
    config = SamplingConfig(temperature=0, presence_penalty=0.4, frequency_penalty=0.25, penalty_decay=0.5,
                            ban_eod_steps=0)
    sampler = Sampler(config, 5, seed=0, exempt_ids=[4])
    logits = torch.zeros(5)
    for token in (1, 1, 2, 4):
        sampler.observe(token)
    # counts after decaying before each new observation: token 1: (1*0.5 + 1)*0.5*0.5, token 2: 1*0.5
    count_1 = (1 * 0.5 + 1) * 0.5 * 0.5
    count_2 = 0.5
    adjusted = sampler.adjusted_logits(logits)
    assert math.isclose(adjusted[1], -(0.4 + 0.25 * count_1))
    assert math.isclose(adjusted[2], -(0.4 + 0.25 * count_2))
    assert adjusted[0] == 0 and adjusted[3] == 0 and adjusted[4] == 0  # never seen / exempt
    sampler.start_reply()
    assert torch.equal(sampler.adjusted_logits(logits), torch.zeros(5, dtype=torch.float64))


def test_digits_and_whitespace_are_exempt_from_penalties():
    exempt = set(penalty_exempt_ids(get_tokenizer("byte")))
    assert {ord(c) for c in "0123456789 \n\t"} <= exempt
    assert ord("a") not in exempt and ord(".") not in exempt and 0 not in exempt


def test_same_seed_same_draws():
    config = SamplingConfig(temperature=1.0, top_p=1.0, presence_penalty=0, frequency_penalty=0)
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    a, b, c = Sampler(config, 50, seed=9), Sampler(config, 50, seed=9), Sampler(config, 50, seed=10)
    seq_a = [a.sample(logits) for _ in range(40)]
    assert seq_a == [b.sample(logits) for _ in range(40)]
    assert seq_a != [c.sample(logits) for _ in range(40)]


def test_bad_sampling_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)


# ----------------------------------------------------------------------------------------------- chat


def reference_greedy_conversation(model_path, prompts, max_tokens):
    """Greedy replies of a conversation computed with the `rwkv` package alone (the chat's turn rules)."""
    model = rwkv_package_model(model_path)
    byte = get_tokenizer("byte")
    state, replies = None, []
    for prompt in prompts:
        logits, state = model.forward(byte.encode(render_sft_prompt(prompt)), state)
        generated = []
        separator_seen = False
        while len(generated) < max_tokens:
            logits = logits.clone()
            if not generated:
                logits[0] = -float("inf")
            token = int(torch.argmax(logits))
            if token == 0:
                break
            generated.append(token)
            logits, state = model.forward([token], state)
            if b"\n\n" in bytes(generated):
                separator_seen = True
                break
        if not separator_seen:
            logits, state = model.forward(list(b"\n\n"), state)
        replies.append(bytes(generated).decode("utf-8", errors="replace").split("\n\n")[0].strip())
    return replies


def test_non_interactive_mode_answers_prompts_and_stdin(tiny):
    by_flag = chat_replies("--model", tiny["merged"], "--prompt", "Hello", "--prompt", "What is 2 + 3?", *SAMPLED)
    assert [r["prompt"] for r in by_flag] == ["Hello", "What is 2 + 3?"]
    assert all(r["reply"] for r in by_flag)
    by_stdin = chat_replies("--model", tiny["merged"], *SAMPLED, stdin="Hello\n\nWhat is 2 + 3?\n")
    assert by_stdin == by_flag
    transcript = run_chat("--model", tiny["merged"], "--prompt", "Hello", "--max_tokens", 8)
    assert transcript.returncode == 0 and transcript.stdout.startswith("User: Hello\n\nAssistant: ")


def test_merged_file_and_in_memory_merge_give_identical_replies(tiny):
    prompts = ["--prompt", "Tom has 3 apples.", "--prompt", "How many now?"]
    for engine in ("native", "rwkv"):
        merged = chat_replies("--model", tiny["merged"], "--engine", engine, *prompts, *SAMPLED)
        in_memory = chat_replies("--base", tiny["base"], "--adapter", tiny["adapter"], "--engine", engine,
                                 *prompts, *SAMPLED)
        assert merged == in_memory
        base_only = chat_replies("--model", tiny["base"], "--engine", engine, *prompts, *SAMPLED)
        assert base_only != merged  # the adapter changes the model: the comparison above is not vacuous


def test_rwkv_package_and_native_engine_sample_the_same_replies(tiny):
    prompts = ["--prompt", "Hi there", "--prompt", "Tell me more."]
    native = chat_replies("--model", tiny["merged"], "--engine", "native", *prompts, *SAMPLED)
    package = chat_replies("--model", tiny["merged"], "--engine", "rwkv", *prompts, *SAMPLED)
    assert native == package
    other_seed = chat_replies("--model", tiny["merged"], "--engine", "native", *prompts, *SAMPLED[:-1], "6")
    assert other_seed != native  # replies really are sampled


def test_state_is_kept_between_turns_like_the_reference_conversation(tiny):
    prompts = ["Hello", "And then?"]
    greedy = ["--temperature", "0", "--presence_penalty", "0", "--frequency_penalty", "0"]
    args = [a for p in prompts for a in ("--prompt", p)]
    expected = reference_greedy_conversation(tiny["merged"], prompts, MAX_TOKENS)
    for engine in ("native", "rwkv"):
        replies = chat_replies("--model", tiny["merged"], "--engine", engine, *args, *greedy)
        assert [r["reply"] for r in replies] == expected
    fresh = chat_replies("--model", tiny["merged"], *args, *greedy, "--fresh")
    alone = reference_greedy_conversation(tiny["merged"], prompts[1:], MAX_TOKENS)
    assert fresh[1]["reply"] == alone[0]


def test_clear_errors(tiny, tmp_path):
    missing = run_chat("--model", tmp_path / "nope.pth", "--prompt", "hi")
    assert missing.returncode == 2 and "not found" in missing.stderr
    half = run_chat("--base", tiny["base"], "--prompt", "hi")
    assert half.returncode != 0 and "--adapter" in half.stderr
    both = run_chat("--model", tiny["merged"], "--base", tiny["base"], "--adapter", tiny["adapter"])
    assert both.returncode != 0 and "not both" in both.stderr
    world_on_bytes = run_chat("--model", tiny["merged"], "--tokenizer", "world", "--prompt", "hi")
    assert world_on_bytes.returncode == 2 and "--tokenizer byte" in world_on_bytes.stderr


def test_non_finite_weights_are_refused_naming_the_tensor(tiny, tmp_path):
    broken = dict(torch.load(tiny["merged"], weights_only=True))
    broken["head.weight"] = broken["head.weight"].clone()
    broken["head.weight"][5] = float("inf")
    torch.save(broken, tmp_path / "inf.pth")
    refused = run_chat("--model", tmp_path / "inf.pth", "--prompt", "hi")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"--model {tmp_path / 'inf.pth'}: tensor head.weight holds 128 non-finite value(s)" in refused.stderr
    payload = torch.load(tiny["adapter"], weights_only=True)
    name = sorted(payload["tensors"])[0]
    payload["tensors"][name] = payload["tensors"][name].clone().fill_(float("nan"))
    torch.save(payload, tmp_path / "nan-adapter.pth")
    refused = run_chat("--base", tiny["base"], "--adapter", tmp_path / "nan-adapter.pth", "--prompt", "hi")
    assert refused.returncode == 2 and f"tensor {name} holds" in refused.stderr
