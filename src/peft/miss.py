r"""MiSS (Matrix Shard Sharing) adapters for a frozen nn.Linear: one shared, zero-initialised shard per layer.

Notation: W is the frozen weight of shape (out, in); x is one token's input, cut into in/b b-wide blocks x_g
(g < in/b), and S = Σ_g x_g is their sum, a b-vector. The layer computes y = x·Wᵀ (+ bias). b is HF peft's `r`.

    form "default" (HF peft's MiSS default, init_weights=True):  one matrix D of shape (b, out)
        y = x·Wᵀ + S·D
        ΔW = [Dᵀ Dᵀ ... Dᵀ]  (in/b copies side by side: W[:, g·b:(g+1)·b] += Dᵀ for every g)
        trainable per layer: b·out

    form "mini" (HF peft's init_weights="mini"):  one matrix M of shape (b, mini_r)
        D = [M M ... M]  (out/mini_r copies along the output), so ΔW is Mᵀ tiled both ways
        y = x·Wᵀ + tile(S·M)   tile: the mini_r-vector repeated over the out/mini_r output blocks
        trainable per layer: b·mini_r

Both start at zero, so the adapted layer starts equal to the base. The forward never forms ΔW: besides the base
product it costs one sum over the input blocks and a (T, b)·(b, out) (or (b, mini_r)) product, and backward keeps
only S (T×b) beyond what the base layer keeps.

HF peft's third MissConfig form, init_weights="bat", is Bone with one b×b matrix per output block, which this
package has as Bone-col (`--peft bone --bone_grouping col`, src.peft.bone); MissConfig refuses it with that
pointer. Naming across projects: this "default" form is what RWKV-PEFT later shipped as "bone" (DiSHA `mode:
bone`); RWKV-PEFT's first Bone (Sept-Oct 2024, later "Bat", DiSHA `mode: bat`) is our Bone-row.
"""

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.peft.base import AdapterConfig, AdapterLinear, check_int, compute_dtype

FORMS = ("default", "mini")
BAT_MESSAGE = (
    "MissConfig.form (--miss_form; HF peft's init_weights) 'bat' is HF peft's Bat form, Bone with one b×b matrix "
    "per output block (ΔW[a,j] = W[a,j]·M[a] + M[a]); here that is Bone-col: use --peft bone --bone_grouping col "
    "--bone_b R (BoneConfig(b=R, grouping='col')) with R = your miss r"
)


