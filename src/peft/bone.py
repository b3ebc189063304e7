r"""Bone (Block Affine) adapters for a frozen nn.Linear.

Notation: W is the frozen weight of shape (out, in), cut into b×b blocks W[a,j] (output block a < out/b, input
block j < in/b). x is one token's input, cut into b-vectors x_j; the layer computes y = x·Wᵀ (+ bias).
Every trainable tensor is a stack of b×b matrices, zero-initialised so the adapted layer starts equal to the base:

    grouping "row" (Bone-row, what RWKV-PEFT shipped): one matrix per input block,  shape (in/b, b, b),  g = j
    grouping "col" (Bone-col):                         one matrix per output block, shape (out/b, b, b), g = a

    form "affine" (Bone):                    ΔW[a,j] = W[a,j]·bone[g] + bone[g]
    form "unconstrained" (Table 6 ablation): ΔW[a,j] = W[a,j]·A[g] + B[g]          (A = B = 0 at start; both
                                             still get gradients there: ∂B[g] = Σ G[a,j], ∂A[g] = Σ W[a,j]ᵀG[a,j])
    form "hadamard" (Table 6 ablation):      ΔW[a,j] = W[a,j]∘bone[g] + bone[g]    (elementwise)

and the layer computes y = x·(W + ΔW)ᵀ. Trainable count: in·b (row) or out·b (col) per layer, twice that for
"unconstrained".

Factored row form (impl "factored", the default for row/affine): ΔW is never formed
----------------------------------------------------------------------------------
Claim. With u_j = x_j·bone[j]ᵀ and the b-vector σ = Σ_j u_j,

    y = (x + u)·Wᵀ + tile(σ),        tile(σ) = σ repeated over the out/b output blocks.

Proof. In column-vector form, output block a of (W + ΔW)·x is
    Σ_j (W[a,j] + W[a,j]·bone[j] + bone[j])·x_j
  = Σ_j W[a,j]·(x_j + bone[j]·x_j) + Σ_j bone[j]·x_j
  = Σ_j W[a,j]·(x_j + u_j) + σ,
because bone[j]·x_j is the column form of the row vector x_j·bone[j]ᵀ = u_j. The first sum is output block a of
W·(x + u); σ does not depend on a, so the same σ is added to every output block. ∎

Backward. Let g = ∂L/∂y, h = g·W (in-space gradient through the first term) and s = Σ_a g_a (a b-vector).
  ∂u_j     = h_j + s               u_j reaches y through (x + u)·Wᵀ (giving h_j) and through σ, which is added
                                   to every output block a (giving Σ_a g_a = s).
  ∂x_j     = h_j + ∂u_j·bone[j]    x_j reaches y directly (h_j) and through u_j = x_j·bone[j]ᵀ.
  ∂bone[j] = Σ_tokens ∂u_jᵀ·x_j    because u_j[p] = Σ_q bone[j][p,q]·x_j[q].
  ∂W       = gᵀ·(x + u)            only when W itself is trainable (u is then recomputed from x).
  ∂bias    = Σ_tokens g.
So the backward needs x (and bone, W by reference) only: nothing W-sized and no u is kept between the passes.
The cost is that of LoRA with r = b/2 on a square layer: two (T, in/b, b) × (b, b) batched products each way.
Layout (see bench/bone_layer.py): u is a bmm over the (in/b, T, b) transposed view of x, σ is added in place on a
(T, out/b, b) view of y, and ∂x is accumulated onto h with an in-place baddbmm, so no tile or copy is made.

Materialised forms (impl "materialize"; the only one for col grouping, unconstrained and hadamard): W + ΔW is
formed every step and passed to F.linear, as the paper's code does. That keeps a W-sized tensor alive from forward
to backward; `checkpoint=True` wraps the whole materialise-and-multiply in torch.utils.checkpoint
(use_reentrant=False), so only x and the adapter are kept and W + ΔW is rebuilt in backward.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from src.peft.lora import AdapterLinear, _ConfigDict, _check_int, autocast_off, compute_dtype

GROUPINGS = ("row", "col")
FORMS = ("affine", "unconstrained", "hadamard")
IMPLS = ("auto", "factored", "materialize")


@dataclass
class BoneConfig(_ConfigDict):
    b: int = 64
    grouping: str = "row"
    form: str = "affine"
    impl: str = "auto"
    checkpoint: bool = False
    method: ClassVar[str] = "bone"

    def __post_init__(self):
        _check_int("BoneConfig", "b", self.b, 1)
        for name, allowed in (("grouping", GROUPINGS), ("form", FORMS), ("impl", IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"BoneConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.checkpoint, bool):
            raise ValueError(f"BoneConfig.checkpoint must be true or false, got {self.checkpoint!r}")
        factorable = self.grouping == "row" and self.form == "affine"
        if self.impl == "factored" and not factorable:
            raise ValueError(
                f"BoneConfig impl='factored' exists only for grouping='row', form='affine' (got grouping="
                f"'{self.grouping}', form='{self.form}'); use impl='materialize' (or 'auto')"
            )
        if self.checkpoint and self.resolved_impl == "factored":
            raise ValueError(
                "BoneConfig checkpoint=True applies to the materialised forms; row/affine Bone runs factored "
                "(impl 'auto' or 'factored'), which keeps no W-sized tensor anyway. Drop checkpoint, or set "
                "impl='materialize' to checkpoint the materialised row form"
            )

    @property
    def resolved_impl(self) -> str:
        """'factored' or 'materialize': what impl='auto' means for this grouping and form."""
        if self.impl == "auto":
            return "factored" if (self.grouping == "row" and self.form == "affine") else "materialize"
        return self.impl


def to_blocks(weight: torch.Tensor, b: int) -> torch.Tensor:
    """(out, in) -> (out/b, in/b, b, b) view: [a, j] is block W[a,j]."""
    out_features, in_features = weight.shape
    return weight.view(out_features // b, b, in_features // b, b).transpose(1, 2)


def from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """(out/b, in/b, b, b) -> (out, in), the inverse of to_blocks."""
    n_out, n_in, b, _ = blocks.shape
    return blocks.transpose(1, 2).reshape(n_out * b, n_in * b)


def delta_weight(weight: torch.Tensor, tensors: tuple, grouping: str, form: str) -> torch.Tensor:
    """ΔW of shape (out, in) for the given form; `tensors` is (bone,) or (A, B), all in weight's dtype."""
    b = tensors[0].shape[-1]
    blocks = to_blocks(weight, b)
    # Row groups are indexed by the input block j (dim 1 of blocks), col groups by the output block a (dim 0).
    per_block = [t if grouping == "row" else t.unsqueeze(1) for t in tensors]
    if form == "affine":
        delta = blocks @ per_block[0] + per_block[0]
    elif form == "hadamard":
        delta = blocks * per_block[0] + per_block[0]
    else:
        delta = blocks @ per_block[0] + per_block[1]
    return from_blocks(delta)


