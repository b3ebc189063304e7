"""LoRA and PiSSA adapters, and `AdapterLinear`, the wrapper every adapter of this package (Bone included) builds on.

An adapter takes over a frozen `nn.Linear`: it holds the very same `weight` and `bias` Parameter objects under the
same attribute names, so the model's state-dict keys of the base (`X.weight`, `X.bias`) do not change and an official
checkpoint still loads into an adapted model. The adapter's own tensors sit beside them (`X.lora_A`, `X.bone`, ...).

Dtypes: adapter parameters are kept in at least fp32 (fp32 for bf16/fp16 bases, the base dtype otherwise), so small
optimizer updates are not rounded away; every forward computes in the input's dtype (or the autocast dtype).

- LoRA:  y = x·Wᵀ + scale · dropout(x)·Aᵀ·Bᵀ, A [r, in] Kaiming-uniform (a=√5), B [out, r] zero, scale = alpha / r.
- PiSSA: the same forward with A, B taken from a truncated SVD of W (torch.svd_lowrank, fp32):
  W ≈ U·S·Vᵀ (rank r), B = U·√(S/scale), A = √(S/scale)·Vᵀ, and the frozen weight becomes the residual
  W_res = W − scale·B·A. The initial A, B are kept as buffers (`pissa_init_A/B`) so a saved adapter can rebuild
  exactly the same residual from the original base weight.
"""

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _check_int(owner: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


class _ConfigDict:
    """to_dict / from_dict shared by the three adapter configs (each has a `method` class attribute)."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict):
        fields = dict(data)
        method = fields.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"{cls.__name__}.from_dict got method={method!r}; it reads '{cls.method}' configs")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**fields)


@dataclass
class LoraConfig(_ConfigDict):
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    method: ClassVar[str] = "lora"

    def __post_init__(self):
        _check_int("LoraConfig", "r", self.r, 1)
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise ValueError(f"LoraConfig.alpha must be a positive number (scale = alpha / r), got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        self.alpha = float(self.alpha)
        self.dropout = float(self.dropout)


@dataclass
class PissaConfig(_ConfigDict):
    r: int = 32
    alpha: Optional[float] = None  # None: alpha = r, i.e. scale 1
    svd_niter: int = 4
    method: ClassVar[str] = "pissa"

    def __post_init__(self):
        _check_int("PissaConfig", "r", self.r, 1)
        _check_int("PissaConfig", "svd_niter", self.svd_niter, 0)
        if self.alpha is not None:
            if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
                raise ValueError(f"PissaConfig.alpha must be None (scale 1) or a positive number, got {self.alpha!r}")
            self.alpha = float(self.alpha)

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.r


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision bases, the base dtype for fp32/fp64 ones."""
    return torch.promote_types(base_dtype, torch.float32)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer computes in for input x: the autocast dtype when autocast is on, else x's."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def autocast_off(device_type: str):
    """A context that disables autocast on this device type (a no-op where autocast does not exist, e.g. meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class AdapterLinear(nn.Module):
    """A frozen nn.Linear plus trainable adapter tensors; subclasses define `forward` and `merged_weight`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear modules, got {type(linear).__name__}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.weight.requires_grad_(False)

    @property
    def adapter_dtype(self) -> torch.dtype:
        return adapter_dtype(self.weight.dtype)

    def new_adapter_tensor(self, *shape: int) -> torch.Tensor:
        """An uninitialised tensor on the base weight's device in the adapter dtype (meta stays meta)."""
        return torch.empty(shape, dtype=self.adapter_dtype, device=self.weight.device)

    def adapter_tensors(self) -> dict:
        """This module's adapter parameters and persistent buffers (everything but the base weight and bias)."""
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if k not in ("weight", "bias")}

    def merged_weight(self) -> torch.Tensor:
        """W + ΔW computed in fp32 (fp64 for fp64 bases)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short method label for tables, e.g. 'lora r=32'."""
        raise NotImplementedError

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding W + ΔW in the base dtype (the same bias Parameter)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(self.merged_weight().to(self.weight.dtype),
                                     requires_grad=self.weight.requires_grad)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.describe()}"


class LoraLinear(AdapterLinear):
    """y = x·Wᵀ + scale·dropout(x)·Aᵀ·Bᵀ (the scale is applied to the r-wide intermediate, the cheapest place)."""

    def __init__(self, linear: nn.Linear, config: LoraConfig):
        super().__init__(linear)
        self.r = config.r
        self.scale = config.alpha / config.r
        self.lora_A = nn.Parameter(self.new_adapter_tensor(self.r, self.in_features))
        self.lora_B = nn.Parameter(self.new_adapter_tensor(self.out_features, self.r))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if not self.weight.is_meta:
            with torch.no_grad():
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
        AdapterLinear.__init__(self, linear)
        self.r = config.r
        self.scale = config.scale
        self.lora_A = nn.Parameter(self.new_adapter_tensor(self.r, self.in_features))
        self.lora_B = nn.Parameter(self.new_adapter_tensor(self.out_features, self.r))
        self.register_buffer("pissa_init_A", self.new_adapter_tensor(self.r, self.in_features))
        self.register_buffer("pissa_init_B", self.new_adapter_tensor(self.out_features, self.r))
        self.dropout = nn.Identity()
        # The SVD is skipped on the meta device (no values) and when a saved adapter supplies the initial A, B.
        if initialise and not self.weight.is_meta:
            self.initialise_from_svd(config.svd_niter)

    @torch.no_grad()
    def initialise_from_svd(self, svd_niter: int) -> None:
        """Rank-r randomized SVD of W (uses the global torch RNG: seed it for reproducible runs)."""
        u, s, v = torch.svd_lowrank(self.weight.to(self.adapter_dtype), q=self.r, niter=svd_niter)
        root = (s / self.scale).sqrt()
        self.set_principal(root[:, None] * v.T, u * root)

    @torch.no_grad()
    def set_principal(self, init_A: torch.Tensor, init_B: torch.Tensor) -> None:
        """Start A, B at init_A, init_B and freeze W − scale·init_B·init_A in place of W (call once, on the base W)."""
        dtype = self.adapter_dtype
        init_A = init_A.to(device=self.weight.device, dtype=dtype)
        init_B = init_B.to(device=self.weight.device, dtype=dtype)
        residual = self.weight.to(dtype) - self.scale * (init_B @ init_A)
        self.weight.copy_(residual.to(self.weight.dtype))
        for target, value in ((self.lora_A, init_A), (self.pissa_init_A, init_A),
                              (self.lora_B, init_B), (self.pissa_init_B, init_B)):
            target.copy_(value)

    def describe(self) -> str:
        return f"pissa r={self.r}"