def divisors(n: int) -> list:
    """The positive divisors of n, ascending."""
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@dataclass
class MissConfig(AdapterConfig):
    """MiSS settings, in HF peft's MissConfig meanings: r is the block width b (it must divide in_features),
    form is init_weights (True -> "default", "mini" -> "mini"), mini_r the output width of the mini shard (it must
    divide out_features), dropout is miss_dropout (applied to the adapter's input only)."""

    r: int = 64
    form: str = "default"
    mini_r: int = 1
    dropout: float = 0.0
    method: ClassVar[str] = "miss"
    flag_names: ClassVar[dict] = {"r": "miss_r", "form": "miss_form", "mini_r": "miss_mini_r"}
    json_aliases: ClassVar[dict] = {"miss_r": "r", "b": "r", "init_weights": "form", "miss_mini_r": "mini_r",
                                    "miss_dropout": "dropout"}

    def __post_init__(self):
        check_int(self.label("r"), self.r, 1)
        # HF peft's init_weights values arrive here through the json alias init_weights -> form.
        if self.form is True:
            self.form = "default"
        elif self.form == "bat":
            raise ValueError(BAT_MESSAGE)
        elif self.form is False:
            raise ValueError(
                f"{self.label('form')} got init_weights=false (HF peft's random, non-zero start, meant for its "
                f"tests); MiSS here always starts at zero so the adapted model starts equal to the base: use "
                f"init_weights true (form 'default') or 'mini'"
            )
        if self.form not in FORMS:
            raise ValueError(f"{self.label('form')} must be one of {FORMS} (HF peft's init_weights true or 'mini'; "
                             f"'bat' is --peft bone --bone_grouping col), got {self.form!r}")
        check_int(self.label("mini_r"), self.mini_r, 1)
        if self.form == "default" and self.mini_r != 1:
            raise ValueError(
                f"{self.label('mini_r')}={self.mini_r} only applies to form 'mini' (the shard is (r, mini_r), "
                f"tiled over the output); the default form's shard is (r, out_features): add --miss_form mini "
                f"(init_weights 'mini') or drop mini_r"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{self.label('dropout')} (HF peft's miss_dropout) must be in [0, 1), got "
                             f"{self.dropout!r}")
        self.dropout = float(self.dropout)

    def target_problem(self, name: str, out_features: int, in_features: int) -> Optional[str]:
        """r must divide in_features (and mini_r out_features for 'mini'); the message names the layer, its shape and
        the values that fit."""
        problems = []
        for setting, value, dim, what in (("r", self.r, in_features, "in_features"),
                                          ("mini_r", self.mini_r, out_features, "out_features")):
            if (setting == "mini_r" and self.form != "mini") or dim % value == 0:
                continue
            fitting = divisors(dim)
            best = max(d for d in fitting if d <= value)
            problems.append(
                f"{setting}={value} (--{self.flag_names[setting]}) must divide {what}={dim} (the largest "
                f"{setting} <= {value} that does is {setting}={best}; the values that divide {dim} are "
                f"{', '.join(map(str, fitting))})"
            )
        if not problems:
            return None
        return (f"MiSS cannot wrap {name} (nn.Linear out_features={out_features}, in_features={in_features}, "
                f"weight shape ({out_features}, {in_features})): {'; '.join(problems)}; or leave {name} out of "
                f"the targets")


class MissLinear(AdapterLinear):
    """A frozen nn.Linear with a MiSS adapter `miss`: (r, out) for the default form, (r, mini_r) for 'mini'.

    r must divide in_features (and mini_r out_features): apply_peft checks that for every target
    (MissConfig.target_problem) before building any adapter."""

    def __init__(self, linear: nn.Linear, config: MissConfig, initialise: bool = True):
        super().__init__(linear)
        problem = config.target_problem("this layer", self.out_features, self.in_features)
        if problem:
            raise ValueError(problem)
        self.b = config.r
        self.form = config.form
        self.mini_r = config.mini_r
        width = self.out_features if self.form == "default" else self.mini_r
        tensor = self.new_adapter_tensor(self.b, width)
        if not tensor.is_meta:
            tensor.zero_()
        self.miss = nn.Parameter(tensor)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        y = F.linear(x, self.weight, self.bias)
        lead_shape = x.shape[:-1]
        # S = Σ_g x_g, summed in x's dtype and cast once (a (T, b) tensor, the only thing backward keeps).
        shard_input = self.dropout(x).reshape(-1, self.in_features // self.b, self.b).sum(1).to(dtype)
        y = y.reshape(-1, self.out_features)
        if self.form == "default":
            y = torch.addmm(y, shard_input, self.miss.to(dtype))
        else:
            small = shard_input.mm(self.miss.to(dtype))  # (T, mini_r)
            y = y.view(-1, self.out_features // self.mini_r, self.mini_r) + small.unsqueeze(1)
        return y.view(*lead_shape, self.out_features)

    def delta_weight(self) -> torch.Tensor:
        """ΔW of shape (out, in) in the adapter dtype: the shard's transpose tiled over the input blocks (and, for
        'mini', over the output blocks)."""
        shard_t = self.miss.to(self.adapter_dtype).T  # (width, b)
        return shard_t.repeat(self.out_features // shard_t.shape[0], self.in_features // self.b)

    def merged_weight(self) -> torch.Tensor:
        return self.weight.to(self.adapter_dtype) + self.delta_weight()

    def describe(self) -> str:
        drop = f" dropout={self.dropout.p:g}" if isinstance(self.dropout, nn.Dropout) else ""
        if self.form == "mini":
            return f"miss-mini b={self.b} mini_r={self.mini_r}{drop}"
        return f"miss b={self.b}{drop}"
