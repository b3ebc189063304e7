"""RWKV-7 ("x070", Goose) language model, written to match the official checkpoints key for key.

Every block is

    x = x + TimeMix(ln1(x), v_first)   # the WKV7 recurrence (a generalised delta rule) over time
    x = x + ChannelMix(ln2(x))         # a squared-ReLU feed-forward, no gate

with `ln0` applied to the embeddings before the first block and `head(ln_out(x))` after the last one. Layer 0's
value (after its projection) is `v_first`, which every later layer mixes into its own value ("value residual").

TimeMix, per token (x^q = x + (x_prev - x) * x_q for q in r, w, k, v, a, g; x_prev = 0 at the sequence start):

    r = W_r x^r,  k~ = W_k x^k,  v~ = W_v x^v
    w = w0 + tanh(x^w w1) w2                         raw decay; the WKV7 op applies the soft clamp
    a = sigmoid(a0 + (x^a a1) a2)                    in-context learning rate
    v = v~ (layer 0, and v_first := v~);  v = v~ + (v_first - v~) * sigmoid(v0 + (x^v v1) v2) (layers >= 1)
    g = sigmoid(x^g g1) g2
    kappa = normalize_per_head(k~ * k_k)             from k~ BEFORE the k_a update (F.normalize, eps 1e-12)
    k = k~ * (1 + (a - 1) * k_a)
    y = WKV7(r, w, k, v, a=-kappa, b=kappa * a)      src.ops.wkv7, state [B, H, value, key]
    o = GroupNorm_H(y; eps 64e-5) + (sum_head r * k * r_k) * v
    out = W_o (o * g)

The LoRA matrices w1..g2 are stored (in, out) and used as x @ W; the Linears are nn.Linear (out, in). Module and
parameter names equal the checkpoint keys, so loading is strict and `state_dict()` writes the official layout.
Layer 0's v0/v1/v2 are unused by the architecture: released files have them or not, so they are kept as
buffers when the file has them (round-tripped, never read, never trained) and absent otherwise.

The model knows nothing about adapters: PEFT code swaps its `nn.Linear` projections from outside.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from src.model.layout import check_dimensions, check_layout, layer_count, listing, load_strictly, require
from src.model.rwkv6 import concat_states, select_state, token_shift
from src.ops.wkv7 import WKV7_OPS, wkv7

GENERATION = "RWKV-7 (x070)"

# GroupNorm eps of ln_x in x070 ("!!! notice eps value !!!" in RWKV-LM), the same value as x060's.
LN_X_EPS = 64e-5
LAYER0_UNUSED = ("v0", "v1", "v2")  # blocks.0.att.{v0,v1,v2}: present in some releases, never used
# Keys of the rwkv7a "DeepEmbed" variant (ffn.s_emb etc.), which this model does not implement.
DEEP_EMBED_SUFFIXES = ("ffn.s_emb.weight", "ffn.s_emb_x.weight", "ffn.s0", "ffn.s1", "ffn.s2")
# Keys only the pre-release x070 (RWKV-LM before 2024-11-29) had, under names the release renamed.
PRE_RELEASE_SUFFIXES = ("att.time_aaaaa", "att.time_misc_v", "att.time_misc_kkk", "att.time_misc_a", "att.mv_w1",
                        "att.time_maa_a")

__all__ = ["RWKV7", "RWKV7Config", "check_state_dict", "select_state", "concat_states"]


@dataclass
class RWKV7Config:
    n_layer: int
    n_embd: int
    vocab_size: int
    dim_ffn: Optional[int] = None  # None: 4 * n_embd, as in every release
    head_size: int = 64
    # LoRA widths (defaults: the 0.1B/0.4B models' w, a, v; g is 128 there). Released sizes differ from any
    # formula (0.4B, 13.3B), so `from_state_dict` reads them from the tensors.
    dim_w_lora: int = 64  # att.w1 [C, D_w]
    dim_a_lora: int = 64  # att.a1 [C, D_a]
    dim_v_lora: int = 32  # att.v1 [C, D_v] (layers >= 1)
    dim_g_lora: int = 128  # att.g1 [C, D_g]
    layer0_value_lora: bool = True  # whether blocks.0.att.v0/v1/v2 exist (kept, never read)
    wkv_op: str = "torch"
    layer_checkpointing: bool = False  # recompute each block in backward (non-reentrant; v_first and the state are
    # arguments and results, so state-carrying chunks checkpoint blocks too)

    def __post_init__(self):
        if self.dim_ffn is None:
            self.dim_ffn = 4 * self.n_embd
        check_dimensions(self, ("n_layer", "n_embd", "vocab_size", "dim_ffn", "head_size", "dim_w_lora", "dim_a_lora",
                                "dim_v_lora", "dim_g_lora"), GENERATION)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "RWKV7Config":
        """The shape of an official-layout x070 state dict, read from tensor shapes alone (never from a file name)
        and checked key by key (`check_state_dict`). Look-alikes are refused by name: the DeepEmbed variant,
        the pre-release x070 naming and RWKV6 files."""
        deep = sorted(k for k in state_dict if k.endswith(DEEP_EMBED_SUFFIXES))
        if deep:
            raise ValueError(
                f"checkpoint is an RWKV-7 DeepEmbed (rwkv7a) model ({listing('DeepEmbed keys', deep)}); only the "
                f"plain x070 architecture is supported"
            )
        old = sorted(k for k in state_dict if k.endswith(PRE_RELEASE_SUFFIXES))
        if old:
            raise ValueError(
                f"checkpoint uses the pre-release x070 naming of RWKV-LM before 2024-11-29 "
                f"({listing('pre-release keys', old)}); only released x070 checkpoints (att.x_r, att.w0, "
                f"att.r_k, ...) are supported"
            )
        if "blocks.0.att.r_k" not in state_dict and any(k.endswith("att.time_maa_x") for k in state_dict):
            raise ValueError("checkpoint is an RWKV6 (x060) model (att.time_maa_x, no att.r_k): load it as RWKV6")
        vocab_size, n_embd = _require(state_dict, "emb.weight").shape
        n_layer = layer_count(state_dict, GENERATION)
        r_k = _require(state_dict, "blocks.0.att.r_k")
        if r_k.dim() != 2:
            raise ValueError(f"blocks.0.att.r_k has shape {tuple(r_k.shape)}; x070 stores it as [heads, head_size]")
        n_head, head_size = r_k.shape
        layer0_value_lora = any(f"blocks.0.att.{name}" in state_dict for name in LAYER0_UNUSED)
        # The value LoRA is read from layer 1: layer 0's copy is unused and may be missing.
        v1_key = "blocks.1.att.v1" if n_layer > 1 else "blocks.0.att.v1"
        dim_v_lora = _require(state_dict, v1_key).shape[1] if (n_layer > 1 or layer0_value_lora) else 32
        config = cls(
            n_layer=n_layer,
            n_embd=n_embd,
            vocab_size=vocab_size,
            dim_ffn=_require(state_dict, "blocks.0.ffn.key.weight").shape[0],
            head_size=head_size,
            dim_w_lora=_require(state_dict, "blocks.0.att.w1").shape[1],
            dim_a_lora=_require(state_dict, "blocks.0.att.a1").shape[1],
            dim_v_lora=dim_v_lora,
            dim_g_lora=_require(state_dict, "blocks.0.att.g1").shape[1],
            layer0_value_lora=layer0_value_lora,
        )
        if n_head * head_size != n_embd:
            raise ValueError(f"blocks.0.att.r_k is [{n_head}, {head_size}] but emb.weight has {n_embd} channels: "
                             f"heads x head_size must equal n_embd")
        check_state_dict(state_dict, config)
        return config


def _require(state_dict: dict, key: str):
    return require(state_dict, key, GENERATION)


def check_state_dict(state_dict: dict, config: RWKV7Config) -> None:
    """Raise a ValueError listing missing keys, unexpected keys and wrong shapes against an RWKV7 of `config`."""
    shape = (f"L{config.n_layer} D{config.n_embd} H{config.n_head}x{config.head_size} F{config.dim_ffn} "
             f"vocab {config.vocab_size} LoRA w{config.dim_w_lora} a{config.dim_a_lora} v{config.dim_v_lora} "
             f"g{config.dim_g_lora}")
    check_layout(state_dict, lambda: RWKV7(config), GENERATION, shape)


class TimeMix(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        self.config = config
        self.layer_id = layer_id
        C, H, N = config.n_embd, config.n_head, config.head_size

        def vector():
            return nn.Parameter(torch.empty(1, 1, C))

        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vector() for _ in range(6))
        self.w0 = vector()
        self.w1 = nn.Parameter(torch.empty(C, config.dim_w_lora))
        self.w2 = nn.Parameter(torch.empty(config.dim_w_lora, C))
        self.a0 = vector()
        self.a1 = nn.Parameter(torch.empty(C, config.dim_a_lora))
        self.a2 = nn.Parameter(torch.empty(config.dim_a_lora, C))
        value_lora = (torch.empty(1, 1, C), torch.empty(C, config.dim_v_lora), torch.empty(config.dim_v_lora, C))
        if layer_id > 0:
            self.v0, self.v1, self.v2 = (nn.Parameter(t) for t in value_lora)
        elif config.layer0_value_lora:
            for name, t in zip(LAYER0_UNUSED, value_lora):  # kept for the file's sake; no gradient, never read
                self.register_buffer(name, t)
        self.g1 = nn.Parameter(torch.empty(C, config.dim_g_lora))
        self.g2 = nn.Parameter(torch.empty(config.dim_g_lora, C))
        self.k_k = vector()
        self.k_a = vector()
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def forward(self, x, v_first=None, shift_state=None, wkv_state=None):
        B, T, C = x.shape
        H, N = self.config.n_head, self.config.head_size
        heads = (B, T, H, N)
        xx = token_shift(x, shift_state) - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g

        r = self.receptance(xr)
        w = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        k = self.key(xk)
        v = self.value(xv)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)

        kappa = F.normalize((k * self.k_k).view(heads), dim=-1, p=2.0)  # before the k_a update
        k = k * (1 + (a - 1) * self.k_a)
        r, k, v = r.view(heads), k.view(heads), v.view(heads)
        y, wkv_state = wkv7(r, w.view(heads), k, v, -kappa, kappa * a.view(heads), state=wkv_state,
                            op=self.config.wkv_op)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        y = y + ((r * k * self.r_k).sum(-1, keepdim=True) * v).view(B, T, C)  # the bonus, per head
        return self.output(y * g), v_first, x[:, -1], wkv_state


class ChannelMix(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C, F_ = config.n_embd, config.dim_ffn
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, F_, bias=False)
        self.value = nn.Linear(F_, C, bias=False)

    def forward(self, x, shift_state=None):
        xx = token_shift(x, shift_state) - x
        k = torch.relu(self.key(x + xx * self.x_k)).square()
        return self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C = config.n_embd
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)

    def forward(self, x, v_first=None, state=None):
        """x [B, T, C]; v_first [B, T, C] (None into layer 0); state is this layer's (att_shift, wkv_state,
        ffn_shift) or None. Returns x, v_first (layer 0's value, passed on unchanged by later layers), state."""
        att_shift, wkv_state, ffn_shift = state if state is not None else (None, None, None)
        a, v_first, att_shift, wkv_state = self.att(self.ln1(x), v_first, att_shift, wkv_state)
        x = x + a
        f, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + f, v_first, (att_shift, wkv_state, ffn_shift)


class RWKV7(nn.Module):
    def __init__(self, config: RWKV7Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    @classmethod
    def from_state_dict(cls, state_dict: dict, wkv_op: str, dtype: Optional[torch.dtype] = None, device=None):
        """The model of an official-layout x070 state dict, its shape read from the tensors, loaded strictly.

        `wkv_op` is an op already chosen for the run's device (src.ops.wkv7.resolve_wkv7_op); it is stored, never
        re-chosen. dtype None keeps the stored dtype (bf16 for the official releases).
        """
        if wkv_op not in WKV7_OPS:
            raise ValueError(f"wkv_op must be one of {', '.join(WKV7_OPS)} (choose 'auto' with "
                             f"src.ops.wkv7.resolve_wkv7_op before loading), got {wkv_op!r}")
        config = RWKV7Config.from_state_dict(state_dict)
        config.wkv_op = wkv_op
        return load_strictly(lambda: cls(config), state_dict, dtype, device)

    def forward(self, idx: torch.Tensor, state=None, return_state: bool = False):
        """idx [B, T] token ids -> logits [B, T, vocab]; with return_state also the recurrent state to continue
        from: per layer (att_shift [B, C], wkv_state [B, H, N, N] fp32 [value, key], ffn_shift [B, C])."""
        if idx.dim() != 2:
            raise ValueError(f"RWKV7 expects token ids of shape [batch, time], got {tuple(idx.shape)}")
        x = self.emb(idx)
        x = self.blocks[0].ln0(x)
        v_first = None
        new_state = []
        for i, block in enumerate(self.blocks):
            layer_state = state[i] if state is not None else None
            if self.config.layer_checkpointing and self.training and torch.is_grad_enabled():
                # v_first goes in and out as a real argument, so the recomputation sees the same tensor.
                x, v_first, layer_state = checkpoint(block, x, v_first, layer_state, use_reentrant=False)
            else:
                x, v_first, layer_state = block(x, v_first, layer_state)
            new_state.append(layer_state)
        logits = self.head(self.ln_out(x))
        return (logits, new_state) if return_state else logits

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None):
        """The official RWKV-LM x070 from-scratch initialisation: train_temp's module init with the overrides of
        its `generate_init_weight` (orthogonal Linears, ln_x by depth, tiny embedding)."""
        if self.emb.weight.is_meta:
            return self
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        C, L, N, V = self.config.n_embd, self.config.n_layer, self.config.head_size, self.config.vocab_size

        def orthogonal_(t, gain):
            if gain == 0.0:
                t.zero_()
                return
            if t.shape[0] > t.shape[1]:  # train_temp's ortho_init widens expanding matrices (never for w2..g2)
                gain *= math.sqrt(t.shape[0] / t.shape[1])
            w = torch.empty(t.shape, dtype=torch.float32)
            nn.init.orthogonal_(w, gain=gain, generator=generator)
            t.copy_(w)

        self.emb.weight.copy_(torch.rand(self.emb.weight.shape, generator=generator) * 2e-4 - 1e-4)
        w = torch.empty(self.head.weight.shape, dtype=torch.float32)
        nn.init.orthogonal_(w, gain=0.5 * math.sqrt(V / C) if V > C else 0.5, generator=generator)
        self.head.weight.copy_(w)
        self.ln_out.weight.fill_(1.0)
        self.ln_out.bias.zero_()

        n = torch.arange(C, dtype=torch.float64)
        ddd = n / C
        linear = n / (C - 1) - 0.5
        half = max((N - 1) / 2, 0.5)
        zigzag = ((n % N) - (N - 1) / 2) / half
        zigzag = zigzag * zigzag.abs()
        shape = (1, 1, C)
        for layer_id, block in enumerate(self.blocks):
            r01 = layer_id / max(L - 1, 1)  # 0 at the first layer, 1 at the last
            r1a0 = 1.0 - layer_id / L  # 1 at the first layer, almost 0 at the last
            for ln in (getattr(block, "ln0", None), block.ln1, block.ln2):
                if ln is not None:
                    ln.weight.fill_(1.0)
                    ln.bias.zero_()
            att, ffn = block.att, block.ffn
            for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
                getattr(att, name).copy_((1.0 - ddd ** (power * r1a0)).view(shape))
            www = -6 + 6 * (n / (C - 1)) ** (1 + r01 ** 0.3)
            att.w0.copy_((www + 0.5 + 2.5 * zigzag).view(shape))  # "0.5 comes from F.softplus"
            att.a0.copy_((-0.19 + 0.3 * zigzag + 0.4 * linear).view(shape))
            if hasattr(att, "v0"):  # layer 0's copy only when the model has one (unused there)
                att.v0.copy_((0.73 - 0.4 * linear).view(shape))
            att.k_k.copy_((0.71 - 0.1 * linear).view(shape))
            att.k_a.fill_(1.02)
            att.r_k.fill_(-0.04)
            for lora in ("w", "a", "v", "g"):
                if hasattr(att, lora + "1"):
                    getattr(att, lora + "1").zero_()
                    orthogonal_(getattr(att, lora + "2"), 0.1)
            att.ln_x.weight.fill_(((1 + layer_id) / L) ** 0.7)
            att.ln_x.bias.zero_()
            ffn.x_k.copy_((1.0 - ddd ** (r1a0 ** 4)).view(shape))
            # generate_init_weight: orthogonal with gain = its scale (no widening) for every Linear.
            for linear_layer, gain in ((att.receptance, 1.0), (att.key, 0.1), (att.value, 1.0), (att.output, 0.0),
                                       (ffn.key, 1.0), (ffn.value, 0.0)):
                if gain == 0.0:
                    linear_layer.weight.zero_()
                else:
                    w = torch.empty(linear_layer.weight.shape, dtype=torch.float32)
                    nn.init.orthogonal_(w, gain=gain, generator=generator)
                    linear_layer.weight.copy_(w)
        return self
