"""apply_peft / merge_peft / adapter files / summary on RWKV6-shaped module trees (plain nn.Linear stacks)."""
import pytest
import torch
import torch.nn as nn

from src.peft import (
    BoneConfig,
    LoraConfig,
    PissaConfig,
    adapter_state_dict,
    apply_peft,
    base_fingerprint,
    format_peft_table,
    load_adapter,
    merge_peft,
    parse_parts,
    peft_summary,
    save_adapter,
)
from src.peft.base import AdapterLinear


class TimeMixShapes(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.time_maa_x = nn.Parameter(torch.zeros(1, 1, c))
        self.time_decay_w1 = nn.Parameter(torch.zeros(c, 8))
        for name in ("receptance", "key", "value", "gate", "output"):
            setattr(self, name, nn.Linear(c, c, bias=False))
        self.ln_x = nn.GroupNorm(1, c)

    def forward(self, x):
        x = x + self.time_maa_x
        mixed = torch.sigmoid(self.receptance(x)) * self.value(x) + torch.tanh(self.key(x)) * self.gate(x)
        return self.output(mixed)


class ChannelMixShapes(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, c))
        self.key = nn.Linear(c, f, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    def forward(self, x):
        return torch.sigmoid(self.receptance(x)) * self.value(torch.relu(self.key(x + self.time_maa_k)).square())


class BlockShapes(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.att, self.ffn = TimeMixShapes(c), ChannelMixShapes(c, f)

    def forward(self, x):
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class RWKVShapes(nn.Module):
    """The RWKV6 module names and Linear shapes (att.* [C,C]; ffn.key [F,C], receptance [C,C], value [C,F])."""

    def __init__(self, n_layer, c, f, vocab=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, c)
        self.blocks = nn.ModuleList(BlockShapes(c, f) for _ in range(n_layer))
        self.ln_out = nn.LayerNorm(c)
        self.head = nn.Linear(c, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_out(x))


def small_model(seed=0, n_layer=2, c=128, f=448):
    torch.manual_seed(seed)
    model = RWKVShapes(n_layer, c, f)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def randomise_adapters(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.05)


IDX = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(5))
METHOD_CONFIGS = [BoneConfig(b=64), BoneConfig(b=32, impl="materialize", checkpoint=True),
                  BoneConfig(b=64, grouping="col"), BoneConfig(b=32, grouping="col", form="unconstrained"),
                  BoneConfig(b=64, form="hadamard"), LoraConfig(r=8, alpha=16.0), PissaConfig(r=8)]


# ---- Table 2 counts, on the meta device ------------------------------------------------------------------------

@pytest.mark.parametrize("n_layer,c,f,expected", [(24, 2048, 7168, 33_030_144), (32, 2560, 8960, 55_050_240),
                                                  (32, 4096, 14336, 88_080_384)])
@pytest.mark.parametrize("config", [BoneConfig(b=64), BoneConfig(b=64, grouping="col"), LoraConfig(r=32),
                                    PissaConfig(r=32)])
def test_table2_trainable_counts(n_layer, c, f, expected, config):
    with torch.device("meta"):
        model = RWKVShapes(n_layer, c, f)
    names = apply_peft(model, config)
    summary = peft_summary(model)
    assert len(names) == summary["adapted_modules"] == 8 * n_layer
    assert summary["trainable"] == expected
    assert sum(row[4] for row in summary["rows"]) == expected
    base = sum(p.numel() for n, p in model.named_parameters() if "bone" not in n and "lora" not in n)
    assert summary["total"] == base + expected


# ---- targets and trainable parts ---------------------------------------------------------------------------------

def test_targets_default_parts_and_suffixes():
    expected_att = ["att.receptance", "att.key", "att.value", "att.gate", "att.output"]
    names = apply_peft(small_model(), BoneConfig(b=64))
    assert names == [f"blocks.{i}.{s}" for i in range(2) for s in expected_att + ["ffn.key", "ffn.receptance",
                                                                                    "ffn.value"]]
    assert apply_peft(small_model(), LoraConfig(r=4), targets="att") == [
        f"blocks.{i}.{s}" for i in range(2) for s in expected_att]
    assert apply_peft(small_model(), LoraConfig(r=4), targets=["ffn"]) == [
        f"blocks.{i}.ffn.{s}" for i in range(2) for s in ("key", "receptance", "value")]
    assert apply_peft(small_model(), LoraConfig(r=4), targets=["att.key", "head"]) == [
        "blocks.0.att.key", "blocks.1.att.key", "head"]
    with pytest.raises(ValueError, match="match no module"):
        apply_peft(small_model(), LoraConfig(r=4), targets=["attn.q_proj"])
    with pytest.raises(ValueError, match="not nn.Linear"):
        apply_peft(small_model(), LoraConfig(r=4), targets=["ln1"])


def test_only_adapters_and_train_parts_train():
    model = small_model()
    apply_peft(model, BoneConfig(b=64), train_parts="time,ln")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(("bone" in n) or ("time" in n) or ("ln" in n) for n in trainable)
    assert "blocks.0.att.time_maa_x" in trainable and "blocks.1.ln2.weight" in trainable
    assert "blocks.0.att.ln_x.bias" in trainable and "ln_out.weight" in trainable
    assert sum("bone" in n for n in trainable) == 16
    assert not any(n.endswith(("key.weight", "head.weight", "emb.weight")) for n in trainable)
    # a part that also matches adapted weights ("att") leaves those weights frozen
    model = small_model()
    apply_peft(model, LoraConfig(r=4), targets="ffn", train_parts=("att",))
    params = dict(model.named_parameters())
    assert params["blocks.0.att.key.weight"].requires_grad  # not adapted here: trained as a part
    assert not params["blocks.0.ffn.key.weight"].requires_grad
    model = small_model()
    apply_peft(model, LoraConfig(r=4), train_parts=("att",))
    assert not dict(model.named_parameters())["blocks.0.att.key.weight"].requires_grad
    with pytest.raises(ValueError, match="match no parameter"):
        apply_peft(small_model(), BoneConfig(b=64), train_parts="time,lnn")


def test_parse_parts():
    assert parse_parts("time,ln") == ("time", "ln")
    assert parse_parts(" time , ln ,") == ("time", "ln")
    assert parse_parts("") == () and parse_parts("none") == () and parse_parts(None) == ()
    assert parse_parts(("time",)) == ("time",) and parse_parts([]) == ()
    assert parse_parts("[]") == ()  # RWKV-PEFT's launchers spell "none" so
    for bad in ("['time']", "[time]", "time ln"):
        with pytest.raises(ValueError, match="comma-separated"):
            parse_parts(bad)


def test_b_not_dividing_names_the_layer_and_a_working_b():
    model = small_model(c=96, f=336)  # 96 = 3·32: b=64 divides neither att nor ffn shapes
    with pytest.raises(ValueError) as error:
        apply_peft(model, BoneConfig(b=64))
    message = str(error.value)
    assert "blocks.0.att.receptance" in message and "(96, 96)" in message and "b=48" in message
    assert not any(isinstance(m, AdapterLinear) for m in model.modules()), "nothing changes on error"
    with pytest.raises(ValueError, match=r"blocks\.0\.ffn\.key .*\(336, 96\).*b=48"):
        apply_peft(small_model(c=96, f=336), BoneConfig(b=64), targets=["ffn.key"])


def test_second_apply_is_refused():
    model = small_model()
    apply_peft(model, LoraConfig(r=4))
    with pytest.raises(ValueError, match="already has adapters"):
        apply_peft(model, BoneConfig(b=64))


# ---- merge ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda c: str(c.to_dict()))
def test_zero_start_then_merge_equals_unmerged(config):
    model = small_model()
    base_logits = model(IDX)
    base_keys = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    apply_peft(model, config, train_parts="ln")
    torch.testing.assert_close(model(IDX), base_logits, rtol=1e-5, atol=1e-6)  # PiSSA: W_res + BA = W in fp32
    if not isinstance(config, PissaConfig):
        assert torch.equal(model(IDX), base_logits), "zero-initialised adapters leave logits unchanged"
    randomise_adapters(model)
    adapted_logits = model(IDX)
    assert (adapted_logits - base_logits).abs().max() > 1e-3
    merge_peft(model)
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    assert all(type(model.get_submodule(f"blocks.0.ffn.{n}")) is nn.Linear for n in ("key", "value"))
    assert {k: (v.shape, v.dtype) for k, v in model.state_dict().items()} == base_keys
    assert not hasattr(model, "peft_state")
    torch.testing.assert_close(model(IDX), adapted_logits, rtol=1e-5, atol=1e-5)


def test_merge_keeps_bf16_dtype():
    model = small_model().to(torch.bfloat16)
    apply_peft(model, BoneConfig(b=64, grouping="col"))
    randomise_adapters(model)
    merged_weight = model.get_submodule("blocks.1.ffn.value").merged_weight()
    assert merged_weight.dtype == torch.float32
    merge_peft(model)
    weight = model.get_submodule("blocks.1.ffn.value").weight
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, merged_weight.to(torch.bfloat16))


