"""The adapter contract: `AdapterConfig` (a method's settings) and `AdapterLinear` (its module), plus the helpers
every method shares (`check_int`, `adapter_dtype`, `compute_dtype`, `autocast_off`).

An adapter takes over a frozen `nn.Linear`: it holds the very same `weight` and `bias` Parameter objects under the
same attribute names, so the model's state-dict keys of the base (`X.weight`, `X.bias`) do not change and an official
checkpoint still loads into an adapted model. The adapter's own tensors sit beside them (`X.lora_A`, `X.bone`, ...).

Dtypes: adapter tensors are kept in at least fp32 (fp32 for bf16/fp16 bases, the base dtype otherwise; see
`new_adapter_tensor`), so small optimizer updates are not rounded away; every forward computes in the input's dtype
(or the autocast dtype, see `compute_dtype`).

Adding a method
---------------
A method is one file plus one entry in `src.peft.registry.METHODS` (method name -> (config class, adapter class)).
The file provides:

1. A config: a `@dataclass` subclass of `AdapterConfig` with
   - `method: ClassVar[str]`, the registry key (also the `method` stored in adapter files);
   - its settings as dataclass fields with defaults (train.py's flag defaults are read from them);
   - `__post_init__` checking every setting (each rule in this one place, with a message saying what to change);
   - `target_problem(name, out_features, in_features)` if not every nn.Linear shape fits (why not, or None);
   - optionally `flag_names` / `json_aliases` (train.py flags and RWKV-PEFT JSON keys of its fields) and a
     `flag_values` override, for `src.peft.config.peft_config_from_flags`.
2. An adapter: a subclass of `AdapterLinear` whose constructor is `(linear, config, initialise=True)`: it calls
   `super().__init__(linear)`, registers its tensors as nn.Parameters (trainable) or persistent buffers (saved,
   not trained) made with `new_adapter_tensor`, and gives them starting values unless the weight is on the meta
   device (no values) -- `initialise=False` says a saved adapter will be loaded right after (`load_tensors`), so
   costly starting values (PiSSA's SVD) may be skipped. It defines
   - `forward(x)`: y = x·(W + ΔW)ᵀ + bias computed in `compute_dtype(x)`, without forming ΔW if it can;
   - `merged_weight()`: W + ΔW, shape (out, in), in `self.adapter_dtype` (what merging folds into the base);
   - `describe()`: a short label for tables, e.g. "lora r=32";
   and overrides `load_tensors` only if copying the saved tensors back is not enough (PiSSA rebuilds its residual).
   It inherits `adapter_tensors()` (what trains and what an adapter file stores) and `to_linear()` (the merge).

Nothing else changes: injection, the trainable-parameter choice, adapter files, the summary table and merging all
go through this contract. src.peft.miss is the smallest example: MiSS, y = x·Wᵀ + (Σ_g x_g)·D with D a
zero-initialised (b, out) matrix and x_g the b-wide input blocks, is a `MissConfig(r=b)` whose `target_problem` asks
that b divide in_features, and a `MissLinear` with one Parameter `miss` of shape (b, out): forward adds
`x.view(..., in/b, b).sum(-2) @ D`, merged_weight is W + Dᵀ repeated over the in/b input blocks, describe is
"miss b=64".
"""

import contextlib
from dataclasses import asdict, fields
from typing import ClassVar, Optional

import torch
import torch.nn as nn


def check_int(label: str, value, minimum: int) -> None:
    """ValueError unless value is an int (not a bool) >= minimum; label names the setting, e.g. 'BoneConfig.b'."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}")


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


class AdapterConfig:
    """Base of the method configs (dataclasses): dict round trip, the per-layer shape check, flag reading."""

    method: ClassVar[str] = ""
    # field -> train.py flag that sets it (fields missing here are left at their default by train.py)
    flag_names: ClassVar[dict] = {}
    # RWKV-PEFT's JSON key -> field, for --<method>_config
    json_aliases: ClassVar[dict] = {}

    def label(self, name: str) -> str:
        """How error messages name a field: 'BoneConfig.b (--bone_b)'."""
        flag = self.flag_names.get(name)
        return f"{type(self).__name__}.{name}" + (f" (--{flag})" if flag else "")

    def to_dict(self) -> dict:
        """{'method': ..., field: value, ...}: what adapter files and run records store."""
        return {"method": self.method, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: Optional[str] = None):
        """The config from `to_dict`'s output (the 'method' key may be left out); source names the data in errors."""
        values = dict(data)
        method = values.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"{cls.__name__}.from_dict got method={method!r}; it reads '{cls.method}' configs")
        allowed = sorted(f.name for f in fields(cls))
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"{source or cls.__name__ + ' data'} has unknown keys {unknown}; {cls.__name__} takes "
                             f"{allowed}")
        return cls(**values)

    @classmethod
    def flag_values(cls, flags) -> dict:
        """{field: value} from train.py's flags (any object with those attributes); a flag left at None is left
        out, so its field keeps the config's default."""
        values = {}
        for name, flag in cls.flag_names.items():
            value = getattr(flags, flag)
            if value is not None:
                values[name] = value
        return values

    def target_problem(self, name: str, out_features: int, in_features: int) -> Optional[str]:
        """Why this adapter cannot wrap the nn.Linear `name` of that shape, or None when it can.

        The one place a method states which layer shapes it fits; apply_peft asks it for every target before
        changing the model."""
        return None


class AdapterLinear(nn.Module):
    """A frozen nn.Linear plus adapter tensors; see the module docstring for what a subclass provides."""

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
        """{local name: tensor} of the adapter's own tensors, in registration order: its nn.Parameters (the
        tensors that train) and persistent buffers (kept to rebuild it exactly, e.g. PiSSA's initial A, B), never
        the base weight or bias. This is what an adapter file stores for the module."""
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if k not in ("weight", "bias")}

    @torch.no_grad()
    def load_tensors(self, tensors: dict) -> None:
        """Set the adapter from a dict shaped like `adapter_tensors()` (e.g. read from an adapter file)."""
        own = self.adapter_tensors()
        if set(tensors) != set(own):
            raise ValueError(f"{type(self).__name__} holds {sorted(own)}, got {sorted(tensors)}")
        for name, tensor in own.items():
            tensor.copy_(tensors[name])

    def merged_weight(self) -> torch.Tensor:
        """W + ΔW of shape (out, in), computed in the adapter dtype (fp32, fp64 for fp64 bases)."""
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
