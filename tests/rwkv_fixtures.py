"""Small random RWKV6 checkpoints in the official layout, for tests that compare against the `rwkv` package."""
import os

import torch

from src.checkpoint.io import save_official
from src.model import RWKV6, RWKV6Config


def random_rwkv6(n_layer=2, n_embd=128, vocab_size=256, dim_ffn=None, dim_maa_lora=32, dim_decay_lora=64,
                 seed=0, wkv_op="torch") -> RWKV6:
    """An RWKV6 with the official init plus noise on every tensor, so no path is trivially zero."""
    config = RWKV6Config(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, dim_ffn=dim_ffn,
                         dim_maa_lora=dim_maa_lora, dim_decay_lora=dim_decay_lora, wkv_op=wkv_op)
    model = RWKV6(config).init_weights(seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.endswith(("emb.weight", "time_faaaa")) else 0.1
            if p.dim() == 2 and "time_" not in name:
                scale = 1.0 / p.shape[1] ** 0.5
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return model


def write_random_checkpoint(path, dtype=torch.float32, **kwargs) -> RWKV6:
    """Write a random RWKV6 to `path` (official keys and shapes) and return the model that was written."""
    model = random_rwkv6(**kwargs)
    save_official(model, path, dtype=dtype)
    return model


def rwkv_package_model(path):
    """The `rwkv` pip package's own RWKV6 on `path` ('cpu fp32'): the independent reference implementation."""
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV

    return RWKV(model=str(path), strategy="cpu fp32", verbose=False)
