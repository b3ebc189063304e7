"""Convert a jsonl file to binidx token files that RWKV-LM's and our trainers read.

    python -m src.data.make_binidx input.jsonl OUT_PREFIX [--tokenizer world|byte] [--field text]
    python -m src.data.make_binidx MetaMathQA-395K.json OUT_PREFIX --sft_fields query response [--template rwkv]

Writes OUT_PREFIX.bin and OUT_PREFIX.idx: every record becomes one document followed by the end-of-document
token 0. With --sft_fields, each record is rendered as the SFT prompt plus response (the text `--data_type sft`
trains on); train on the result with `--loss_mask qa` to mask the prompts out by the template's markers.
"""
import argparse
import os
import sys
import time

from src.data.binidx import BinIdxWriter
from src.data.dataset import iter_jsonl_texts, iter_sft_pairs, tokenize_sft_example
from src.data.templates import TEMPLATES
from src.data.tokenizer import TOKENIZER_NAMES, get_tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.data.make_binidx", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="jsonl file, one JSON object per line (or one JSON array with --sft_fields)")
    parser.add_argument("out_prefix", help="output prefix: writes OUT_PREFIX.bin and OUT_PREFIX.idx")
    parser.add_argument("--tokenizer", default="world", choices=TOKENIZER_NAMES,
                        help="world: RWKV world vocabulary (65536); byte: UTF-8 bytes (256)")
    parser.add_argument("--field", default="text", help="the text field of each record (default: text)")
    parser.add_argument("--sft_fields", nargs=2, metavar=("QUERY", "RESPONSE"), default=None,
                        help="render query/response records with the SFT template instead of reading --field")
    parser.add_argument("--template", default="rwkv", choices=tuple(TEMPLATES),
                        help="SFT prompt template used with --sft_fields (default: rwkv)")
    return parser.parse_args(argv)


def convert(input_path, out_prefix, tokenizer, field="text", sft_fields=None, template="rwkv"):
    """Tokenize every record of input_path into OUT_PREFIX.bin/.idx; returns (documents, tokens)."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"input file not found: {input_path}")
    with BinIdxWriter(out_prefix, tokenizer.vocab_size) as writer:
        if sft_fields:
            for query, response in iter_sft_pairs(input_path, sft_fields):
                ids, _ = tokenize_sft_example(query, response, tokenizer, template)
                writer.add_document(ids[:-1])  # the writer appends the end-of-document token itself
        else:
            for text in iter_jsonl_texts(input_path, field):
                writer.add_document(tokenizer.encode(text))
        if writer.num_docs == 0:
            raise ValueError(f"{input_path} contains no records (only blank lines); nothing to write")
    return writer.num_docs, writer.num_tokens


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    try:
        tokenizer = get_tokenizer(args.tokenizer)
        num_docs, num_tokens = convert(args.input, args.out_prefix, tokenizer, args.field, args.sft_fields,
                                       args.template)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"make_binidx: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_prefix}.bin and {args.out_prefix}.idx: {num_docs} documents, {num_tokens} tokens "
          f"(eod 0 after each), tokenizer {tokenizer.name} (vocab {tokenizer.vocab_size}), "
          f"{time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
