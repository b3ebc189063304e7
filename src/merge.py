"""Fold a trained adapter into its base model and write an official-layout RWKV6 checkpoint, or write the adapter
in another tool's format.

    python -m src.merge --base RWKV-x060-World-1B6-....pth --adapter out/adapter-final.pth --output merged.pth
    python -m src.merge --adapter out/adapter-final.pth --export rwkv-peft --output rwkv-peft-bone.pth
    python -m src.merge --adapter out/adapter-final.pth --export peft --output hf-adapter/

--adapter takes this package's adapter files, RWKV-PEFT flat .pth files and HF peft MiSS/Bone/LoRA directories
(src.peft.formats). --export rwkv-peft writes the flat .pth RWKV-PEFT's merge reads (Bone-row, MiSS default);
--export peft writes an HF peft directory (MiSS default and mini, Bone-col as init_weights "bat", LoRA).

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
from src.peft.formats import EXPORT_FORMATS, RWKV_PEFT_KEYS, export_adapter
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
    parser.add_argument("--base", help="the base RWKV6 .pth (or .safetensors) the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="adapter: train.py's adapter-*.pth, an RWKV-PEFT .pth or an "
                                                         "HF peft directory")
    parser.add_argument("--output", required=True, help="where to write the merged .pth (or the exported adapter)")
    parser.add_argument("--dtype", choices=sorted(OUTPUT_DTYPES), default="keep",
                        help="dtype of the output (default: as the base)")
    parser.add_argument("--export", choices=EXPORT_FORMATS, help="write the adapter in RWKV-PEFT's or HF peft's "
                                                                 "format instead of merging (no --base needed)")
    parser.add_argument("--rwkv_peft_key", choices=RWKV_PEFT_KEYS, default="bone",
                        help="tensor name of --export rwkv-peft: bone (RWKV-PEFT 2024) or disha (later releases)")
    args = parser.parse_args(argv)
    if args.export:
        return export_main(args)
    if args.base is None:
        parser.error("--base is required to merge (only --export writes an adapter without it)")
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


def export_main(args) -> int:
    """--export: read --adapter (any accepted format), write it to --output in the other tool's layout."""
    try:
        refuse_overwriting_inputs([("--output", args.output)], [("--adapter", args.adapter)])
        payload = read_adapter(args.adapter)
        check_finite_tensors(payload["tensors"], f"--adapter {args.adapter}")
        written = export_adapter(payload, args.export, args.output, rwkv_peft_key=args.rwkv_peft_key)
    except (FileNotFoundError, ValueError) as error:
        print(f"merge failed: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.adapter} ({payload['method']}) as {args.export} to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
