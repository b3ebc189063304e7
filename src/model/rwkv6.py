"""RWKV6 ("x060", Finch) language model, written to match the official checkpoints key for key.

Every block is

    x = x + TimeMix(ln1(x))        # attention-like mixing over time through the WKV6 recurrence
    x = x + ChannelMix(ln2(x))     # a squared-ReLU feed-forward with a sigmoid receptance gate

with `ln0` applied to the embeddings before the first block and `head(ln_out(x))` after the last one.
Module and parameter names equal the checkpoint keys, so `load_state_dict` is strict and a trained model is
saved back in the official layout by `state_dict()` alone.

The model knows nothing about adapters: PEFT code swaps its `nn.Linear` projections from outside.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from src.model.layout import check_dimensions, check_layout, layer_count, load_strictly, require
from src.ops import WKV_OPS, wkv6

GENERATION = "RWKV6"
# GroupNorm eps of ln_x in x060: 1e-5 * head_size_divisor**2 with the divisor fixed at 8.
LN_X_EPS = 64e-5


@dataclass
class RWKV6Config:
    n_layer: int
    n_embd: int
    vocab_size: int
    dim_ffn: Optional[int] = None  # None: the official int(n_embd * 3.5) // 32 * 32
    head_size: int = 64
    dim_maa_lora: int = 32  # time_maa_w1 is [C, 5 * dim_maa_lora]; 64 for the 7B and 14B models
    dim_decay_lora: int = 64  # time_decay_w1 is [C, dim_decay_lora]; 128 for the 7B and 14B models
    wkv_op: str = "torch"
    layer_checkpointing: bool = False  # recompute each block in backward (non-reentrant; also with state in and out)

    def __post_init__(self):
        if self.dim_ffn is None:
            self.dim_ffn = int(self.n_embd * 3.5) // 32 * 32
        check_dimensions(self, ("n_layer", "n_embd", "vocab_size", "dim_ffn", "head_size", "dim_maa_lora",
                                "dim_decay_lora"), GENERATION)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "RWKV6Config":
        """The shape of an official-layout RWKV6 state dict, read from tensor shapes alone (never from a file
        name) and checked key by key (`check_state_dict`)."""
        vocab_size, n_embd = _require(state_dict, "emb.weight").shape
        n_layer = layer_count(state_dict, GENERATION)
        n_head, head_size = _require(state_dict, "blocks.0.att.time_faaaa").shape
        config = cls(
            n_layer=n_layer,
            n_embd=n_embd,
            vocab_size=vocab_size,
            dim_ffn=_require(state_dict, "blocks.0.ffn.key.weight").shape[0],
            head_size=head_size,
            dim_maa_lora=_require(state_dict, "blocks.0.att.time_maa_w1").shape[1] // 5,
            dim_decay_lora=_require(state_dict, "blocks.0.att.time_decay_w1").shape[1],
        )
        check_state_dict(state_dict, config)
        return config


def _require(state_dict: dict, key: str):
    return require(state_dict, key, GENERATION)


def check_state_dict(state_dict: dict, config: RWKV6Config) -> None:
    """Raise a ValueError listing missing keys, unexpected keys and wrong shapes against an RWKV6 of `config`."""
    shape = f"L{config.n_layer} D{config.n_embd} F{config.dim_ffn} vocab {config.vocab_size}"
    check_layout(state_dict, lambda: RWKV6(config), GENERATION, shape)


def token_shift(x: torch.Tensor, last: Optional[torch.Tensor]) -> torch.Tensor:
    """The previous token's features for every position: `last` (or zeros) at t=0, then x[:, :-1]."""
    first = torch.zeros_like(x[:, :1]) if last is None else last.unsqueeze(1).to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


