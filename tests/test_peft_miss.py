"""MiSS (src.peft.miss) against float64 formulas written here: ΔW built shard by shard with explicit loops, the
forward and gradients by autograd through those formulas (never through MissLinear); merging, adapter files,
train.py's flags and --dry_run counts at the RWKV6-1.6B shape, and every refusal."""
import json
from dataclasses import fields

import pytest
import torch
import torch.nn as nn

from src.peft import (
    MissConfig,
    MissLinear,
    adapter_state_dict,
    apply_peft,
    field_default,
    load_adapter,
    merge_peft,
    peft_config_from_flags,
    peft_summary,
    read_adapter,
    save_adapter,
)
from src.peft.base import AdapterLinear
from src.train.args import TrainConfig, parse_args
from src.train.launch import main
from tests.rwkv_fixtures import random_rwkv6

OUT, IN = 96, 128  # non-square on purpose: in/b input blocks, out/mini_r output blocks


def reference_delta(shard, out_features, in_features, b, form, mini_r):
    """ΔW (out, in) straight from the definitions: D (b, out) is the shard, or for 'mini' the (b, mini_r) shard
    copied into each mini_r-wide output block; then W[:, g*b:(g+1)*b] gets Dᵀ for every input block g."""
    if form == "default":
        full = shard
    else:
        full = torch.zeros(b, out_features, dtype=shard.dtype)
        for a in range(out_features // mini_r):
            full = full.index_put((torch.arange(b)[:, None], torch.arange(a * mini_r, (a + 1) * mini_r)[None, :]),
                                  shard)
    delta = torch.zeros(out_features, in_features, dtype=shard.dtype)
    for g in range(in_features // b):
        for k in range(b):
            column = g * b + k
            delta = delta.index_put((torch.arange(out_features), torch.full((out_features,), column)), full[k])
    return delta


def reference_sum_form(x, weight, shard, b, form, mini_r, bias=None):
    """y = x·Wᵀ + (Σ_g x_g)·D with the input blocks summed one by one (D tiled for 'mini')."""
    summed = sum(x[..., g * b:(g + 1) * b] for g in range(x.shape[-1] // b))
    full = shard if form == "default" else torch.cat([shard] * (weight.shape[0] // mini_r), dim=1)
    y = x @ weight.T + summed @ full
    return y if bias is None else y + bias


def make_miss(form, b, mini_r=1, dtype=torch.float64, bias=False, seed=0, out_features=OUT, in_features=IN):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    module = MissLinear(linear, MissConfig(r=b, form=form, mini_r=mini_r))
    with torch.no_grad():
        module.miss.normal_(0, 0.05)
    return module


CASES = [("default", 16, 1), ("default", 32, 1), ("mini", 16, 8), ("mini", 32, 32), ("mini", 64, 1)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("form,b,mini_r", CASES)
def test_forward_gradient_and_merge_match_the_formula(form, b, mini_r, bias):
    module = make_miss(form, b, mini_r, bias=bias)
    assert module.miss.shape == ((b, OUT) if form == "default" else (b, mini_r))
    torch.manual_seed(1)
    x = torch.randn(2, 5, IN, dtype=torch.float64)
    grad_y = torch.randn(2, 5, OUT, dtype=torch.float64)

    x_mod = x.clone().requires_grad_(True)
    y = module(x_mod)
    y.backward(grad_y)

    weight = module.weight.detach()
    bias_ref = None if module.bias is None else module.bias.detach()
    shard = module.miss.detach().clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    y_ref = x_ref @ (weight + reference_delta(shard, OUT, IN, b, form, mini_r)).T
    if bias_ref is not None:
        y_ref = y_ref + bias_ref
    y_ref.backward(grad_y)

    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_mod.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.miss.grad, shard.grad, rtol=1e-12, atol=1e-12)
    assert module.weight.grad is None
    torch.testing.assert_close(y, reference_sum_form(x, weight, module.miss.detach(), b, form, mini_r, bias_ref),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.merged_weight(), weight + reference_delta(module.miss.detach(), OUT, IN, b,
                                                                               form, mini_r), rtol=0, atol=0)
    merged = module.to_linear()
    torch.testing.assert_close(merged(x), y.detach(), rtol=1e-12, atol=1e-12)


def test_merge_adds_the_transposed_shard_to_every_input_block():
    module = make_miss("default", 32)
    with torch.no_grad():
        module.weight.zero_()  # so merged_weight() is ΔW exactly
    delta = module.merged_weight()
    for g in range(IN // 32):
        assert torch.equal(delta[:, g * 32:(g + 1) * 32], module.miss.detach().T)
    mini = make_miss("mini", 32, mini_r=16)
    with torch.no_grad():
        mini.weight.zero_()
    delta = mini.merged_weight()
    for g in range(IN // 32):
        for a in range(OUT // 16):
            assert torch.equal(delta[a * 16:(a + 1) * 16, g * 32:(g + 1) * 32], mini.miss.detach().T)


@pytest.mark.parametrize("form,b,mini_r", [("default", 32, 1), ("mini", 32, 16)])
def test_fp32_and_bf16_autocast(form, b, mini_r):
    module = make_miss(form, b, mini_r, dtype=torch.float32)
    x = torch.randn(3, 7, IN)
    want = reference_sum_form(x.double(), module.weight.detach().double(), module.miss.detach().double(), b, form,
                              mini_r)
    torch.testing.assert_close(module(x).double(), want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), want, rtol=0.05, atol=0.05)
    half = make_miss(form, b, mini_r, dtype=torch.bfloat16)
    assert half.miss.dtype == torch.float32  # adapter tensors stay fp32 on a bf16 base
    assert half(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("form,mini_r", [("default", 1), ("mini", 8)])
def test_starts_at_the_base_and_counts_b_times_out(form, mini_r):
    torch.manual_seed(0)
    linear = nn.Linear(IN, OUT, bias=True).double()
    x = torch.randn(4, IN, dtype=torch.float64)
    base = linear(x)
    module = MissLinear(linear, MissConfig(r=32, form=form, mini_r=mini_r))
    assert torch.equal(module(x), base)
    assert set(module.adapter_tensors()) == {"miss"}
    assert module.adapter_tensors()["miss"].numel() == 32 * (OUT if form == "default" else mini_r)
    assert module.describe() == ("miss b=32" if form == "default" else "miss-mini b=32 mini_r=8")


def test_dropout_acts_on_the_adapter_input_only_in_training():
    torch.manual_seed(0)
    module = MissLinear(nn.Linear(IN, OUT).double(), MissConfig(r=32, dropout=0.5))
    with torch.no_grad():
        module.miss.normal_(0, 0.5)
    x = torch.randn(4, IN, dtype=torch.float64)
    module.eval()
    torch.testing.assert_close(module(x), x @ module.merged_weight().T + module.bias, rtol=1e-12, atol=1e-12)
    module.train()
    assert not torch.allclose(module(x), x @ module.merged_weight().T + module.bias)
    assert module.describe() == "miss b=32 dropout=0.5"


# ---- on an RWKV6: merge, adapter files, counts ------------------------------------------------------------------

def randomise(model, seed=3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.02)


IDX = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("config", [MissConfig(r=64), MissConfig(r=32, form="mini", mini_r=64)])
def test_rwkv6_merge_and_adapter_round_trip(tmp_path, config):
    model = random_rwkv6(n_layer=2, n_embd=128, seed=0)  # dim_ffn 448
    with torch.no_grad():
        base_out = model(IDX)
    names = apply_peft(model, config)
    assert len(names) == 16
    with torch.no_grad():
        assert torch.equal(model(IDX), base_out)
    randomise(model)
    with torch.no_grad():
        adapted_out = model(IDX)
    assert not torch.allclose(adapted_out, base_out)
    summary = peft_summary(model)
    outs = {"att.receptance": 128, "att.key": 128, "att.value": 128, "att.gate": 128, "att.output": 128,
            "ffn.key": 448, "ffn.receptance": 128, "ffn.value": 128}
    width = (lambda out: out) if config.form == "default" else (lambda out: config.mini_r)
    assert summary["trainable"] == 2 * sum(config.r * width(out) for out in outs.values())

    path = save_adapter(model, tmp_path / "miss.pth")
    payload = read_adapter(path)
    assert payload["method"] == "miss" and payload["config"] == config.to_dict()
    fresh = random_rwkv6(n_layer=2, n_embd=128, seed=0)
    load_adapter(fresh, path)
    for (name, tensor), (fresh_name, fresh_tensor) in zip(adapter_state_dict(model).items(),
                                                          adapter_state_dict(fresh).items()):
        assert name == fresh_name and name.endswith(".miss") and torch.equal(tensor, fresh_tensor)
    with torch.no_grad():
        assert torch.equal(fresh(IDX), adapted_out)
    merge_peft(fresh)
    assert not any(isinstance(m, AdapterLinear) for m in fresh.modules())
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDX), adapted_out, rtol=1e-5, atol=1e-5)


# ---- train.py: flags, JSON, --dry_run at the 1.6B shape ---------------------------------------------------------

def test_flag_defaults_are_the_config_defaults_and_flags_build_the_config():
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, flag in MissConfig.flag_names.items():
        assert defaults[flag] == field_default(MissConfig, name)
    assert peft_config_from_flags(parse_args(["--peft", "miss"])) == MissConfig()
    assert MissConfig() == MissConfig(r=64, form="default", mini_r=1, dropout=0.0)
    cfg = parse_args(["--peft", "miss", "--miss_r", "32", "--miss_form", "mini", "--miss_mini_r", "16"])
    assert peft_config_from_flags(cfg) == MissConfig(r=32, form="mini", mini_r=16)


@pytest.mark.parametrize("text,expected", [
    ('{"r": 32}', MissConfig(r=32)),
    ('{"r": 64, "init_weights": true, "mini_r": 1, "miss_dropout": 0.0}', MissConfig(r=64)),
    ('{"r": 16, "init_weights": "mini", "mini_r": 8}', MissConfig(r=16, form="mini", mini_r=8)),
    ('{"miss_r": 16, "form": "mini", "miss_mini_r": 4, "miss_dropout": 0.1}',
     MissConfig(r=16, form="mini", mini_r=4, dropout=0.1)),
])
def test_miss_config_json_takes_hf_peft_keys(text, expected):
    config = peft_config_from_flags(parse_args(["--peft", "miss", "--miss_config", text]))
    assert config == expected
    with pytest.raises(ValueError, match="MissConfig.r is given 2 times with different values"):
        parse_args(["--peft", "miss", "--miss_r", "128", "--miss_config", text])  # not one winning silently
    assert MissConfig.from_dict(config.to_dict()) == config


def dry_run(argv, capsys):
    status = main([str(a) for a in argv] + ["--dry_run"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


SHAPE_1B6 = ["--n_layer", 24, "--n_embd", 2048, "--vocab_size", 65536]


@pytest.mark.parametrize("extra,per_module", [
    (["--miss_r", "64"], lambda out: 64 * out),
    (["--miss_r", "32"], lambda out: 32 * out),
    (["--miss_r", "64", "--miss_form", "mini", "--miss_mini_r", "64"], lambda out: 64 * 64),
    (["--miss_config", '{"r": 128, "init_weights": "mini", "mini_r": 512}'], lambda out: 128 * 512),
])
def test_dry_run_counts_at_rwkv6_1b6(extra, per_module, capsys):
    summary = dry_run(["--peft", "miss"] + extra + SHAPE_1B6, capsys)
    n_layer, d = 24, 2048
    f = int(d * 3.5) // 32 * 32  # 7168
    outs = [d] * 5 + [f, d, d]  # att.receptance/key/value/gate/output, ffn.key, ffn.receptance, ffn.value
    assert summary["adapted_modules"] == 8 * n_layer
    assert summary["trainable"] == n_layer * sum(per_module(out) for out in outs)
    if extra == ["--miss_r", "64"]:
        assert summary["trainable"] == 33_030_144  # = Table 2's Bone b=64 and LoRA r=32


# ---- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,fragments", [
    (dict(r=0), ["MissConfig.r (--miss_r) must be an integer >= 1, got 0"]),
    (dict(r=True), ["MissConfig.r (--miss_r) must be an integer"]),
    (dict(form="bat"), ["'bat' is HF peft's Bat form", "--peft bone --bone_grouping col"]),
    (dict(form=False), ["init_weights=false", "'mini'"]),
    (dict(form="row"), ["MissConfig.form (--miss_form) must be one of ('default', 'mini')", "got 'row'"]),
    (dict(form="mini", mini_r=0), ["MissConfig.mini_r (--miss_mini_r) must be an integer >= 1"]),
    (dict(mini_r=8), ["mini_r (--miss_mini_r)=8 only applies to form 'mini'", "--miss_form mini"]),
    (dict(dropout=1.0), ["MissConfig.dropout", "miss_dropout", "[0, 1)"]),
])
def test_config_refusals(kwargs, fragments):
    with pytest.raises(ValueError) as error:
        MissConfig(**kwargs)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_target_problem_names_the_module_its_dims_and_the_values_that_fit():
    message = MissConfig(r=48).target_problem("blocks.0.att.key", 2048, 2048)
    assert message.startswith("MiSS cannot wrap blocks.0.att.key (nn.Linear out_features=2048, in_features=2048, "
                              "weight shape (2048, 2048)): r=48 (--miss_r) must divide in_features=2048")
    assert "the largest r <= 48 that does is r=32" in message
    assert "1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048" in message
    assert MissConfig(r=48).target_problem("x", 2048, 96) is None  # out is free in the default form
    message = MissConfig(r=32, form="mini", mini_r=96).target_problem("blocks.0.ffn.key", 7168, 2048)
    assert "MiSS cannot wrap blocks.0.ffn.key" in message
    assert "mini_r=96 (--miss_mini_r) must divide out_features=7168" in message
    assert "largest mini_r <= 96 that does is mini_r=64" in message
    assert "r=32 (--miss_r)" not in message
    both = MissConfig(r=48, form="mini", mini_r=96).target_problem("m", 7168, 2048)
    assert "r=48 (--miss_r)" in both and "mini_r=96 (--miss_mini_r)" in both and both.count("MiSS cannot") == 1
    with pytest.raises(ValueError, match="must divide in_features=100"):
        MissLinear(nn.Linear(100, 64), MissConfig(r=64))


def test_apply_peft_refuses_before_changing_anything():
    model = random_rwkv6(n_layer=2, n_embd=128, seed=0)
    with pytest.raises(ValueError, match="MiSS cannot wrap blocks.0.att.receptance .*mini_r=3 .* must divide "
                                         "out_features=128"):
        apply_peft(model, MissConfig(r=32, form="mini", mini_r=3))
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())


@pytest.mark.parametrize("argv,fragments", [
    (["--peft", "miss", "--miss_r", "48"] + SHAPE_1B6,
     ["MiSS cannot wrap blocks.0.att.receptance", "r=48 (--miss_r) must divide in_features=2048"]),
    (["--peft", "miss", "--miss_form", "mini", "--miss_mini_r", "3"] + SHAPE_1B6,
     ["mini_r=3", "out_features=2048"]),
    (["--peft", "miss", "--miss_config", '{"init_weights": "bat"}'] + SHAPE_1B6,
     ["--peft bone --bone_grouping col"]),
    (["--peft", "miss", "--miss_config", '{"r": 64, "target_modules": ["key"]}'] + SHAPE_1B6,
     ["--miss_config has unknown keys ['target_modules']"]),
    (["--peft", "miss", "--grad_cp", "bone"] + SHAPE_1B6, ["--grad_cp bone recomputes Bone's weights"]),
])
def test_cli_refusals(argv, fragments, capsys):
    status = main([str(a) for a in argv] + ["--dry_run"])
    err = capsys.readouterr().err
    assert status == 2, err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("train.py: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in last_line, last_line
