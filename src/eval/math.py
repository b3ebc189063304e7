"""GSM8K / MATH accuracy of an RWKV6 model by greedy decoding, scored as MetaMath's evaluation scores it.

    python -m src.eval.math --model merged.pth --data GSM8K_test.jsonl --format gsm8k --out gsm8k.jsonl
    python -m src.eval.math --base base.pth --adapter out/adapter-final.pth --data MATH_test.jsonl --format math

Input: JSON Lines (or one JSON array) of records. The question is the first present of "question", "problem",
"query", "instruction"; the reference solution the first present of "answer", "response", "output", "solution"
for --format gsm8k (GSM8K's {"question", "answer"}, MetaMath's {"query", "response"}) and of "solution",
"response", "output", "answer" for --format math (MATH's {"problem", "solution"}, MetaMath's {"instruction",
"output"}). The reference answer is extracted as src/eval/answers.py describes; a record without one is an error.

Each question is rendered with the training prompt template (--template, src.data.render_sft_prompt) and
answered greedily (src/eval/decode.py). Printed: accuracy with its 95% Wilson score interval, and questions/s of
the decoding. --out writes one JSON line per question: index, question, reference, generated, extracted,
correct, finish_reason, generated_tokens.

Refused before the model loads, with one `evaluation failed: ...` line and exit status 2: an --out that is one of
the inputs (--data, --model, --base, --adapter; hard and symbolic links included) or a directory, a
--max_new_tokens below 1, data that is not UTF-8 JSON (file and line named), and weights holding NaN or infinity
(the tensor named). A disk that fills while --out is written exits with status 4 after printing the summary (an
existing --out is unchanged). A crash exits with status 1.
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from src.checkpoint.files import DiskFullError, check_output_file, refuse_overwriting_inputs, write_text_atomic
from src.checkpoint.io import check_finite_tensors, load_for_inference, read_checkpoint
from src.data import EOD_ID, get_tokenizer, render_sft_prompt
from src.eval.answers import FORMATS, answers_equal, extract_prediction, extract_reference
from src.eval.decode import DecodeConfig, greedy_generate, template_stop_strings
from src.model import DTYPES
from src.ops import WKV_REQUESTS
from src.peft import load_state_for, read_adapter
from src.peft.merged import serving_weights

QUESTION_FIELDS = ("question", "problem", "query", "instruction")
SOLUTION_FIELDS = {
    "gsm8k": ("answer", "response", "output", "solution"),
    "math": ("solution", "response", "output", "answer"),
}
DEFAULT_MAX_NEW_TOKENS = {"gsm8k": 512, "math": 2048}  # MetaMath's evaluation limits
Z_95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval


@dataclass
class EvalItem:
    """One question: its text, its reference solution, and the reference answer extracted from that."""

    question: str
    solution: str
    reference: str


@dataclass
class EvalResult:
    """Per-question records (dicts as written to --out) and the decoding time."""

    records: list
    seconds: float

    @property
    def n_correct(self) -> int:
        return sum(record["correct"] for record in self.records)

    @property
    def accuracy(self) -> float:
        return self.n_correct / len(self.records)

    @property
    def questions_per_second(self) -> float:
        return len(self.records) / self.seconds if self.seconds > 0 else float("inf")


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple:
    """(low, high) of the Wilson score interval for a binomial proportion successes/total."""
    if total <= 0 or not 0 <= successes <= total:
        raise ValueError(f"wilson_interval needs 0 <= successes <= total and total > 0, got {successes}/{total}")
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # at 0 or all successes the bound is exactly 0 or 1; the formula can miss that by a rounding error
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == total else min(1.0, centre + half_width)
    return low, high


def _read_records(path) -> list:
    """[(line number, dict)] from a JSON Lines file or a file holding one JSON array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"evaluation data file not found: {path}")
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(f"{path} line {line}: byte 0x{raw[error.start]:02x} at column {column} is not UTF-8; "
                         f"save the file as UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            return [(index + 1, record) for index, record in enumerate(json.loads(text))]
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: not valid JSON ({error}); "
                                 "expected one JSON object a line") from None
    return records