class BoneRowFactored(torch.autograd.Function):
    """y = (x + u)·Wᵀ + tile(Σ_j u_j), u_j = x_j·bone[j]ᵀ, on x of shape (T, in); see the module docstring."""

    @staticmethod
    def forward(ctx, x, bone, weight, bias):
        n_tokens, in_features = x.shape
        n_in, b, _ = bone.shape
        out_features = weight.shape[0]
        x_blocks = x.view(n_tokens, n_in, b).transpose(0, 1)  # (in/b, T, b) view of x, no copy
        u = torch.bmm(x_blocks, bone.transpose(1, 2))  # (in/b, T, b)
        x_plus_u = torch.empty_like(x)
        torch.add(x.view(n_tokens, n_in, b), u.transpose(0, 1), out=x_plus_u.view(n_tokens, n_in, b))
        y = F.linear(x_plus_u, weight, bias)
        y.view(n_tokens, out_features // b, b).add_(u.sum(0).unsqueeze(1))
        ctx.save_for_backward(x, bone, weight)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, bone, weight = ctx.saved_tensors
        need_x, need_bone, need_weight, need_bias = ctx.needs_input_grad
        n_tokens, in_features = x.shape
        n_in, b, _ = bone.shape
        grad_y = grad_y.contiguous()
        grad_x = grad_bone = grad_weight = grad_bias = None
        x_blocks = x.view(n_tokens, n_in, b).transpose(0, 1)
        if need_x or need_bone:
            h = grad_y.mm(weight)  # (T, in)
            s = grad_y.view(n_tokens, -1, b).sum(1)  # (T, b): Σ over output blocks
            grad_u = h.view(n_tokens, n_in, b) + s.unsqueeze(1)  # (T, in/b, b)
            grad_u_blocks = grad_u.transpose(0, 1)  # (in/b, T, b) view
            if need_bone:
                grad_bone = torch.bmm(grad_u_blocks.transpose(1, 2), x_blocks)
            if need_x:
                # h is ours and no longer needed: accumulate ∂u·bone onto it in place.
                h.view(n_tokens, n_in, b).transpose(0, 1).baddbmm_(grad_u_blocks, bone)
                grad_x = h
        if need_weight:
            u = torch.bmm(x_blocks, bone.transpose(1, 2))
            x_plus_u = x.view(n_tokens, n_in, b) + u.transpose(0, 1)
            grad_weight = grad_y.t().mm(x_plus_u.view(n_tokens, in_features))
        if need_bias:
            grad_bias = grad_y.sum(0)
        return grad_x, grad_bone, grad_weight, grad_bias


class BoneLinear(AdapterLinear):
    """A frozen nn.Linear with a Bone adapter (`bone`, or `bone_A` and `bone_B` for the unconstrained form)."""

    def __init__(self, linear: nn.Linear, config: BoneConfig, name: str = "layer"):
        super().__init__(linear)
        b = config.b
        if self.in_features % b or self.out_features % b:
            raise ValueError(bone_divisibility_message(name, self.out_features, self.in_features, b))
        self.b = b
        self.grouping = config.grouping
        self.form = config.form
        self.impl = config.resolved_impl
        self.checkpoint = config.checkpoint
        n_groups = (self.in_features if config.grouping == "row" else self.out_features) // b
        names = ("bone_A", "bone_B") if config.form == "unconstrained" else ("bone",)
        for param_name in names:
            tensor = self.new_adapter_tensor(n_groups, b, b)
            if not tensor.is_meta:
                tensor.zero_()
            self.register_parameter(param_name, nn.Parameter(tensor))
        self.param_names = names

    def adapter_params(self) -> tuple:
        return tuple(getattr(self, n) for n in self.param_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        if self.impl == "factored":
            lead_shape = x.shape[:-1]
            bias = None if self.bias is None else self.bias.to(dtype)
            # Cast explicitly and run without autocast, so the Function's products all use one dtype.
            with autocast_off(x.device.type):
                y = BoneRowFactored.apply(x.reshape(-1, self.in_features).to(dtype).contiguous(),
                                          self.bone.to(dtype), self.weight.to(dtype), bias)
            return y.view(*lead_shape, self.out_features)
        if self.checkpoint and torch.is_grad_enabled():
            return torch_checkpoint(self._materialised, x, self.weight, *self.adapter_params(), use_reentrant=False)
        return self._materialised(x, self.weight, *self.adapter_params())

    def _materialised(self, x, weight, *tensors):
        dtype = compute_dtype(x)
        weight = weight.to(dtype)
        merged = weight + delta_weight(weight, tuple(t.to(dtype) for t in tensors), self.grouping, self.form)
        return F.linear(x, merged, self.bias)

    def merged_weight(self) -> torch.Tensor:
        dtype = self.adapter_dtype
        weight = self.weight.to(dtype)
        tensors = tuple(t.to(dtype) for t in self.adapter_params())
        return weight + delta_weight(weight, tensors, self.grouping, self.form)

    def describe(self) -> str:
        form = "" if self.form == "affine" else f"-{self.form}"
        cp = "+checkpoint" if self.checkpoint else ""
        return f"bone-{self.grouping}{form} b={self.b} {self.impl}{cp}"


def bone_divisibility_message(name: str, out_features: int, in_features: int, b: int) -> str:
    """The error for a layer whose shape b does not divide, with the block sizes that would work."""
    common = math.gcd(out_features, in_features)
    working = [d for d in range(1, common + 1) if common % d == 0]
    below = [d for d in working if d <= b]
    suggestion = f"b={below[-1]}" if below else f"b={working[0]}"
    return (
        f"Bone block size b={b} must divide both dimensions of {name} (nn.Linear out_features={out_features}, "
        f"in_features={in_features}, weight shape ({out_features}, {in_features})); the largest b <= {b} that "
        f"divides both is {suggestion} (any divisor of gcd={common} works), or leave {name} out of the targets"
    )
