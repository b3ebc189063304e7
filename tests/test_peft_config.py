"""The adapter contract and the method registry (a toy method plugs in with one class pair and one entry), and
train.py's flags -> PEFT config (defaults from the configs, every rule checked by the config, JSON overrides)."""
from dataclasses import dataclass, fields
from typing import ClassVar, Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.peft import (
    METHODS,
    AdapterConfig,
    AdapterLinear,
    BoneConfig,
    LoraConfig,
    PissaConfig,
    adapter_state_dict,
    apply_peft,
    field_default,
    load_adapter,
    make_adapter,
    merge_peft,
    peft_config_from_flags,
    peft_summary,
    save_adapter,
)
from src.peft.base import check_int, compute_dtype
from src.peft.registry import Method
from src.train.args import PEFT_METHODS, TrainConfig, parse_args

# ---- the registry and the contract -----------------------------------------------------------------------------

def test_registry_entries_are_consistent():
    assert PEFT_METHODS == ("none", "bone", "lora", "pissa", "miss", "state")  # state: src.peft.state, no Linear
    for name, (config_class, adapter_class) in METHODS.items():
        assert config_class.method == name and issubclass(config_class, AdapterConfig)
        assert issubclass(adapter_class, AdapterLinear)
        module = make_adapter(nn.Linear(64, 128), config_class(), initialise=True)
        assert type(module) is adapter_class
        tensors = module.adapter_tensors()
        assert tensors and not {"weight", "bias"} & set(tensors)
        assert module.merged_weight().shape == (128, 64) and isinstance(module.describe(), str)


@dataclass
class ToyMissConfig(AdapterConfig):
    """The MiSS shape of adapter (y = x·Wᵀ + (Σ_g x_g)·D, D zero (b, out)), written against the contract only."""

    b: int = 16
    method: ClassVar[str] = "toymiss"

    def __post_init__(self):
        check_int(self.label("b"), self.b, 1)

    def target_problem(self, name: str, out_features: int, in_features: int) -> Optional[str]:
        if in_features % self.b:
            return f"toymiss b={self.b} must divide in_features={in_features} of {name}"
        return None


class ToyMissLinear(AdapterLinear):
    def __init__(self, linear: nn.Linear, config: ToyMissConfig, initialise: bool = True):
        super().__init__(linear)
        self.b = config.b
        tensor = self.new_adapter_tensor(self.b, self.out_features)
        if not tensor.is_meta:
            tensor.zero_()
        self.miss = nn.Parameter(tensor)

    def forward(self, x):
        dtype = compute_dtype(x)
        summed = x.reshape(*x.shape[:-1], self.in_features // self.b, self.b).sum(-2)
        return F.linear(x, self.weight, self.bias) + summed @ self.miss.to(dtype)

    def merged_weight(self):
        dtype = self.adapter_dtype
        return self.weight.to(dtype) + self.miss.to(dtype).T.repeat(1, self.in_features // self.b)

    def describe(self):
        return f"toymiss b={self.b}"


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))


def test_a_new_method_needs_only_its_classes_and_a_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "toymiss", Method(ToyMissConfig, ToyMissLinear))
    x = torch.randn(3, 32)
    model = toy_model()
    base_out = model(x)
    assert apply_peft(model, ToyMissConfig(b=16), targets=["0", "2"]) == ["0", "2"]
    assert torch.equal(model(x), base_out)
    assert peft_summary(model)["trainable"] == 16 * 48 + 16 * 32
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    adapted_out = model(x)
    path = save_adapter(model, tmp_path / "toy.pth")
    fresh = toy_model()
    load_adapter(fresh, path)
    assert torch.equal(fresh(x), adapted_out)
    assert adapter_state_dict(fresh).keys() == {"0.miss", "2.miss"}
    merge_peft(fresh)
    torch.testing.assert_close(fresh(x), adapted_out, rtol=1e-5, atol=1e-5)
    odd = nn.Sequential(nn.Linear(32, 40), nn.GELU(), nn.Linear(40, 32))
    with pytest.raises(ValueError, match="toymiss b=16 must divide in_features=40 of 2"):
        apply_peft(odd, ToyMissConfig(b=16), targets=["0", "2"])
    assert not any(isinstance(m, AdapterLinear) for m in odd.modules()), "nothing changes on error"


def test_unregistered_config_is_refused():
    with pytest.raises(ValueError, match="config must be one of BoneConfig, LoraConfig, PissaConfig"):
        apply_peft(toy_model(), ToyMissConfig(), targets=["0"])