def _first_field(record, fields, what, location):
    if not isinstance(record, dict):
        raise ValueError(f"{location}: expected a JSON object, got {type(record).__name__}")
    for name in fields:
        if isinstance(record.get(name), str):
            return record[name]
    raise ValueError(f"{location}: no {what} field; expected one of {', '.join(repr(f) for f in fields)} "
                     f"(found {', '.join(repr(k) for k in record) or 'none'})")


def load_items(path, answer_format: str, limit: Optional[int] = None) -> list:
    """The first `limit` (all if None) questions of a GSM8K- or MATH-format file, as EvalItems."""
    if answer_format not in FORMATS:
        raise ValueError(f"unknown --format {answer_format!r}; choose one of {', '.join(FORMATS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of questions, got {limit}")
    records = _read_records(path)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{path} holds no questions")
    items = []
    for number, record in records:
        location = f"{path} record {number}"
        question = _first_field(record, QUESTION_FIELDS, "question", location)
        solution = _first_field(record, SOLUTION_FIELDS[answer_format], "solution", location)
        reference = extract_reference(answer_format, solution)
        if reference is None:
            expected = "'#### <number>'" if answer_format == "gsm8k" else "a \\boxed{...} answer"
            raise ValueError(f"{location}: the solution has no reference answer ({expected} expected for "
                             f"--format {answer_format}); is --format right?")
        items.append(EvalItem(question=question, solution=solution, reference=reference))
    return items


def load_model(model_path=None, base_path=None, adapter_path=None, wkv_op="auto", device="cpu", dtype=None):
    """A merged RWKV6 (model_path), or a base with its adapter merged in memory (base_path + adapter_path), in
    eval mode on `device` with `dtype` (None: fp32). The in-memory merge gives the same weights as
    `python -m src.merge` followed by loading its output. Weights holding NaN or infinity are refused
    (ValueError naming the tensor)."""
    if base_path is not None and model_path is None:
        check_finite_tensors(read_checkpoint(base_path), f"--base {base_path}")
        if adapter_path is not None:
            check_finite_tensors(read_adapter(adapter_path)["tensors"], f"--adapter {adapter_path}")
    weights = serving_weights(model_path, base_path, adapter_path)
    check_finite_tensors(weights, f"--model {model_path}" if model_path else "the merged model (--base + --adapter)")
    return load_for_inference(weights, wkv_op, torch.device(device), dtype or torch.float32,
                              report=lambda note: print(note, file=sys.stderr))


