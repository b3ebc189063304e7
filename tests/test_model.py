"""The RWKV6 model against the `rwkv` pip package, and checkpoint loading errors."""
import pytest
import torch

from src.checkpoint.files import save_atomic
from src.checkpoint.io import load_rwkv, read_checkpoint
from src.model import RWKV6, RWKV6Config, concat_states, select_state
from tests.rwkv_fixtures import random_rwkv6, rwkv_package_model, write_random_checkpoint


@pytest.mark.parametrize(
    "shape",
    [
        dict(n_layer=2, n_embd=128, vocab_size=300, dim_maa_lora=32, dim_decay_lora=64),
        # the 7B/14B layout: mini-LoRA dims 64/128, and a non-default ffn width
        dict(n_layer=3, n_embd=128, vocab_size=97, dim_ffn=256, dim_maa_lora=64, dim_decay_lora=128),
    ],
)
def test_logits_match_rwkv_package(tmp_path, shape):
    path = tmp_path / "model.pth"
    write_random_checkpoint(path, seed=3, **shape)
    tokens = torch.randint(0, shape["vocab_size"], (23,), generator=torch.Generator().manual_seed(0)).tolist()

    reference = rwkv_package_model(path)
    expected, _ = reference.forward(tokens, None, full_output=True)

    model = load_rwkv(path, wkv_op="torch", dtype=torch.float32).eval()
    assert model.config.dim_maa_lora == shape["dim_maa_lora"]
    assert model.config.dim_decay_lora == shape["dim_decay_lora"]
    with torch.no_grad():
        logits = model(torch.tensor([tokens]))[0]
    assert logits.shape == expected.shape
    err = (logits - expected).abs().max().item()
    assert err < 1e-4 * max(1.0, expected.abs().max().item()), err


def test_state_continuation_and_batching():
    model = random_rwkv6(n_layer=2, n_embd=64, vocab_size=50, seed=1).eval()
    idx = torch.randint(0, 50, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        first, state = model(idx[:, :9], return_state=True)
        second, _ = model(idx[:, 9:], state=state, return_state=True)
        torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-5, atol=1e-5)
        # rows of a batch evolve independently: a state sliced to one row continues that row alone
        one = select_state(state, [2])
        row, _ = model(idx[2:, 9:], state=one, return_state=True)
        torch.testing.assert_close(row, full[2:, 9:], rtol=1e-5, atol=1e-5)
        both = concat_states([select_state(state, [0]), select_state(state, [1])])
        rows, _ = model(idx[:2, 9:], state=both, return_state=True)
        torch.testing.assert_close(rows, full[:2, 9:], rtol=1e-5, atol=1e-5)


def test_layer_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = random_rwkv6(n_layer=2, n_embd=64, vocab_size=50, seed=2)
    idx = torch.randint(0, 50, (2, 12))
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.config.layer_checkpointing = flag
        model(idx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_official_init_values():
    model = RWKV6(RWKV6Config(n_layer=4, n_embd=64, vocab_size=10)).init_weights(seed=0)
    C, L = 64, 4
    att = model.blocks[1].att
    r0, r1 = 1 / 3, 1 - 1 / 4
    n = 10
    assert att.time_decay[0, 0, n].item() == pytest.approx(-6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r0), rel=1e-6)
    assert att.time_maa_v[0, 0, n].item() == pytest.approx(1 - ((n / C) ** r1 + 0.3 * r0), rel=1e-6)
    bonus = r0 * (1 - n / (C - 1)) + ((n + 1) % 3 - 1) * 0.1
    assert att.time_faaaa.flatten()[n].item() == pytest.approx(bonus, abs=1e-6)
    assert att.ln_x.weight[0].item() == pytest.approx((2 / L) ** 0.7)
    assert att.output.weight.abs().max() == 0 and model.blocks[0].ffn.value.weight.abs().max() == 0
    w = model.blocks[0].att.receptance.weight
    torch.testing.assert_close(w @ w.T, torch.eye(C), atol=1e-5, rtol=0)


def test_config_inferred_from_tensors(tmp_path):
    path = tmp_path / "RWKV-x060-World-7B-misleading-name.pth"
    write_random_checkpoint(path, n_layer=2, n_embd=128, vocab_size=64, dim_ffn=448)
    config = RWKV6Config.from_state_dict(read_checkpoint(path))
    assert (config.n_layer, config.n_embd, config.vocab_size, config.dim_ffn) == (2, 128, 64, 448)
    assert (config.dim_maa_lora, config.dim_decay_lora, config.head_size) == (32, 64, 64)


def _checkpoint(tmp_path, **kwargs):
    path = tmp_path / "m.pth"
    write_random_checkpoint(path, n_layer=2, n_embd=64, vocab_size=32, **kwargs)
    return path, dict(torch.load(path))


def test_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*RWKV-x060"):
        load_rwkv(tmp_path / "nope.pth", wkv_op="torch")


def test_error_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_rwkv(path, wkv_op="torch")


@pytest.mark.parametrize(
    "keys,name",
    [
        ({"blocks.0.att.time_mix_k": 1, "blocks.0.att.ln_x.weight": 1}, "RWKV-5"),
        ({"blocks.0.att.time_mix_k": 1, "blocks.0.att.time_first": 1}, "RWKV-4"),
    ],
)
def test_error_other_rwkv_version(tmp_path, keys, name):
    path = tmp_path / "other.pth"
    save_atomic({k: torch.zeros(v) for k, v in keys.items()} | {"emb.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(ValueError, match=f"{name}.*RWKV6 \\(x060\\) only"):
        load_rwkv(path, wkv_op="torch")


def test_a_partial_rwkv7_file_is_read_as_rwkv7_and_refused_by_its_missing_key(tmp_path):
    path = tmp_path / "x070.pth"
    save_atomic({"blocks.0.att.x_r": torch.zeros(1), "blocks.0.att.w0": torch.zeros(1),
                 "emb.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(ValueError, match="missing 'blocks.0.att.r_k'.*RWKV-7"):
        load_rwkv(path, wkv_op="torch")


def test_error_missing_and_unexpected_keys(tmp_path):
    path, sd = _checkpoint(tmp_path)
    del sd["blocks.1.att.gate.weight"]
    sd["blocks.1.att.gate.bone"] = torch.zeros(1, 64, 64)
    save_atomic(sd, path)
    with pytest.raises(ValueError, match="missing keys.*blocks.1.att.gate.weight.*unexpected keys.*gate.bone"):
        load_rwkv(path, wkv_op="torch")


def test_error_inconsistent_shapes(tmp_path):
    path, sd = _checkpoint(tmp_path)
    sd["blocks.1.ffn.value.weight"] = torch.zeros(64, 100)
    save_atomic(sd, path)
    with pytest.raises(ValueError, match=r"inconsistent shapes.*blocks.1.ffn.value.weight: file \(64, 100\)"):
        load_rwkv(path, wkv_op="torch")


def test_error_training_checkpoint(tmp_path):
    path = tmp_path / "train.ckpt"
    save_atomic({"state_dict": {"emb.weight": torch.zeros(2, 2)}, "global_step": 3}, path)
    with pytest.raises(ValueError, match="training checkpoint"):
        load_rwkv(path, wkv_op="torch")
