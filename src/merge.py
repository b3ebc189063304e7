"""Fold a trained adapter into its base model and write an official-layout RWKV6 checkpoint.

    python -m src.merge --base RWKV-x060-World-1B6-....pth --adapter out/adapter-final.pth --output merged.pth

The merge runs in fp32 whatever the stored dtype, and the output has exactly the base's keys, shapes and dtypes,
so the `rwkv` pip package and every RWKV tool load it as they load the base.

Refused before any work, with one `merge failed: ...` line and exit status 2: an --output that is --base or
--adapter (also through a hard link or a symbolic link), an --output that is a directory or not writable, and
base, adapter or merged tensors holding NaN or infinity (the tensor is named). A disk that fills while the output
is written exits with status 4 (the message names the folder and the space; an existing --output is unchanged).
A crash exits with status 1.
"""

import argparse
import sys
import time

from src.checkpoint.files import DiskFullError, check_output_file, refuse_overwriting_inputs, save_atomic
from src.checkpoint.io import check_finite_tensors, read_checkpoint
from src.model import DTYPES
from src.peft import read_adapter
from src.peft.merged import merged_state_dict

OUTPUT_DTYPES = {"keep": None, **DTYPES}


def merge_files(base_path, adapter_path, output_path, dtype=None) -> dict:
    """Merge `adapter_path` into `base_path`, write `output_path`; return the merged state dict.

    dtype None keeps each tensor's dtype from the base file. Refuses (ValueError) an output that is one of the
    inputs, and non-finite tensors in the base, the adapter or the merged result, before writing anything.
    """
    refuse_overwriting_inputs([("--output", output_path)], [("--base", base_path), ("--adapter", adapter_path)])
    check_output_file("--output", output_path)
    check_finite_tensors(read_checkpoint(base_path), f"--base {base_path}")
    check_finite_tensors(read_adapter(adapter_path)["tensors"], f"--adapter {adapter_path}")
    merged = merged_state_dict(base_path, adapter_path, dtype)
    check_finite_tensors(merged, f"the merged model (--dtype {dtype or 'as the base'})")
    save_atomic(merged, output_path)
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the base RWKV6 .pth the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="adapter file written by train.py (adapter-*.pth)")
    parser.add_argument("--output", required=True, help="where to write the merged .pth")
    parser.add_argument("--dtype", choices=sorted(OUTPUT_DTYPES), default="keep",
                        help="dtype of the output (default: as the base)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pth"):
        parser.error(f"--output {args.output}: RWKV tools (the rwkv pip package among them) expect a name ending "
                     f"in .pth")
    start = time.time()
    try:
        refuse_overwriting_inputs([("--output", args.output)], [("--base", args.base), ("--adapter", args.adapter)])
        check_output_file("--output", args.output)
        merged = merge_files(args.base, args.adapter, args.output, OUTPUT_DTYPES[args.dtype])
    except (FileNotFoundError, ValueError) as error:
        print(f"merge failed: {error}", file=sys.stderr)
        return 2
    except DiskFullError as error:  # nothing was replaced: an existing --output is unchanged
        print(f"merge failed: {error}", file=sys.stderr)
        return 4
    n_params = sum(t.numel() for t in merged.values())
    print(f"merged {args.adapter} into {args.base}: {len(merged)} tensors, {n_params:,} parameters, "
          f"written to {args.output} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