class TimeMix(nn.Module):
    def __init__(self, config: RWKV6Config, layer_id: int):
        super().__init__()
        self.config = config
        self.layer_id = layer_id
        C, H, N = config.n_embd, config.n_head, config.head_size
        self.time_maa_x = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_w = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_v = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_g = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_w1 = nn.Parameter(torch.empty(C, 5 * config.dim_maa_lora))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, config.dim_maa_lora, C))
        self.time_decay = nn.Parameter(torch.empty(1, 1, C))
        self.time_decay_w1 = nn.Parameter(torch.empty(C, config.dim_decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.empty(config.dim_decay_lora, C))
        self.time_faaaa = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def forward(self, x, shift_state=None, wkv_state=None):
        B, T, C = x.shape
        H, N = self.config.n_head, self.config.head_size
        xx = token_shift(x, shift_state) - x

        # Data-dependent interpolation ("ddlerp"): five small LoRAs, one per branch w, k, v, r, g.
        xxx = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1)
        xxx = xxx.view(B * T, 5, -1).transpose(0, 1)
        mw, mk, mv, mr, mg = torch.bmm(xxx, self.time_maa_w2).view(5, B, T, C).unbind(0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2

        heads = (B, T, H, N)
        y, wkv_state = wkv6(
            r.view(heads), k.view(heads), v.view(heads), w.to(r.dtype).view(heads),
            self.time_faaaa, state=wkv_state, op=self.config.wkv_op,
        )
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y * g), x[:, -1], wkv_state


class ChannelMix(nn.Module):
    def __init__(self, config: RWKV6Config, layer_id: int):
        super().__init__()
        C, F_ = config.n_embd, config.dim_ffn
        self.time_maa_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, F_, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(F_, C, bias=False)

    def forward(self, x, shift_state=None):
        xx = token_shift(x, shift_state) - x
        xk = x + xx * self.time_maa_k
        xr = x + xx * self.time_maa_r
        k = torch.relu(self.key(xk)).square()
        return torch.sigmoid(self.receptance(xr)) * self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, config: RWKV6Config, layer_id: int):
        super().__init__()
        C = config.n_embd
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)

    def forward(self, x, state=None):
        """x [B, T, C]; state is this layer's (att_shift, wkv_state, ffn_shift) or None."""
        att_shift, wkv_state, ffn_shift = state if state is not None else (None, None, None)
        a, att_shift, wkv_state = self.att(self.ln1(x), att_shift, wkv_state)
        x = x + a
        f, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + f, (att_shift, wkv_state, ffn_shift)


