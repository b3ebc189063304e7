"""LoRA and PiSSA adapters (see src.peft.base for the contract they implement).

- LoRA:  y = x·Wᵀ + scale · dropout(x)·Aᵀ·Bᵀ, A [r, in] Kaiming-uniform (a=√5), B [out, r] zero, scale = alpha / r.
- PiSSA: the same forward with A, B taken from a truncated SVD of W (torch.svd_lowrank, fp32):
  W ≈ U·S·Vᵀ (rank r), B = U·√(S/scale), A = √(S/scale)·Vᵀ, and the frozen weight becomes the residual
  W_res = W − scale·B·A. The initial A, B are kept as buffers (`pissa_init_A/B`) so a saved adapter can rebuild
  exactly the same residual from the original base weight.
"""

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.peft.base import AdapterConfig, AdapterLinear, check_int, compute_dtype


def _is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def rank_problem(config, name: str, out_features: int, in_features: int) -> Optional[str]:
    """Why rank r cannot adapt an (out, in) layer, or None: B·A has rank at most min(out, in), so a larger r only
    adds parameters that cannot change ΔW (LoRA) or asks the SVD for more components than exist (PiSSA)."""
    limit = min(out_features, in_features)
    if config.r <= limit:
        return None
    return (f"{config.label('r')}={config.r} exceeds the rank limit of {name} (weight shape ({out_features}, "
            f"{in_features})): r must be at most min(out_features, in_features) = {limit}; pass r <= {limit}, or "
            f"leave {name} out of the targets")


@dataclass
class LoraConfig(AdapterConfig):
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    method: ClassVar[str] = "lora"
    flag_names: ClassVar[dict] = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"}
    json_aliases: ClassVar[dict] = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}

    def __post_init__(self):
        check_int(self.label("r"), self.r, 1)
        if not _is_positive_number(self.alpha):
            raise ValueError(f"{self.label('alpha')} must be a positive number (scale = alpha / r), got "
                             f"{self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{self.label('dropout')} must be in [0, 1), got {self.dropout!r}")
        self.alpha = float(self.alpha)
        self.dropout = float(self.dropout)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def target_problem(self, name: str, out_features: int, in_features: int) -> Optional[str]:
        return rank_problem(self, name, out_features, in_features)


@dataclass
class PissaConfig(AdapterConfig):
    r: int = 32
    alpha: Optional[float] = None  # None: alpha = r, i.e. scale 1
    svd_niter: int = 4
    method: ClassVar[str] = "pissa"
    dropout: ClassVar[float] = 0.0  # PiSSA trains without dropout (LoraLinear's dropout is the identity)
    flag_names: ClassVar[dict] = {"r": "lora_r", "alpha": "lora_alpha", "svd_niter": "svd_niter"}
    json_aliases: ClassVar[dict] = {"pissa_r": "r", "pissa_alpha": "alpha"}

    def __post_init__(self):
        check_int(self.label("r"), self.r, 1)
        check_int(self.label("svd_niter"), self.svd_niter, 0)
        if self.alpha is not None:
            if not _is_positive_number(self.alpha):
                raise ValueError(f"{self.label('alpha')} must be None (scale 1) or a positive number, got "
                                 f"{self.alpha!r}")
            self.alpha = float(self.alpha)

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.r

    def target_problem(self, name: str, out_features: int, in_features: int) -> Optional[str]:
        return rank_problem(self, name, out_features, in_features)


class LoraLinear(AdapterLinear):
    """y = x·Wᵀ + scale·dropout(x)·Aᵀ·Bᵀ (the scale is applied to the r-wide intermediate, the cheapest place)."""

    def __init__(self, linear: nn.Linear, config: LoraConfig, initialise: bool = True):
        super().__init__(linear)
        self.r = config.r
        self.scale = config.scale
        self.lora_A = nn.Parameter(self.new_adapter_tensor(self.r, self.in_features))
        self.lora_B = nn.Parameter(self.new_adapter_tensor(self.out_features, self.r))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if not self.weight.is_meta:
            self.start_low_rank()

    @torch.no_grad()
    def start_low_rank(self) -> None:
        """LoRA's start: A Kaiming-uniform, B zero. Drawn even when a saved adapter follows (initialise=False), so
        the torch RNG advances the same way in a fresh and in a loaded run."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        dtype = compute_dtype(x)
        low = F.linear(self.dropout(x), self.lora_A.to(dtype)) * self.scale
        return y + F.linear(low, self.lora_B.to(dtype))

    def merged_weight(self) -> torch.Tensor:
        dtype = self.adapter_dtype
        return self.weight.to(dtype) + self.scale * (self.lora_B.to(dtype) @ self.lora_A.to(dtype))

    def describe(self) -> str:
        return f"lora r={self.r}"


class PissaLinear(LoraLinear):
    """LoRA whose A, B start as the principal singular components of W, with W replaced by the frozen residual."""

    def __init__(self, linear: nn.Linear, config: PissaConfig, initialise: bool = True):
        super().__init__(linear, config, initialise)
        self.register_buffer("pissa_init_A", self.new_adapter_tensor(self.r, self.in_features))
        self.register_buffer("pissa_init_B", self.new_adapter_tensor(self.out_features, self.r))
        # The SVD is skipped on the meta device (no values) and when a saved adapter supplies the initial A, B.
        if initialise and not self.weight.is_meta:
            self.initialise_from_svd(config.svd_niter)

    def start_low_rank(self) -> None:
        """Nothing here: PiSSA's A, B come from the SVD of W (or from the saved adapter), set by __init__."""

    @torch.no_grad()
    def initialise_from_svd(self, svd_niter: int) -> None:
        """Rank-r randomized SVD of W (uses the global torch RNG: seed it for reproducible runs)."""
        u, s, v = torch.svd_lowrank(self.weight.to(self.adapter_dtype), q=self.r, niter=svd_niter)
        root = (s / self.scale).sqrt()
        self.set_principal(root[:, None] * v.T, u * root)

    @torch.no_grad()
    def set_principal(self, init_A: torch.Tensor, init_B: torch.Tensor) -> None:
        """Start A, B at init_A, init_B and freeze W − scale·init_B·init_A in place of W (call once, on the base W)."""
        for target, value in ((self.pissa_init_A, init_A), (self.pissa_init_B, init_B)):
            target.copy_(value)
        self.lora_A.copy_(self.pissa_init_A)
        self.lora_B.copy_(self.pissa_init_B)
        self.freeze_residual()

    @torch.no_grad()
    def freeze_residual(self) -> None:
        """W ← W − scale·pissa_init_B·pissa_init_A, in fp32 (call once, on the base W)."""
        dtype = self.adapter_dtype
        residual = self.weight.to(dtype) - self.scale * (self.pissa_init_B.to(dtype) @ self.pissa_init_A.to(dtype))
        self.weight.copy_(residual.to(self.weight.dtype))

    @torch.no_grad()
    def load_tensors(self, tensors: dict) -> None:
        """Take the saved tensors, then rebuild the residual from the saved initial A, B (on the base W)."""
        super().load_tensors(tensors)
        self.freeze_residual()

    def describe(self) -> str:
        return f"pissa r={self.r}"