def evaluate(model, tokenizer, items, answer_format: str, template: str, decode_config: DecodeConfig,
             progress=None, initial_state=None) -> EvalResult:
    """Answer every item greedily and score it; `progress(n_done, n_total)` is called as answers finish.
    initial_state: the one-row state every question starts from (a state-tuned one, --state), None: zeros."""
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary "
                         f"has {model.config.vocab_size}; pick the tokenizer the model was trained with (--tokenizer)")
    prompts = [tokenizer.encode(render_sft_prompt(item.question, template)) for item in items]
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    generations = greedy_generate(model, prompts, tokenizer, decode_config, progress=progress,
                                  initial_state=initial_state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    records = []
    for index, (item, generation) in enumerate(zip(items, generations)):
        extracted = extract_prediction(answer_format, generation.text)
        records.append({
            "index": index,
            "question": item.question,
            "reference": item.reference,
            "generated": generation.text,
            "extracted": extracted,
            "correct": answers_equal(answer_format, extracted, item.reference),
            "finish_reason": generation.finish_reason,
            "generated_tokens": len(generation.tokens),
        })
    return EvalResult(records=records, seconds=seconds)


def format_summary(result: EvalResult, answer_format: str) -> str:
    """The printed result: accuracy, its 95% Wilson interval, answers found, and decoding speed."""
    n = len(result.records)
    low, high = wilson_interval(result.n_correct, n)
    n_found = sum(record["extracted"] is not None for record in result.records)
    n_tokens = sum(record["generated_tokens"] for record in result.records)
    return (f"{answer_format} accuracy {100 * result.accuracy:.2f}% ({result.n_correct}/{n} correct), "
            f"95% Wilson CI [{100 * low:.2f}%, {100 * high:.2f}%]; answer found in {n_found}/{n}; "
            f"{result.questions_per_second:.3f} questions/s ({n_tokens} tokens in {result.seconds:.1f} s)")


def write_records(records, path) -> None:
    """One JSON object a line, written atomically (never a half-written file; DiskFullError on a full disk)."""
    write_text_atomic("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.eval.math", description=__doc__.split("\n\n")[0])
    source = parser.add_argument_group("model (either --model, or --base with --adapter)")
    source.add_argument("--model", help="merged (or plain) RWKV6 .pth")
    source.add_argument("--base", help="base RWKV6 .pth the adapter was trained on")
    source.add_argument("--adapter", help="adapter (train.py's, an RWKV-PEFT .pth or an HF peft directory); merged "
                                          "into --base in memory")
    parser.add_argument("--state", default=None, help="state file written by train.py --peft state "
                                                      "(state-*.pth): every question starts from it")
    parser.add_argument("--data", required=True, help="JSON Lines questions with reference solutions")
    parser.add_argument("--format", required=True, choices=FORMATS, help="answer extraction rules")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--out", default=None, help="per-question results (JSON Lines)")
    parser.add_argument("--template", default="rwkv", choices=("rwkv", "alpaca"),
                        help="prompt template; use the one the model was fine-tuned with (train.py --template)")
    parser.add_argument("--tokenizer", default="world", choices=("world", "byte"))
    parser.add_argument("--batch_size", type=int, default=32, help="sequences decoded together")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help=f"generation limit (default: {DEFAULT_MAX_NEW_TOKENS['gsm8k']} for gsm8k, "
                             f"{DEFAULT_MAX_NEW_TOKENS['math']} for math, as MetaMath)")
    parser.add_argument("--prefill_tokens", type=int, default=8192,
                        help="most prompt positions per forward call (bounds prompt-phase memory)")
    parser.add_argument("--wkv_op", default="auto", choices=WKV_REQUESTS)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="weights dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--log_every", type=int, default=50, help="progress line every N answers (0: none)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    try:
        refuse_overwriting_inputs([("--out", args.out)], [("--data", args.data), ("--model", args.model),
                                                          ("--base", args.base), ("--adapter", args.adapter),
                                                          ("--state", args.state)])
        check_output_file("--out", args.out)
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be a positive number of tokens, got {args.max_new_tokens} "
                             f"(leave it out for MetaMath's limit: {DEFAULT_MAX_NEW_TOKENS[args.format]} for "
                             f"{args.format})")
        decode_config = DecodeConfig(
            max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[args.format],
            batch_size=args.batch_size,
            eod_id=EOD_ID,
            stop_strings=template_stop_strings(args.template),
            prefill_tokens=args.prefill_tokens,
        )
        items = load_items(args.data, args.format, args.limit)
        tokenizer = get_tokenizer(args.tokenizer)
        model = load_model(args.model, args.base, args.adapter, wkv_op=args.wkv_op, device=device,
                           dtype=DTYPES[dtype_name])
        initial_state = load_state_for(model, args.state) if args.state else None
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 2
    print(f"evaluating {len(items)} {args.format} questions on {device} ({dtype_name}, "
          f"wkv op {model.config.wkv_op}), template {args.template}, batch {args.batch_size}, "
          f"max {decode_config.max_new_tokens} new tokens", file=sys.stderr)

    start = time.perf_counter()

    def progress(done, total):
        if args.log_every > 0 and (done % args.log_every == 0 or done == total):
            print(f"[eval] {done}/{total} answered, {done / (time.perf_counter() - start):.3f} questions/s",
                  file=sys.stderr, flush=True)

    try:
        result = evaluate(model, tokenizer, items, args.format, args.template, decode_config, progress=progress,
                          initial_state=initial_state)
    except ValueError as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 2
    if args.out:
        try:
            write_records(result.records, args.out)
        except DiskFullError as error:  # the summary is not lost with the file
            print(format_summary(result, args.format), flush=True)
            print(f"evaluation failed: {error}", file=sys.stderr)
            return 4
        print(f"per-question results written to {args.out}", file=sys.stderr)
    print(format_summary(result, args.format), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
