"""Data: tokenizers, binidx token files, SFT prompt templates, and training datasets."""
from src.data.binidx import BinIdxReader, BinIdxWriter, write_binidx
from src.data.dataset import (
    DataConfig,
    TokenDataset,
    build_dataset,
    check_token_range,
    iter_jsonl_texts,
    iter_sft_pairs,
    text_response_flags,
    tokenize_sft_example,
)
from src.data.templates import TEMPLATES, get_template, render_sft_prompt, render_sft_response
from src.data.tokenizer import EOD_ID, ByteTokenizer, WorldTokenizer, get_tokenizer

__all__ = [
    "get_tokenizer", "WorldTokenizer", "ByteTokenizer", "EOD_ID",
    "BinIdxReader", "BinIdxWriter", "write_binidx",
    "DataConfig", "TokenDataset", "build_dataset", "check_token_range", "iter_jsonl_texts", "iter_sft_pairs",
    "text_response_flags", "tokenize_sft_example",
    "TEMPLATES", "get_template", "render_sft_prompt", "render_sft_response",
]
