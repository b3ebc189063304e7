r"""Bone (Block Affine) adapters for a frozen nn.Linear.

Notation: W is the frozen weight of shape (out, in), cut into b×b blocks W[a,j] (output block a < out/b, input
block j < in/b). x is one token's input, cut into b-vectors x_j; the layer computes y = x·Wᵀ (+ bias).
Every trainable tensor is a stack of b×b matrices, zero-initialised so the adapted layer starts equal to the base:

    grouping "row" (Bone-row, what RWKV-PEFT shipped): one matrix per input block,  shape (in/b, b, b),  g = j
    grouping "col" (Bone-col):                         one matrix per output block, shape (out/b, b, b), g = a

    form "affine" (Bone):                    ΔW[a,j] = W[a,j]·bone[g] + bone[g]
    form "unconstrained" (Table 6 ablation): ΔW[a,j] = W[a,j]·A[g] + B[g]          (A = B = 0 at start)
    form "hadamard" (Table 6 ablation):      ΔW[a,j] = W[a,j]∘bone[g] + bone[g]    (elementwise)

and the layer computes y = x·(W + ΔW)ᵀ. Trainable count: in·b (row) or out·b (col) per layer, twice that for
"unconstrained".

Factored row form (impl "factored", the default for row/affine): ΔW is never formed. With u_j = x_j·bone[j]ᵀ,

    y = (x + u)·Wᵀ + tile(Σ_j u_j)        tile: the b-vector repeated over the out/b output blocks

and the backward keeps only x (derivation, gradients and memory layout: docs/bone-factored.md). The other forms
(impl "materialize") form W + ΔW every step; `checkpoint=True` recomputes it in backward instead of keeping it.
"""

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from src.peft.base import AdapterConfig, AdapterLinear, autocast_off, check_int, compute_dtype

GROUPINGS = ("row", "col")
FORMS = ("affine", "unconstrained", "hadamard")
IMPLS = ("auto", "factored", "materialize")


@dataclass
class BoneConfig(AdapterConfig):
    b: int = 64
    grouping: str = "row"
    form: str = "affine"
    impl: str = "auto"
    checkpoint: bool = False
    method: ClassVar[str] = "bone"
    flag_names: ClassVar[dict] = {"b": "bone_b", "grouping": "bone_grouping", "form": "bone_form",
                                  "impl": "bone_impl"}
    json_aliases: ClassVar[dict] = {"bone_r": "b", "r": "b"}

    def __post_init__(self):
        check_int(self.label("b"), self.b, 1)
        for name, allowed in (("grouping", GROUPINGS), ("form", FORMS), ("impl", IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{self.label(name)} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.checkpoint, bool):
            raise ValueError(f"BoneConfig.checkpoint must be true or false, got {self.checkpoint!r}")
        if self.impl == "factored" and not self.factorable:
            raise ValueError(
                f"BoneConfig impl='factored' exists only for grouping='row', form='affine' (got grouping="
                f"'{self.grouping}', form='{self.form}'); use impl='materialize' (or 'auto')"
            )
        if self.checkpoint and self.resolved_impl == "factored":
            raise ValueError(
                "BoneConfig checkpoint=True (--grad_cp bone) recomputes the materialised Bone weights W + ΔW in "
                "backward, but row/affine Bone runs factored (impl 'auto' or 'factored') and keeps nothing "
                "W-sized, so there is nothing to recompute; drop checkpoint (use --grad_cp layer to checkpoint "
                "whole blocks instead), or set impl='materialize' (--bone_impl materialize) to run and checkpoint "
                "the materialised form"
            )

    @classmethod
    def flag_values(cls, flags) -> dict:
        """The Bone flags, plus checkpoint=True for --grad_cp bone."""
        return {**super().flag_values(flags), "checkpoint": flags.grad_cp == "bone"}

    @property
    def factorable(self) -> bool:
        """True for the row/affine form, the one BoneRowFactored computes."""
        return self.grouping == "row" and self.form == "affine"

    def target_problem(self, name: str, out_features: int, in_features: int) -> Optional[str]:
        """b must divide both dimensions; the message names the layer, its shape and the b values that fit."""
        b = self.b
        if not (out_features % b or in_features % b):
            return None
        common = math.gcd(out_features, in_features)
        fitting = [d for d in range(1, common + 1) if common % d == 0]
        best = max(d for d in fitting if d <= b)
        return (
            f"Bone block size b={b} must divide both dimensions of {name} (nn.Linear out_features={out_features}, "
            f"in_features={in_features}, weight shape ({out_features}, {in_features})); the largest b <= {b} that "
            f"divides both is b={best}, and the b values that divide both are the divisors of gcd={common}: "
            f"{', '.join(map(str, fitting))}; or leave {name} out of the targets"
        )

    @property
    def resolved_impl(self) -> str:
        """'factored' or 'materialize': what impl='auto' means for this grouping and form."""
        if self.impl == "auto":
            return "factored" if self.factorable else "materialize"
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
    """y = (x + u)·Wᵀ + tile(Σ_j u_j), u_j = x_j·bone[j]ᵀ, on x of shape (T, in); see docs/bone-factored.md."""

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
    """A frozen nn.Linear with a Bone adapter (`bone`, or `bone_A` and `bone_B` for the unconstrained form).

    b must divide in_features and out_features: apply_peft checks that for every target (BoneConfig.target_problem)
    before building any adapter."""

    def __init__(self, linear: nn.Linear, config: BoneConfig, initialise: bool = True):
        super().__init__(linear)
        b = config.b
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
                tensor.zero_()  # cheap, so done even when a saved adapter follows
            self.register_parameter(param_name, nn.Parameter(tensor))
        self.param_names = names

    def _bone_tensors(self) -> tuple:
        """(bone,) or (bone_A, bone_B), in the order delta_weight takes them (adapter_tensors() lists them by name)."""
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
            return torch_checkpoint(self.materialised_forward, x, self.weight, *self._bone_tensors(),
                                    use_reentrant=False)
        return self.materialised_forward(x, self.weight, *self._bone_tensors())

    def materialised_forward(self, x, weight, *tensors):
        """F.linear(x, W + ΔW): the forward of every form but factored row/affine (what checkpoint=True reruns)."""
        dtype = compute_dtype(x)
        weight = weight.to(dtype)
        merged = weight + delta_weight(weight, tuple(t.to(dtype) for t in tensors), self.grouping, self.form)
        return F.linear(x, merged, self.bias)

    def merged_weight(self) -> torch.Tensor:
        dtype = self.adapter_dtype
        weight = self.weight.to(dtype)
        tensors = tuple(t.to(dtype) for t in self._bone_tensors())
        return weight + delta_weight(weight, tensors, self.grouping, self.form)

    def describe(self) -> str:
        form = "" if self.form == "affine" else f"-{self.form}"
        cp = "+checkpoint" if self.checkpoint else ""
        return f"bone-{self.grouping}{form} b={self.b} {self.impl}{cp}"
