"""Small random RWKV-7 (x070) checkpoints in the official layout, and the `rwkv` package's x070 as a reference.

The package's RWKV-7 path exists only when RWKV_V7_ON=1 is set before `rwkv.model` is first imported, and that
import also flips global torch flags (TF32, TorchScript autocast). The RWKV6 tests import the same module without
it, so the x070 reference always runs in a fresh Python process (`package_reference`), never in the test process.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

from src.checkpoint.io import save_official
from src.model import RWKV7, RWKV7Config

ROOT = Path(__file__).resolve().parent.parent


def random_rwkv7(n_layer=2, n_embd=128, vocab_size=256, dim_ffn=None, head_size=64, dim_w_lora=64, dim_a_lora=64,
                 dim_v_lora=32, dim_g_lora=128, layer0_value_lora=True, seed=0, wkv_op="torch") -> RWKV7:
    """An RWKV7 with the official init plus noise on every tensor, so that no path is trivially zero (the init
    zeroes w1/a1/v1/g1, att.output and ffn.value) and every LoRA, the value residual and the bonus matter."""
    config = RWKV7Config(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, dim_ffn=dim_ffn,
                         head_size=head_size, dim_w_lora=dim_w_lora, dim_a_lora=dim_a_lora, dim_v_lora=dim_v_lora,
                         dim_g_lora=dim_g_lora, layer0_value_lora=layer0_value_lora, wkv_op=wkv_op)
    model = RWKV7(config).init_weights(seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.state_dict().items():  # buffers too (layer 0's unused v0/v1/v2)
            if p.dim() == 2 and name.endswith(".weight"):  # nn.Linear / Embedding (out, in)
                scale = 0.5 if name == "emb.weight" else 1.0 / p.shape[1] ** 0.5
            elif p.dim() == 2 and name.endswith("att.r_k"):
                scale = 0.5
            elif p.dim() == 2:  # the (in, out) LoRA matrices: x @ W1 of order 1, then W2 moves its target by ~1
                scale = 1.0 / p.shape[0] ** 0.5
            else:  # (1,1,C) mixes and biases, LayerNorm/GroupNorm weights and biases
                scale = 0.2
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return model


def write_random_checkpoint(path, dtype=torch.float32, **kwargs) -> RWKV7:
    """Write a random RWKV7 to `path` (official keys and shapes) and return the model that was written."""
    model = random_rwkv7(**kwargs)
    save_official(model, path, dtype=dtype)
    return model


def package_reference(jobs, workdir, timeout_s: float = 600.0) -> list:
    """Run the `rwkv` package's RWKV-7 ('cpu fp32') in a fresh process.

    jobs: a list of (checkpoint path ending in .pth, token list of length >= 2[, state file]); with a state file
    (blocks.{i}.att.time_state [H, N, N], [head, value, key]) the package starts from its zero state with each
    layer's WKV state [3i+1] replaced by the file's tensor. Returns, per job,
    {"logits": [T, V] float32, "state": the package's state list (per layer i: [3i] att shift (C),
    [3i+1] WKV state (H, N, N) [head, value, key], [3i+2] ffn shift (C))}.
    """
    workdir = Path(workdir)
    job_file, out_file = workdir / "reference_jobs.pt", workdir / "reference_out.pt"
    torch.save([(str(job[0]), list(job[1]), str(job[2]) if len(job) > 2 else None) for job in jobs], job_file)
    env = dict(os.environ, RWKV_V7_ON="1", RWKV_CUDA_ON="0", RWKV_JIT_ON="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "tests.rwkv7_fixtures", str(job_file), str(out_file)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"the rwkv package reference failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return torch.load(out_file)


def _run_reference(job_file, out_file) -> None:
    assert os.environ.get("RWKV_V7_ON") == "1", "set RWKV_V7_ON=1 before importing rwkv.model"
    from rwkv.model import RWKV  # RWKV_x070 under RWKV_V7_ON=1

    results = []
    for path, tokens, state_file in torch.load(job_file):
        if not path.endswith(".pth"):
            raise ValueError(f"reference checkpoints must end in .pth, got {path}")
        model = RWKV(model=path[: -len(".pth")], strategy="cpu fp32")  # the package appends ".pth"
        start = None
        if state_file is not None:
            start = model.generate_zero_state()
            for key, tensor in torch.load(state_file, weights_only=True).items():
                start[3 * int(key.split(".")[1]) + 1] = tensor.float().contiguous()
        logits, state = model.forward(tokens, start, full_output=True)
        results.append({"logits": logits.float().clone(), "state": [s.clone() for s in state]})
    torch.save(results, out_file)


if __name__ == "__main__":
    _run_reference(sys.argv[1], sys.argv[2])
