"""Fold a trained adapter into its base model and write an official-layout RWKV6 checkpoint.

    python -m src.merge --base RWKV-x060-World-1B6-....pth --adapter out/adapter-final.pth --output merged.pth

The merge runs in fp32 whatever the stored dtype, and the output has exactly the base's keys, shapes and dtypes,
so the `rwkv` pip package and every RWKV tool load it as they load the base.
"""

import argparse
import sys
import time

import torch

from src.checkpoint import load_rwkv_state_dict, save_atomic
from src.model import RWKV6
from src.peft import load_adapter, merge_peft

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def merge_files(base_path, adapter_path, output_path, dtype=None) -> dict:
    """Merge `adapter_path` into `base_path`, write `output_path`; return the merged state dict.

    dtype None keeps each tensor's dtype from the base file.
    """
    base = load_rwkv_state_dict(base_path)
    model = RWKV6.from_checkpoint(base_path, wkv_op="torch", dtype=torch.float32)
    load_adapter(model, adapter_path)
    merge_peft(model)
    merged = model.state_dict()
    if merged.keys() != base.keys():
        raise RuntimeError(
            f"merged model has keys the base does not ({sorted(set(merged) ^ set(base))[:5]}): the adapter was not fully folded"
        )
    out = {k: merged[k].to(dtype or base[k].dtype).contiguous() for k in base}
    save_atomic(out, output_path)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the base RWKV6 .pth the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="adapter file written by train.py (adapter-*.pth)")
    parser.add_argument("--output", required=True, help="where to write the merged .pth")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="keep", help="dtype of the output (default: as the base)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pth"):
        parser.error(f"--output {args.output}: RWKV tools (the rwkv pip package among them) expect a name ending in .pth")
    start = time.time()
    try:
        merged = merge_files(args.base, args.adapter, args.output, DTYPES[args.dtype])
    except (FileNotFoundError, ValueError) as error:
        print(f"merge failed: {error}", file=sys.stderr)
        return 2
    n_params = sum(t.numel() for t in merged.values())
    print(f"merged {args.adapter} into {args.base}: {len(merged)} tensors, {n_params:,} parameters, "
          f"written to {args.output} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