class RWKV6(nn.Module):
    def __init__(self, config: RWKV6Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    @classmethod
    def from_state_dict(cls, state_dict: dict, wkv_op: str, dtype: Optional[torch.dtype] = None, device=None):
        """The model of an official-layout state dict, its shape read from the tensors, loaded strictly.

        `wkv_op` is an op already chosen for the run's device (src.ops.resolve_wkv_op); it is stored, never
        re-chosen. dtype None keeps the stored dtype (bf16 for the official releases).
        """
        if wkv_op not in WKV_OPS:
            raise ValueError(f"wkv_op must be one of {', '.join(WKV_OPS)} (choose 'auto' with "
                             f"src.ops.resolve_wkv_op before loading), got {wkv_op!r}")
        config = RWKV6Config.from_state_dict(state_dict)
        config.wkv_op = wkv_op
        return load_strictly(lambda: cls(config), state_dict, dtype, device)

    def forward(self, idx: torch.Tensor, state=None, return_state: bool = False):
        """idx [B, T] token ids -> logits [B, T, vocab]; with return_state also the recurrent state to continue from."""
        if idx.dim() != 2:
            raise ValueError(f"RWKV6 expects token ids of shape [batch, time], got {tuple(idx.shape)}")
        x = self.emb(idx)
        x = self.blocks[0].ln0(x)
        new_state = []
        for i, block in enumerate(self.blocks):
            layer_state = state[i] if state is not None else None
            if self.config.layer_checkpointing and self.training and torch.is_grad_enabled():
                x, layer_state = checkpoint(block, x, layer_state, use_reentrant=False)
            else:
                x, layer_state = block(x, layer_state)
            new_state.append(layer_state)
        logits = self.head(self.ln_out(x))
        return (logits, new_state) if return_state else logits

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None):
        """The official RWKV-LM x060 from-scratch initialisation (layer-dependent mixes, decays and bonuses)."""
        if self.emb.weight.is_meta:
            return self
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        C, L = self.config.n_embd, self.config.n_layer

        def uniform_(t, bound):
            t.copy_(torch.rand(t.shape, generator=generator) * 2 * bound - bound)

        def orthogonal_(t, gain):
            w = torch.empty(t.shape, dtype=torch.float32)
            nn.init.orthogonal_(w, gain=gain, generator=generator)
            t.copy_(w)

        uniform_(self.emb.weight, 1e-4)
        orthogonal_(self.head.weight, 0.5 * math.sqrt(self.config.vocab_size / C))
        channel_ratio = torch.arange(C, dtype=torch.float32) / C  # i / C
        channel_pos = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)  # n / (C - 1)
        for layer_id, block in enumerate(self.blocks):
            r0 = layer_id / max(L - 1, 1)  # 0 at the first layer, 1 at the last
            r1 = 1.0 - layer_id / L  # 1 at the first layer, almost 0 at the last
            for ln in (getattr(block, "ln0", None), block.ln1, block.ln2):
                if ln is not None:
                    ln.weight.fill_(1.0)
                    ln.bias.zero_()
            att, ffn = block.att, block.ffn
            shape = (1, 1, C)
            att.time_maa_x.copy_((1 - channel_ratio ** r1).view(shape))
            att.time_maa_w.copy_((1 - channel_ratio ** r1).view(shape))
            att.time_maa_k.copy_((1 - channel_ratio ** r1).view(shape))
            att.time_maa_v.copy_((1 - (channel_ratio ** r1 + 0.3 * r0)).view(shape))
            att.time_maa_r.copy_((1 - channel_ratio ** (0.5 * r1)).view(shape))
            att.time_maa_g.copy_((1 - channel_ratio ** (0.5 * r1)).view(shape))
            att.time_maa_w1.zero_()
            uniform_(att.time_maa_w2, 0.01)
            att.time_decay.copy_((-6 + 5 * channel_pos ** (0.7 + 1.3 * r0)).view(shape))
            att.time_decay_w1.zero_()
            uniform_(att.time_decay_w2, 0.01)
            n = torch.arange(C, dtype=torch.float32)
            bonus = r0 * (1 - channel_pos) + ((n + 1) % 3 - 1) * 0.1
            att.time_faaaa.copy_(bonus.view_as(att.time_faaaa))
            att.ln_x.weight.fill_(((1 + layer_id) / L) ** 0.7)
            att.ln_x.bias.zero_()
            ffn.time_maa_k.copy_((1 - channel_ratio ** r1).view(shape))
            ffn.time_maa_r.copy_((1 - channel_ratio ** r1).view(shape))
            for linear, gain in (
                (att.receptance, 1.0), (att.key, 0.1), (att.value, 1.0), (att.gate, 0.1), (att.output, 0.0),
                (ffn.key, 1.0), (ffn.receptance, 0.0), (ffn.value, 0.0),
            ):
                out_features, in_features = linear.weight.shape
                if gain == 0.0:
                    linear.weight.zero_()
                else:
                    # RWKV-LM widens the gain of expanding matrices so activations keep their scale.
                    stretch = math.sqrt(out_features / in_features) if out_features > in_features else 1.0
                    orthogonal_(linear.weight, gain * stretch)
        return self


def select_state(state, indices):
    """The recurrent state of the batch rows `indices` (a LongTensor or list) of a state returned by RWKV6."""
    return [tuple(t[indices] for t in layer) for layer in state]


def concat_states(states):
    """Stack the states of several batches (lists returned by RWKV6) along the batch dimension."""
    return [tuple(torch.cat(parts, dim=0) for parts in zip(*layers)) for layers in zip(*states)]
