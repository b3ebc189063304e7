"""The training loss: masked cross-entropy and RWKV's L2Wrap (no Lightning here, so the chunked path of
src/train/infctx.py and benches share it).

Loss of a micro-batch (per rank): sum_t CE_t * mask_t / max(sum_t mask_t, 1), CE in float32, then L2Wrap, which
leaves the value unchanged and adds RWKV's logit penalty to the gradient (see `L2Wrap`).
"""
from typing import Optional

import torch
import torch.nn.functional as F

L2WRAP_FACTOR = 1e-4


class L2Wrap(torch.autograd.Function):
    """Returns `loss` unchanged; in backward also sends 1e-4/positions * max_logit to each position's largest logit.

    That is the gradient of the penalty 1e-4 * mean over positions of max_logit**2 / 2, which keeps logits from
    drifting upward (RWKV-LM's L2Wrap). positions defaults to B*T of `logits`; a chunk of a longer sample passes the
    whole sample's B*T, so the chunks' penalties add up to the single pass's. The penalty gradient is scaled by the
    incoming gradient, so loss scaling (gradient accumulation, fp16) scales it with the loss.
    """

    @staticmethod
    def forward(ctx, loss, logits, positions: Optional[int] = None):
        ctx.save_for_backward(logits)
        ctx.positions = positions if positions is not None else logits.shape[0] * logits.shape[1]
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (logits,) = ctx.saved_tensors
        largest, index = logits.max(dim=-1, keepdim=True)
        penalty = torch.zeros_like(logits).scatter_(-1, index, largest * (L2WRAP_FACTOR / ctx.positions))
        return grad_output, penalty * grad_output.to(logits.dtype), None


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                         denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum(CE * mask) / max(sum(mask), 1) over a batch: logits [B, T, V], targets [B, T], mask [B, T].

    denominator: divide by this instead of max(sum(mask), 1) (a chunk of a sample divides by the whole sample's
    count, so the chunks' terms add up to the sample's mean). Computed in fp32 (fp64 for fp64 logits) whatever the
    logits' precision."""
    vocab = logits.shape[-1]
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half-precision logits: CE in fp32
    token_loss = F.cross_entropy(wide.reshape(-1, vocab), targets.reshape(-1), reduction="none")
    mask = mask.reshape(-1).to(token_loss.dtype)
    if denominator is None:
        denominator = mask.sum().clamp_min(1.0)
    return (token_loss * mask).sum() / denominator
