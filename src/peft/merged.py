"""An adapter folded into its base: the one merge that `python -m src.merge`, the chat demo and the evaluator
share, so all three serve exactly the same weights.

The merge runs in fp32 whatever the stored dtype, and each tensor is cast back to the base file's dtype, so the
result has the base's keys, shapes and dtypes and the `rwkv` package loads it as it loads the base.
"""
import torch

from src.checkpoint.io import load_rwkv, read_checkpoint
from src.peft.adapter_io import load_adapter
from src.peft.inject import merge_peft


def merged_state_dict(base_path, adapter_path, dtype=None) -> dict:
    """Base + adapter as plain official-layout weights; dtype None keeps each tensor's dtype from the base."""
    base = read_checkpoint(base_path)
    model = load_rwkv(base, wkv_op="torch", dtype=torch.float32)  # merging runs no WKV; any op would do
    load_adapter(model, adapter_path)
    merge_peft(model)
    merged = model.state_dict()
    if merged.keys() != base.keys():
        raise RuntimeError(f"merged model has keys the base does not ({sorted(set(merged) ^ set(base))[:5]}): the "
                           f"adapter was not fully folded")
    return {key: merged[key].to(dtype or base[key].dtype).contiguous() for key in base}


def serving_weights(model_path=None, base_path=None, adapter_path=None) -> dict:
    """The weights to serve: a merged (or plain) model file as stored, or base + adapter folded exactly as
    `python -m src.merge` folds them, so serving either gives the same replies."""
    if (model_path is None) == (base_path is None):
        raise ValueError("give either --model MERGED.pth or --base BASE.pth --adapter ADAPTER, not both or neither")
    if model_path is not None:
        if adapter_path is not None:
            raise ValueError("--adapter goes with --base (the unmerged base model), not with --model")
        return read_checkpoint(model_path)
    if adapter_path is None:
        raise ValueError("--base needs --adapter ADAPTER (to use a plain model, pass it as --model)")
    return merged_state_dict(base_path, adapter_path)
