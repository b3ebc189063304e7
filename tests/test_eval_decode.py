"""Batched greedy decoding (src/eval/decode.py) against two independent references on a tiny random RWKV6,
and the evaluation CLI (src/eval/math.py) end to end.

Decoding references:

- one prompt at a time, fed token by token through the recurrent state, written here as a plain loop;
- repeated full-sequence forward: the next token is the argmax of model(prompt + generated so far)[-1].

Prompts have different lengths (the no-padding staircase prefill), and there are more prompts than the batch
size (finished sequences leave, waiting prompts join). Stopping on the eod token, on a stop string and on the
token limit is checked against the reference continuation.

End to end: a hand-built "chain" model whose answer is known in advance (it writes a fixed string, then eod)
answers small GSM8K- and MATH-format files written here; the printed accuracy must equal the per-item file's
mean, and the items must be scored as worked out by hand. Base + adapter merged in memory must answer exactly
like the merged file `python -m src.merge` writes.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import src.eval.math as eval_cli
from src.checkpoint.io import load_rwkv, save_official
from src.data import get_tokenizer
from src.eval.decode import DecodeConfig, greedy_generate, prefill, template_stop_strings
from src.merge import merge_files
from src.model import RWKV6
from src.peft import BoneConfig, apply_peft, save_adapter
from tests.rwkv_fixtures import random_rwkv6, write_random_checkpoint

MAX_NEW = 12
PROMPT_LENGTHS = [5, 1, 9, 5, 3, 12, 7]


@pytest.fixture(scope="module")
def model():
    return random_rwkv6(n_layer=2, n_embd=64, vocab_size=256, seed=7, wkv_op="torch").eval()


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(3)
    # ids 1..255: the prompts themselves never contain the eod id 0
    return [torch.randint(1, 256, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def stepwise_greedy(model, prompt, n_tokens):
    """Reference 1: feed the prompt one token at a time through the state, then keep stepping (no stopping)."""
    state, logits = None, None
    with torch.no_grad():
        for token in prompt:
            logits, state = model(torch.tensor([[token]]), state=state, return_state=True)
        generated = []
        for _ in range(n_tokens):
            token = int(logits[0, -1].argmax())
            generated.append(token)
            logits, state = model(torch.tensor([[token]]), state=state, return_state=True)
    return generated


def full_forward_greedy(model, prompt, n_tokens):
    """Reference 2: recompute the whole sequence for every new token, no state carried at all."""
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(n_tokens):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    return sequence[len(prompt):]


@pytest.fixture(scope="module")
def references(model, prompts):
    return [stepwise_greedy(model, prompt, MAX_NEW) for prompt in prompts]


def no_stop_config(**overrides):
    settings = dict(max_new_tokens=MAX_NEW, batch_size=3, eod_id=None, stop_strings=(), prefill_tokens=8192)
    settings.update(overrides)
    return DecodeConfig(**settings)


def test_references_agree(model, prompts, references):
    # the two references are independent ways of running the same model; they must agree with each other
    for prompt, stepwise in zip(prompts, references):
        assert full_forward_greedy(model, prompt, MAX_NEW) == stepwise


@pytest.mark.parametrize("batch_size, prefill_tokens", [(1, 8192), (3, 8192), (16, 8192), (4, 5)])
def test_batched_equals_one_at_a_time(model, prompts, references, batch_size, prefill_tokens):
    # prefill_tokens=5 splits the prompt phase into many short time chunks
    tokenizer = get_tokenizer("byte")
    generations = greedy_generate(model, prompts, tokenizer,
                                  no_stop_config(batch_size=batch_size, prefill_tokens=prefill_tokens))
    for generation, expected in zip(generations, references):
        assert generation.tokens == expected
        assert generation.finish_reason == "length"
        assert generation.text == tokenizer.decode(expected)


def test_prefill_matches_single_prompt_runs(model, prompts):
    logits, state = prefill(model, prompts, prefill_tokens=7)
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            expected_logits, expected_state = model(torch.tensor([prompt]), return_state=True)
        torch.testing.assert_close(logits[row], expected_logits[0, -1], rtol=1e-4, atol=1e-5)
        for layer, expected_layer in zip(state, expected_state):
            for tensor, expected in zip(layer, expected_layer):
                torch.testing.assert_close(tensor[row], expected[0], rtol=1e-4, atol=1e-5)


def test_stops_on_eod_token(model, prompts, references):
    # pretend that the token each prompt generates 4th is the end-of-document id: decoding must end just
    # before the first time that id comes up, and leave it out of the output
    tokenizer = get_tokenizer("byte")
    for prompt, expected in zip(prompts, references):
        eod = expected[3]
        generation = greedy_generate(model, [prompt], tokenizer, no_stop_config(eod_id=eod))[0]
        assert generation.tokens == expected[:expected.index(eod)]
        assert generation.finish_reason == "eod"


def test_stops_on_stop_string(model, prompts, references):
    # a stop string made of generated tokens 3..4: the text ends before it, the tokens run through its end
    tokenizer = get_tokenizer("byte")
    for prompt, expected in zip(prompts, references):
        stop = bytes(expected[2:4]).decode("latin-1")
        if any(b >= 128 for b in expected[2:4]):
            continue  # a non-ASCII byte pair is not one UTF-8 string
        generation = greedy_generate(model, [prompt], tokenizer, no_stop_config(stop_strings=(stop,)))[0]
        first = next(i for i in range(len(expected) - 1) if expected[i:i + 2] == expected[2:4])
        assert generation.finish_reason == "stop"
        assert generation.tokens == expected[:first + 2]
        assert generation.text == tokenizer.decode(expected[:first])


def expected_finish(reference, eod, stops):
    """Where one sequence ends by the rules (eod first, then stop strings, then the limit), on its reference."""
    text = b""
    for step, token in enumerate(reference):
        if token == eod:
            return reference[:step], "eod"
        text += bytes([token])
        if any(stop in text for stop in stops):
            return reference[:step + 1], "stop"
    return reference, "length"


def test_stop_conditions_mixed_in_one_batch(model, prompts, references):
    # sequences of one batch end at different steps for different reasons, so rows leave the batch and waiting
    # prompts join while others are still running: each must still match its own stand-alone reference
    tokenizer = get_tokenizer("byte")
    eod = references[0][5]
    stops = []
    for index, reference in enumerate(references[1:-1], start=1):  # the last one is left to run to the limit
        pairs = [reference[k:k + 2] for k in range(len(reference) - 1)]
        ascii_pairs = [pair for pair in pairs if all(0 < token < 128 for token in pair)]
        if ascii_pairs:  # a different position in each sequence, so they stop at different steps
            stops.append(bytes(ascii_pairs[index % len(ascii_pairs)]).decode("ascii"))
    config = no_stop_config(batch_size=4, eod_id=eod, stop_strings=tuple(stops))
    generations = greedy_generate(model, prompts, tokenizer, config)
    outcomes = [expected_finish(reference, eod, [stop.encode() for stop in stops]) for reference in references]
    assert len({len(tokens) for tokens, _ in outcomes}) >= 3, "the case should end sequences at several steps"
    assert {reason for _, reason in outcomes} == {"eod", "stop", "length"}
    for generation, (tokens, reason) in zip(generations, outcomes):
        assert (generation.tokens, generation.finish_reason) == (tokens, reason)


def test_progress_and_bad_input(model, prompts):
    tokenizer = get_tokenizer("byte")
    seen = []
    greedy_generate(model, prompts, tokenizer, no_stop_config(max_new_tokens=2),
                    progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i + 1, len(prompts)) for i in range(len(prompts))]
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        greedy_generate(model, [[5], []], tokenizer, no_stop_config())
    with pytest.raises(ValueError, match="max_new_tokens"):
        DecodeConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="template"):
        template_stop_strings("chatml")
    assert template_stop_strings("rwkv") == ("\n\nUser:",)


# ------------------------------------------------------------------------------------- end to end: the CLI
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"(gsm8k|math) accuracy (\d+\.\d\d)% \((\d+)/(\d+) correct\), "
                     r"95% Wilson CI \[(\d+\.\d\d)%, (\d+\.\d\d)%\]; .* ([\d.]+) questions/s")


def chain_model(chain: str) -> RWKV6:
    """A tiny byte-vocabulary RWKV6 that, after the first character of `chain`, writes the rest of it and then
    the eod token: its blocks add nothing (attention and FFN outputs zeroed), so the logits depend on the
    current token only, and the head maps each character of the chain to the next."""
    assert len(set(chain)) == len(chain), "each character may appear once (it alone decides the next)"
    model = random_rwkv6(n_layer=2, n_embd=64, vocab_size=256, seed=5)
    with torch.no_grad():
        for block in model.blocks:
            block.att.output.weight.zero_()
            block.ffn.value.weight.zero_()
        features = model.ln_out(model.blocks[0].ln0(model.emb.weight))  # [vocab, C]: what the head sees
        head = torch.zeros_like(model.head.weight)
        ids = list(chain.encode())
        for current, following in zip(ids, ids[1:] + [0]):
            head[following] = 20 * features[current] / features[current].square().sum()
        model.head.weight.copy_(head)
    return model.eval()


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def parse_summary(stdout):
    lines = [m for m in map(SUMMARY.search, stdout.splitlines()) if m]
    assert len(lines) == 1, stdout
    fmt, percent, correct, total, low, high, speed = lines[0].groups()
    return {"format": fmt, "percent": float(percent), "correct": int(correct), "total": int(total),
            "low": float(low), "high": float(high), "questions_per_second": float(speed)}


def read_results(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


GSM8K_ITEMS = [  # the chain model answers " 7" to every question
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "What is 10 - 3?", "answer": "#### 7"},
    {"question": "What is 2 * 4?", "answer": "2 * 4 = 8\n#### 8"},
    {"question": "How many grams?", "answer": "#### 1,234"},
    {"question": "Half of 14?", "answer": "#### 7.0"},
]


@pytest.fixture(scope="module")
def gsm8k_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_gsm8k")
    model = chain_model(": 7")  # the rwkv prompt ends with "Assistant:"
    save_official(model, folder / "chain.pth")
    write_jsonl(folder / "gsm8k.jsonl", GSM8K_ITEMS)
    return folder


def test_chain_model_writes_its_chain(gsm8k_case):
    model = load_rwkv(gsm8k_case / "chain.pth", wkv_op="torch")
    tokenizer = get_tokenizer("byte")
    prompt = tokenizer.encode("User: anything\n\nAssistant:")
    assert stepwise_greedy(model, prompt, 3) == [ord(" "), ord("7"), 0]


def test_cli_accuracy_equals_per_item_mean(gsm8k_case, capsys):
    out = gsm8k_case / "results.jsonl"
    code = eval_cli.main(["--model", str(gsm8k_case / "chain.pth"), "--data", str(gsm8k_case / "gsm8k.jsonl"),
                          "--format", "gsm8k", "--tokenizer", "byte", "--wkv_op", "torch", "--device", "cpu",
                          "--batch_size", "2", "--max_new_tokens", "16", "--out", str(out)])
    assert code == 0
    summary = parse_summary(capsys.readouterr().out)
    records = read_results(out)
    correct = [record["correct"] for record in records]
    assert summary["total"] == len(records) == len(GSM8K_ITEMS)
    assert summary["correct"] == sum(correct)
    assert summary["percent"] == pytest.approx(100 * sum(correct) / len(correct), abs=0.005)
    # and the items are scored as the hand check says: " 7" is right for 7 and 7.0 only
    assert correct == [True, True, False, False, True]
    assert [r["generated"] for r in records] == [" 7"] * 5
    assert [r["extracted"] for r in records] == ["7"] * 5
    assert [r["reference"] for r in records] == ["7", "7", "8", "1234", "7"]
    assert {r["finish_reason"] for r in records} == {"eod"}
    assert [r["question"] for r in records] == [item["question"] for item in GSM8K_ITEMS]
    assert summary["low"] < summary["percent"] < summary["high"]


def test_cli_math_format_with_alpaca_template(tmp_path, capsys):
    model = chain_model("\n\\boxed{7}")  # the alpaca prompt ends with "### Response:\n"
    save_official(model, tmp_path / "chain.pth")
    write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "Compute 3+4.", "solution": "We add: $3+4=\\boxed{7}$."},
        {"query": "Compute 14/2.", "response": "Halve it. The answer is $\\boxed{\\frac{14}{2}}$"},
        {"instruction": "Seven?", "output": "$\\boxed{7}$"},
        {"problem": "Compute 8.", "solution": "$\\boxed{8}$"},
    ])
    out = tmp_path / "results.jsonl"
    code = eval_cli.main(["--model", str(tmp_path / "chain.pth"), "--data", str(tmp_path / "math.jsonl"),
                          "--format", "math", "--template", "alpaca", "--tokenizer", "byte", "--wkv_op", "torch",
                          "--device", "cpu", "--max_new_tokens", "20", "--out", str(out), "--limit", "3"])
    assert code == 0
    summary = parse_summary(capsys.readouterr().out)
    records = read_results(out)
    assert [r["generated"] for r in records] == ["\\boxed{7}"] * 3
    assert [r["correct"] for r in records] == [True, False, True]
    assert (summary["correct"], summary["total"]) == (2, 3)


def test_cli_base_plus_adapter_equals_merged_file(tmp_path, capsys):
    # random base and a Bone adapter with random values: in-memory merge and src.merge's file must answer alike
    base = tmp_path / "base.pth"
    write_random_checkpoint(base, n_layer=2, n_embd=64, vocab_size=256, seed=9)
    model = load_rwkv(base, wkv_op="torch")
    apply_peft(model, BoneConfig(b=16))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    adapter = save_adapter(model, tmp_path / "adapter.pth")
    merged = tmp_path / "merged.pth"
    merge_files(base, adapter, merged)
    write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ITEMS[:3])
    common = ["--data", str(tmp_path / "gsm8k.jsonl"), "--format", "gsm8k", "--tokenizer", "byte",
              "--wkv_op", "torch", "--device", "cpu", "--max_new_tokens", "8"]
    generated = {}
    for name, source in [("merged", ["--model", str(merged)]), ("base", ["--model", str(base)]),
                         ("adapter", ["--base", str(base), "--adapter", str(adapter)])]:
        assert eval_cli.main(source + common + ["--out", str(tmp_path / f"{name}.jsonl")]) == 0
        generated[name] = [r["generated"] for r in read_results(tmp_path / f"{name}.jsonl")]
    capsys.readouterr()
    assert generated["adapter"] == generated["merged"]
    assert generated["adapter"] != generated["base"]  # the adapter does change the answers


def test_cli_refuses_bad_input(tmp_path, capsys, gsm8k_case):
    model = ["--model", str(gsm8k_case / "chain.pth"), "--tokenizer", "byte", "--wkv_op", "torch", "--device", "cpu"]
    write_jsonl(tmp_path / "no_marker.jsonl", [{"question": "q", "answer": "seven"}])
    write_jsonl(tmp_path / "no_question.jsonl", [{"prompt": "q", "answer": "#### 7"}])
    cases = [
        (["--data", str(tmp_path / "missing.jsonl")], "not found"),
        (["--data", str(tmp_path / "no_marker.jsonl")], "record 1: the solution has no reference answer"),
        (["--data", str(tmp_path / "no_question.jsonl")], "no question field"),
        (["--data", str(gsm8k_case / "gsm8k.jsonl"), "--adapter", "a.pth"], "--adapter goes with --base"),
    ]
    for extra, message in cases:
        assert eval_cli.main(model + ["--format", "gsm8k"] + extra) == 2
        assert message in capsys.readouterr().err
    # a world-vocabulary tokenizer does not fit a 256-id model
    assert eval_cli.main(model[:2] + ["--tokenizer", "world", "--wkv_op", "torch", "--device", "cpu", "--format",
                                      "gsm8k", "--data", str(gsm8k_case / "gsm8k.jsonl")]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_module_entry_point_and_launchers(gsm8k_case):
    completed = subprocess.run(
        [sys.executable, "-m", "src.eval.math", "--model", str(gsm8k_case / "chain.pth"), "--data",
         str(gsm8k_case / "gsm8k.jsonl"), "--format", "gsm8k", "--tokenizer", "byte", "--wkv_op", "torch",
         "--device", "cpu", "--max_new_tokens", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    summary = parse_summary(completed.stdout)
    assert (summary["correct"], summary["total"]) == (3, 5)
    for script in ("eval.sh",):  # FORMAT=gsm8k|math
        checked = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


# ---------------------------------------------------------------------------------- inputs, outputs, bad values
@pytest.fixture(scope="module")
def merge_case(tmp_path_factory):
    """A random base and a Bone adapter with random values, as the files merge and the evaluator read."""
    folder = tmp_path_factory.mktemp("merge_case")
    base = folder / "base.pth"
    write_random_checkpoint(base, n_layer=2, n_embd=64, vocab_size=256, seed=9)
    model = load_rwkv(base, wkv_op="torch")
    apply_peft(model, BoneConfig(b=16))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.fill_(0.01)
    adapter = save_adapter(model, folder / "adapter.pth")
    write_jsonl(folder / "gsm8k.jsonl", GSM8K_ITEMS[:2])
    return folder, base, adapter


def run_merge(argv, capsys):
    from src.merge import main as merge_main

    status = merge_main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_merge_refuses_an_output_that_is_an_input(merge_case, capsys):
    folder, base, adapter = merge_case
    before = {path: path.read_bytes() for path in (base, adapter)}
    os.link(base, folder / "base-hardlink.pth")
    os.symlink(adapter, folder / "adapter-symlink.pth")
    for output, flag in [(base, "--base"), (adapter, "--adapter"), (folder / "base-hardlink.pth", "--base"),
                         (folder / "adapter-symlink.pth", "--adapter")]:
        status, err = run_merge(["--base", base, "--adapter", adapter, "--output", output], capsys)
        assert status == 2, err
        assert err.startswith("merge failed: --output") and flag in err and "would destroy the input" in err
    (folder / "a-folder.pth").mkdir()
    status, err = run_merge(["--base", base, "--adapter", adapter, "--output", folder / "a-folder.pth"], capsys)
    assert status == 2 and "is an existing directory" in err and "Traceback" not in err
    assert {path: path.read_bytes() for path in (base, adapter)} == before


def test_non_finite_weights_are_refused_naming_the_tensor(merge_case, tmp_path, capsys):
    folder, base, adapter = merge_case
    broken = dict(torch.load(base, weights_only=True))
    broken["blocks.1.att.key.weight"] = broken["blocks.1.att.key.weight"].clone()
    broken["blocks.1.att.key.weight"][0, 3] = float("nan")
    torch.save(broken, tmp_path / "nan-base.pth")
    payload = torch.load(adapter, weights_only=True)
    name = next(iter(payload["tensors"]))
    payload["tensors"][name] = payload["tensors"][name].clone().fill_(float("inf"))
    torch.save(payload, tmp_path / "inf-adapter.pth")
    huge = dict(torch.load(base, weights_only=True))
    huge["emb.weight"] = huge["emb.weight"] * 1e30  # finite in fp32, beyond fp16
    torch.save(huge, tmp_path / "huge-base.pth")

    status, err = run_merge(["--base", tmp_path / "nan-base.pth", "--adapter", adapter, "--output",
                             tmp_path / "m.pth"], capsys)
    assert status == 2 and "tensor blocks.1.att.key.weight holds 1 non-finite value" in err
    status, err = run_merge(["--base", base, "--adapter", tmp_path / "inf-adapter.pth", "--output",
                             tmp_path / "m.pth"], capsys)
    assert status == 2 and f"--adapter {tmp_path / 'inf-adapter.pth'}: tensor {name} holds" in err
    status, err = run_merge(["--base", tmp_path / "huge-base.pth", "--adapter", adapter, "--output",
                             tmp_path / "m.pth", "--dtype", "fp16"], capsys)
    assert status == 2 and "the merged model" in err and "tensor emb.weight" in err
    assert not (tmp_path / "m.pth").exists()

    common = ["--data", str(folder / "gsm8k.jsonl"), "--format", "gsm8k", "--tokenizer", "byte", "--wkv_op", "torch",
              "--device", "cpu", "--max_new_tokens", "4"]
    assert eval_cli.main(["--model", str(tmp_path / "nan-base.pth")] + common) == 2
    assert "tensor blocks.1.att.key.weight holds 1 non-finite value" in capsys.readouterr().err
    assert eval_cli.main(["--base", str(base), "--adapter", str(tmp_path / "inf-adapter.pth")] + common) == 2
    assert f"tensor {name} holds" in capsys.readouterr().err


def test_eval_refuses_overwriting_inputs_and_a_zero_token_limit(merge_case, capsys):
    folder, base, adapter = merge_case
    data = folder / "gsm8k.jsonl"
    before = {path: path.read_bytes() for path in (base, adapter, data)}
    common = ["--format", "gsm8k", "--tokenizer", "byte", "--wkv_op", "torch", "--device", "cpu",
              "--max_new_tokens", "4"]
    os.link(data, folder / "data-link.jsonl")
    for source, out, flag in [(["--model", base], data, "--data"), (["--model", base], base, "--model"),
                              (["--base", base, "--adapter", adapter], adapter, "--adapter"),
                              (["--base", base, "--adapter", adapter], base, "--base"),
                              (["--model", base], folder / "data-link.jsonl", "--data")]:
        status = eval_cli.main([str(a) for a in source] + ["--data", str(data), "--out", str(out)] + common)
        err = capsys.readouterr().err
        assert status == 2 and "evaluation failed: --out" in err and flag in err and "destroy the input" in err
    assert eval_cli.main(["--model", str(base), "--data", str(data), "--out", str(folder)] + common) == 2
    assert "is an existing directory" in capsys.readouterr().err
    for limit in ("0", "-3"):
        assert eval_cli.main(["--model", str(base), "--data", str(data)] + common + ["--max_new_tokens", limit]) == 2
        assert f"--max_new_tokens must be a positive number of tokens, got {limit}" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in (base, adapter, data)} == before


def test_eval_names_the_line_of_a_non_utf8_byte(merge_case, tmp_path, capsys):
    folder, base, _ = merge_case
    lines = [json.dumps(item).encode() for item in GSM8K_ITEMS[:3]]
    lines[1] = lines[1].replace(b"What", b"Wh\xe4t")  # latin-1, not UTF-8
    (tmp_path / "latin1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert eval_cli.main(["--model", str(base), "--data", str(tmp_path / "latin1.jsonl"), "--format", "gsm8k",
                          "--tokenizer", "byte", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'latin1.jsonl'} line 2: byte 0xe4 at column" in err and "not UTF-8" in err
