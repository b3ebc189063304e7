"""Exact long-context training ("infctx"): a sample of T tokens trained as consecutive chunks of chunk_ctx tokens.

Each chunk starts from the recurrent state the previous chunk ended in (per layer: the time-mix shift, the WKV
state and the channel-mix shift), and the gradient flows back through those states, so the result is the
single pass's loss and gradient, not an approximation. Each chunk runs under a non-reentrant
torch.utils.checkpoint: its activations (logits included) are dropped after its forward and recomputed in
backward, so the memory held is one chunk's activations plus the per-chunk states and inputs.

Exactness of the loss: chunk c contributes sum(CE * mask) over its tokens divided by the supervised-token count of
the WHOLE batch (not a mean of per-chunk means), and its L2Wrap penalty uses the whole batch's B*T positions; the
chunk terms then add up to masked_cross_entropy and L2Wrap of one pass. The last chunk may be shorter.
"""
from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from src.train.loss import L2Wrap, masked_cross_entropy


def _chunk_loss(model, input_ids, targets, loss_mask, state, denominator, positions):
    logits, state = model(input_ids, state=state, return_state=True)
    loss = masked_cross_entropy(logits, targets, loss_mask, denominator=denominator)
    # The shift states are views of the chunk's activations (x[:, -1]); kept as the next chunk's inputs they would
    # keep those whole activations alive. Copies hold only [B, C].
    state = [tuple(t.clone() for t in layer) for layer in state]
    return L2Wrap.apply(loss, logits, positions), state


def chunked_loss(model, input_ids: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor, chunk_ctx: int,
                 initial_state: Optional[list] = None) -> torch.Tensor:
    """The loss of one micro-batch (L2Wrap applied), computed chunk by chunk; equal to the single pass's.

    model: an RWKV6/RWKV7 (adapted or not) whose forward takes state= and return_state=; input_ids, targets,
    loss_mask [B, T]; chunk_ctx >= 1 tokens per chunk; initial_state: the state the first chunk starts from
    (None: zeros; state tuning passes its trained state).
    """
    if chunk_ctx < 1:
        raise ValueError(f"chunk_ctx must be >= 1, got {chunk_ctx}")
    batch, length = input_ids.shape
    denominator = loss_mask.sum().to(torch.promote_types(loss_mask.dtype, torch.float32)).clamp_min(1.0)
    state, total = initial_state, None
    for start in range(0, length, chunk_ctx):
        end = min(length, start + chunk_ctx)
        part, state = checkpoint(_chunk_loss, model, input_ids[:, start:end], targets[:, start:end],
                                 loss_mask[:, start:end], state, denominator, batch * length, use_reentrant=False)
        total = part if total is None else total + part
    return total