def test_pissa_load_tensors_rebuilds_the_residual():
    torch.manual_seed(0)
    base = nn.Linear(32, 24).double()
    original = base.weight.detach().clone()
    trained = make_adapter(base, PissaConfig(r=4))
    with torch.no_grad():
        trained.lora_A.add_(0.01)
    fresh_linear = nn.Linear(32, 24).double()
    with torch.no_grad():
        fresh_linear.weight.copy_(original)
    fresh = make_adapter(fresh_linear, PissaConfig(r=4), initialise=False)
    fresh.load_tensors({k: v.detach() for k, v in trained.adapter_tensors().items()})
    assert torch.equal(fresh.weight, trained.weight)
    torch.testing.assert_close(fresh.merged_weight(), trained.merged_weight(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="PissaLinear holds"):
        fresh.load_tensors({"lora_A": trained.lora_A})


# ---- flags -> config ---------------------------------------------------------------------------------------------

def test_flag_defaults_are_the_config_defaults():
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for config_class in (BoneConfig, LoraConfig, PissaConfig):
        for name, flag in config_class.flag_names.items():
            if defaults[flag] is not None:
                assert defaults[flag] == field_default(config_class, name), (config_class, name)
    assert peft_config_from_flags(parse_args(["--peft", "bone"])) == BoneConfig()
    assert peft_config_from_flags(parse_args(["--peft", "lora"])) == LoraConfig()
    assert peft_config_from_flags(parse_args(["--peft", "pissa"])) == PissaConfig()
    assert peft_config_from_flags(parse_args([])) is None


def test_flags_and_json_build_the_config():
    cfg = parse_args(["--peft", "bone", "--bone_b", "32", "--bone_grouping", "col", "--grad_cp", "bone"])
    assert peft_config_from_flags(cfg) == BoneConfig(b=32, grouping="col", checkpoint=True)
    cfg = parse_args(["--peft", "bone", "--bone_config", '{"bone_r": 16, "bone_load": ""}'])
    assert peft_config_from_flags(cfg).b == 16
    cfg = parse_args(["--peft", "lora", "--lora_r", "8", "--lora_config", '{"lora_alpha": 4, "lora_dropout": 0.1}'])
    assert peft_config_from_flags(cfg) == LoraConfig(r=8, alpha=4.0, dropout=0.1)
    cfg = parse_args(["--peft", "pissa", "--lora_r", "8", "--svd_niter", "2", "--pissa_config", '{"pissa_alpha": 16}'])
    assert peft_config_from_flags(cfg) == PissaConfig(r=8, alpha=16.0, svd_niter=2)


@pytest.mark.parametrize("argv,fragments", [
    (["--peft", "bone", "--bone_b", "0"], ["BoneConfig.b (--bone_b) must be an integer >= 1, got 0"]),
    (["--peft", "lora", "--lora_r", "0"], ["LoraConfig.r (--lora_r) must be an integer >= 1"]),
    (["--peft", "pissa", "--svd_niter", "-1"], ["PissaConfig.svd_niter (--svd_niter) must be an integer >= 0"]),
    (["--peft", "bone", "--bone_grouping", "rows"], ["BoneConfig.grouping (--bone_grouping) must be one of"]),
    (["--peft", "bone", "--bone_config", '{"b": 64, "blocks": 2}'],
     ["--bone_config has unknown keys ['blocks']; BoneConfig takes"]),
    (["--peft", "bone", "--bone_config", '{"parts": "att"}'], ["spelled --peft_targets"]),
    (["--peft", "lora", "--bone_config", "[1]"], ["--bone_config must be a JSON object"]),
])
def test_flag_errors_come_from_the_config(argv, fragments):
    with pytest.raises(ValueError) as error:
        peft_config_from_flags(parse_args(argv))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_grad_cp_bone_on_factored_bone_has_one_rule_and_one_message():
    with pytest.raises(ValueError) as from_flags:
        peft_config_from_flags(parse_args(["--peft", "bone", "--grad_cp", "bone"]))
    with pytest.raises(ValueError) as from_code:
        BoneConfig(checkpoint=True)
    assert str(from_flags.value) == str(from_code.value)
    for fragment in ("--grad_cp bone", "runs factored", "nothing to recompute", "--grad_cp layer",
                     "--bone_impl materialize"):
        assert fragment in str(from_code.value)
    assert peft_config_from_flags(parse_args(["--peft", "bone", "--grad_cp", "bone", "--bone_impl", "materialize"]))\
        .checkpoint is True


def test_block_size_message_lists_the_b_values_that_divide():
    message = BoneConfig(b=64).target_problem("blocks.0.ffn.key", 336, 96)
    assert "blocks.0.ffn.key" in message and "(336, 96)" in message
    assert "largest b <= 64 that divides both is b=48" in message
    assert "gcd=48: 1, 2, 3, 4, 6, 8, 12, 16, 24, 48" in message
    assert BoneConfig(b=16).target_problem("x", 336, 96) is None