# ---- adapter files --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", METHOD_CONFIGS[:4] + METHOD_CONFIGS[5:], ids=lambda c: str(c.to_dict()))
def test_save_load_round_trip_is_exact(tmp_path, config):
    torch.manual_seed(3)
    model = small_model()
    fingerprint = base_fingerprint(model)
    apply_peft(model, config, train_parts="time")
    randomise_adapters(model)
    path = save_adapter(model, tmp_path / "adapter.pth", config, fingerprint, extra={"step": 7, "note": "x"})
    assert not list(tmp_path.glob(".*tmp")), "atomic write leaves no temporary file"

    fresh = small_model()
    torch.manual_seed(99)  # a different RNG state: PiSSA must not depend on a new SVD
    meta = load_adapter(fresh, path)
    assert meta["extra"] == {"step": 7, "note": "x"} and meta["config"] == config.to_dict()
    saved, loaded = adapter_state_dict(model), adapter_state_dict(fresh)
    assert saved.keys() == loaded.keys()
    assert any(".time_" in k for k in saved)
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    assert torch.equal(fresh(IDX), model(IDX))
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


def test_load_refuses_another_base(tmp_path):
    model = small_model(seed=0)
    apply_peft(model, BoneConfig(b=64))
    path = save_adapter(model, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(small_model(seed=1), path)
    with pytest.raises(ValueError, match="other shapes"):
        load_adapter(small_model(seed=0, f=512), path)
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(small_model(seed=0), path, base_fingerprint="sha256:0000000000000000")
    with pytest.raises(FileNotFoundError):
        load_adapter(small_model(), tmp_path / "missing.pth")
    torch.save({"emb.weight": torch.zeros(2)}, tmp_path / "not_adapter.pth")
    with pytest.raises(ValueError, match="not an adapter file"):
        load_adapter(small_model(), tmp_path / "not_adapter.pth")
    adapted = small_model(seed=0)
    apply_peft(adapted, BoneConfig(b=64))
    with pytest.raises(ValueError, match="fresh base model"):
        load_adapter(adapted, path)
    load_adapter(small_model(seed=0), path)  # the right base loads


def test_fingerprint_properties():
    model = small_model()
    state = model.state_dict()
    fingerprint = base_fingerprint(model)
    assert fingerprint.startswith("sha256:") and len(fingerprint) == len("sha256:") + 16
    assert base_fingerprint(state) == fingerprint
    assert base_fingerprint({k: v.to(torch.bfloat16) for k, v in state.items()}) == fingerprint
    changed = dict(state)
    changed["blocks.1.ffn.value.weight"] = state["blocks.1.ffn.value.weight"] * 1.01
    assert base_fingerprint(changed) != fingerprint
    assert base_fingerprint(state, targets="att") != fingerprint
    apply_peft(model, PissaConfig(r=8))  # PiSSA rewrote W; the recorded base fingerprint is kept
    assert base_fingerprint(model) == fingerprint
    with pytest.raises(ValueError, match="no weight matches"):
        base_fingerprint(state, targets=["nothing.here"])


# ---- summary ----------------------------------------------------------------------------------------------------

def test_summary_table():
    model = small_model()
    apply_peft(model, BoneConfig(b=64), targets="ffn", train_parts="ln")
    summary = peft_summary(model)
    ln_params = sum(p.numel() for n, p in model.named_parameters() if "ln" in n)
    assert summary["adapted_modules"] == 6
    assert summary["rows"][0] == ("blocks.0.ffn.key", "bone-row b=64 factored", 128, 448, 128 * 64)
    assert summary["trainable"] == 2 * (128 + 128 + 448) * 64 + ln_params
    assert summary["method"] == "bone" and summary["peft_init_seconds"] >= 0
    table = format_peft_table(summary)
    assert "blocks.1.ffn.value" in table and f"{summary['trainable']:,}" in table


# ---- the RWKV6 model itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_layer,c,expected", [(24, 2048, 33_030_144), (32, 2560, 55_050_240),
                                                (32, 4096, 88_080_384)])
def test_table2_counts_on_rwkv6_meta(n_layer, c, expected):
    from src.model import RWKV6, RWKV6Config

    with torch.device("meta"):
        model = RWKV6(RWKV6Config(n_layer=n_layer, n_embd=c, vocab_size=65536))
    assert len(apply_peft(model, BoneConfig(b=64))) == 8 * n_layer
    assert peft_summary(model)["trainable"] == expected


def test_rwkv6_bone_zero_start_trains_merges_and_loads_in_rwkv_package(tmp_path):
    from src.checkpoint.io import save_official
    from tests.rwkv_fixtures import random_rwkv6, rwkv_package_model

    model = random_rwkv6(n_layer=2, n_embd=128, vocab_size=256, seed=4)
    idx = torch.randint(0, 256, (1, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base_logits = model(idx)
    fingerprint = base_fingerprint(model)
    apply_peft(model, BoneConfig(b=64), train_parts="time,ln")
    assert torch.equal(model(idx).detach(), base_logits), "zero-initialised Bone leaves the logits unchanged"
    model(idx).logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for n, p in model.named_parameters() if "bone" in n)
    randomise_adapters(model)
    with torch.no_grad():
        adapted_logits = model(idx)
    path = save_adapter(model, tmp_path / "adapter.pth", extra={"step": 1})

    reloaded = random_rwkv6(n_layer=2, n_embd=128, vocab_size=256, seed=4)
    load_adapter(reloaded, path, base_fingerprint=fingerprint)
    with torch.no_grad():
        assert torch.equal(reloaded(idx), adapted_logits)
        merge_peft(model)
        merged_logits = model(idx)
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-5, atol=1e-5)
    save_official(model, tmp_path / "merged.pth")
    expected, _ = rwkv_package_model(tmp_path / "merged.pth").forward(idx[0].tolist(), None, full_output=True)
    err = (expected - adapted_logits[0]).abs().max().item()
    assert err < 1e-4 * max(1.0, expected.abs().max().item()), err
