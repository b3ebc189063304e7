"""RWKV-7 (x070): the WKV7 operator (chunked torch op against the sequential loop, the loop against its
elementwise definition) and the model (against the `rwkv` package, state continuation, checkpointing, loading).

Tolerances (max |actual - expected| <= tol * max |expected| unless said otherwise):
- float64, torch op vs sequential loop: 1e-10 for y, the final state and every gradient (r, w, k, v, a, b and
  the initial state) at T in {1, 2, 15, 16, 17, 33} and decays at both ends of the clamp (observed ~1e-15).
- float32 torch op vs the float64 loop: 2e-5 for y and the state, 2e-4 for gradients (observed ~3e-7).
- bf16 inputs: y (returned in bf16) 1e-2, the fp32 state 1e-5, against the float64 loop on the same rounded
  inputs (observed 2e-3 and 3e-7).
- the sequential loop vs a scalar loop written from the notes' elementwise formula: 1e-12.
- model logits vs the `rwkv` package (cpu fp32, fresh process): max |diff| <= 1e-4 absolute at every position,
  3 shapes (observed ~4e-6); the package's WKV states 1e-5 relative.
- model continuation (prefix, then token by token) vs one pass: 1e-5 (fp32 rounding).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from src.checkpoint.files import save_atomic
from src.checkpoint.io import load_for_inference, load_rwkv, read_checkpoint, save_official
from src.model import RWKV7, RWKV7Config, concat_states, select_state
from src.model.rwkv7 import check_state_dict
from src.ops.wkv7 import resolve_wkv7_op, wkv7
from src.ops.wkv7_sequential import wkv7_sequential
from src.ops.wkv7_torch import wkv7_torch
from tests.rwkv7_fixtures import package_reference, random_rwkv7, write_random_checkpoint

F64_TOL = 1e-10
F32_TOL, F32_GRAD_TOL = 2e-5, 2e-4
BF16_Y_TOL, BF16_STATE_TOL = 1e-2, 1e-5
PACKAGE_TOL = 1e-4

# Ranges of the raw decay w. The clamp maps w to log d = -exp(-1/2) sigmoid(w): w = +20 sits at the strong end
# (d = exp(-0.6065) = 0.545, the smallest decay there is), w = -20 at the weak end (d = 1 - 1e-9).
DECAYS = {
    "typical": (-3.0, 3.0),
    "strong": (15.0, 20.0),
    "weak": (-20.0, -15.0),
    "mixed": (-20.0, 20.0),
}
NAMES = ("r", "w", "k", "v", "a", "b")


def make_inputs(B, T, H, N, decay="typical", with_state=True, dtype=torch.float64, seed=0):
    """r, w, k, v, a, b as the model forms them (a = -kappa_hat, b = kappa_hat * iclr, kappa_hat of unit norm per
    head), and a random initial state; on the CPU in `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = DECAYS[decay]
    r, k, v = (torch.randn(B, T, H, N, generator=gen, dtype=torch.float64) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    kappa = F.normalize(torch.randn(B, T, H, N, generator=gen, dtype=torch.float64), dim=-1)
    iclr = torch.sigmoid(2 * torch.randn(B, T, H, N, generator=gen, dtype=torch.float64))
    state = torch.randn(B, H, N, N, generator=gen, dtype=torch.float64) if with_state else None
    tensors = [x.to(dtype) for x in (r, w, k, v, -kappa, kappa * iclr)]
    return tensors, (None if state is None else state.to(dtype))


def outputs_and_grads(fn, tensors, state, seed=1):
    """y, final state and the gradients of sum(y*g) + sum(state_out*gs) for random g, gs (fixed by seed)."""
    leaves = [x.detach().clone().requires_grad_() for x in tensors]
    state_leaf = None if state is None else state.detach().clone().requires_grad_()
    y, state_out = fn(*leaves, state_leaf)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    gs = torch.randn(state_out.shape, generator=gen, dtype=torch.float64).to(state_out.dtype)
    ((y * g).sum() + (state_out * gs).sum()).backward()
    result = {"y": y.detach(), "state": state_out.detach()}
    for name, leaf in zip(NAMES, leaves):
        result["grad_" + name] = leaf.grad
    if state_leaf is not None:
        result["grad_state"] = state_leaf.grad
    return result


def assert_close_rel(actual, expected, tol, what):
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= tol * max(scale, 1e-30), f"{what}: max error {error:.3e} > {tol:g} x max |ref| {scale:.3e}"


def seq_op(r, w, k, v, a, b, state):
    return wkv7(r, w, k, v, a, b, state, op="sequential")


def torch_op(r, w, k, v, a, b, state):
    return wkv7(r, w, k, v, a, b, state, op="torch")


# ---------------------------------------------------------------- the reference itself, anchored by hand


def test_sequential_matches_elementwise_definition():
    """B=1, H=1, N=3, T=4 with an initial state: the notes' elementwise formula in Python floats, no tensors:
    u_i = sum_j S[i,j] a_j (old state); S[i,j] = S[i,j] d_j + u_i b_j + v_i k_j; y_i = sum_j S[i,j] r_j."""
    T, N = 4, 3
    (r, w, k, v, a, b), state = make_inputs(1, T, 1, N, decay="mixed", seed=5)
    y, final = wkv7_sequential(r, w, k, v, a, b, state)
    S = [[state[0, 0, i, j].item() for j in range(N)] for i in range(N)]
    for t in range(T):
        x = {name: [t_[0, t, 0, n].item() for n in range(N)] for name, t_ in zip(NAMES, (r, w, k, v, a, b))}
        d = [math.exp(-math.exp(-0.5) / (1 + math.exp(-wj))) for wj in x["w"]]
        u = [sum(S[i][j] * x["a"][j] for j in range(N)) for i in range(N)]
        S = [[S[i][j] * d[j] + u[i] * x["b"][j] + x["v"][i] * x["k"][j] for j in range(N)] for i in range(N)]
        for i in range(N):
            assert y[0, t, 0, i].item() == pytest.approx(sum(S[i][j] * x["r"][j] for j in range(N)), abs=1e-12)
    for i in range(N):
        for j in range(N):
            assert final[0, 0, i, j].item() == pytest.approx(S[i][j], abs=1e-12)


# ---------------------------------------------------------------- torch op vs sequential loop


@pytest.mark.parametrize("decay", sorted(DECAYS))
@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 33])
def test_torch_op_matches_sequential_float64(T, decay):
    tensors, state = make_inputs(2, T, 2, 8, decay=decay, seed=T)
    expected = outputs_and_grads(seq_op, tensors, state)
    actual = outputs_and_grads(torch_op, tensors, state)
    assert set(actual) == set(expected) == {"y", "state", "grad_state"} | {"grad_" + n for n in NAMES}
    for name in expected:
        assert_close_rel(actual[name], expected[name], F64_TOL, f"{name} (T={T}, {decay})")


def test_torch_op_matches_sequential_at_head_size_64_without_state():
    tensors, _ = make_inputs(1, 40, 2, 64, decay="typical", seed=3)
    expected = outputs_and_grads(seq_op, tensors, None)
    actual = outputs_and_grads(torch_op, tensors, None)
    for name in expected:
        assert_close_rel(actual[name], expected[name], F64_TOL, name)


@pytest.mark.parametrize("chunk_len", [1, 5, 16, 64])
def test_chunk_length_is_invisible(chunk_len):
    tensors, state = make_inputs(1, 37, 2, 8, decay="mixed", seed=4)
    expected = outputs_and_grads(seq_op, tensors, state)
    actual = outputs_and_grads(lambda *x: wkv7_torch(*x, chunk_len=chunk_len), tensors, state)
    for name in expected:
        assert_close_rel(actual[name], expected[name], F64_TOL, f"{name} (chunk {chunk_len})")


def test_float32_against_float64_reference():
    tensors, state = make_inputs(1, 100, 2, 64, decay="mixed", seed=6)
    expected = outputs_and_grads(seq_op, tensors, state)
    actual = outputs_and_grads(torch_op, [x.float() for x in tensors], state.float())
    assert actual["y"].dtype == actual["state"].dtype == torch.float32
    for name in expected:
        tol = F32_TOL if name in ("y", "state") else F32_GRAD_TOL
        assert_close_rel(actual[name], expected[name], tol, name)


def test_bf16_inputs_accumulate_in_float32():
    tensors, state = make_inputs(2, 50, 2, 64, decay="typical", seed=7, dtype=torch.bfloat16)
    y, final = wkv7(*tensors, state=state.float(), op="torch")
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    y_ref, final_ref = wkv7_sequential(*[x.double() for x in tensors], state.double())
    assert_close_rel(y, y_ref, BF16_Y_TOL, "y")
    assert_close_rel(final, final_ref, BF16_STATE_TOL, "state")


def test_state_passing_in_pieces_equals_one_pass():
    tensors, state = make_inputs(2, 45, 2, 8, decay="mixed", seed=8)
    y_full, s_full = wkv7_torch(*tensors, state)
    ys, s = [], state
    for start, stop in ((0, 7), (7, 23), (23, 24), (24, 45)):
        y, s = wkv7_torch(*[x[:, start:stop] for x in tensors], s)
        ys.append(y)
    assert_close_rel(torch.cat(ys, 1), y_full, F64_TOL, "y")
    assert_close_rel(s, s_full, F64_TOL, "state")


def test_state_input_is_not_modified_and_zero_state_is_default():
    tensors, _ = make_inputs(1, 20, 1, 8, seed=9)
    zeros = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    y0, s0 = wkv7(*tensors, op="torch")
    y1, s1 = wkv7(*tensors, state=zeros, op="torch")
    assert torch.equal(zeros, torch.zeros_like(zeros))
    torch.testing.assert_close(y0, y1)
    torch.testing.assert_close(s0, s1)


def test_op_input_validation():
    tensors, state = make_inputs(1, 4, 2, 8, dtype=torch.float32)
    r, w, k, v, a, b = tensors
    with pytest.raises(ValueError, match="b has shape"):
        wkv7(r, w, k, v, a, b[:, :3])
    with pytest.raises(ValueError, match="w is torch.float64"):
        wkv7(r, w.double(), k, v, a, b)
    with pytest.raises(ValueError, match=r"state must have shape \[B, H, N, N\]"):
        wkv7(r, w, k, v, a, b, state=state[:, :1])
    with pytest.raises(ValueError, match="empty"):
        wkv7(*[x[:, :0] for x in tensors])
    with pytest.raises(ValueError, match="unknown op"):
        wkv7(*tensors, op="fla")
    with pytest.raises(RuntimeError, match="no CUDA GPU.*op='torch'"):
        wkv7(*tensors, op="cuda")
    with pytest.raises(ValueError, match="chunk_len"):
        wkv7_torch(*tensors, chunk_len=65)


def test_resolve_wkv7_op():
    assert resolve_wkv7_op("auto", "cpu").op == "torch"
    assert resolve_wkv7_op("torch", "cpu").op == "torch"
    assert resolve_wkv7_op("sequential", "cpu").op == "sequential"
    with pytest.raises(RuntimeError, match="WKV7 op 'cuda' cannot run here: the device is cpu"):
        resolve_wkv7_op("cuda", "cpu")
    with pytest.raises(ValueError, match="unknown WKV op"):
        resolve_wkv7_op("fast", "cpu")


# ---------------------------------------------------------------- the model against the rwkv package

PACKAGE_SHAPES = {
    # the 0.1B LoRA widths (64/64/32/128), layer-0 v0/v1/v2 present
    "small-0.1b-widths": dict(n_layer=2, n_embd=128, vocab_size=300),
    # narrow LoRAs of four different widths, head size 32, a non-4C ffn, NO layer-0 v0/v1/v2
    "no-layer0-v-head32": dict(n_layer=3, n_embd=128, vocab_size=97, dim_ffn=256, head_size=32, dim_w_lora=32,
                               dim_a_lora=48, dim_v_lora=16, dim_g_lora=64, layer0_value_lora=False),
    # the 1.5B/2.9B w/a/v widths (96/96/64), three heads
    "wide-1.5b-widths": dict(n_layer=2, n_embd=192, vocab_size=211, dim_w_lora=96, dim_a_lora=96, dim_v_lora=64,
                             dim_g_lora=160),
}
PACKAGE_TOKENS = 37  # crosses two chunk boundaries and ends mid-chunk


@pytest.fixture(scope="module")
def package_runs(tmp_path_factory):
    """Every PACKAGE_SHAPES checkpoint, written once, and the package's logits and states for it, computed in
    one fresh process."""
    workdir = tmp_path_factory.mktemp("rwkv7_package")
    jobs, runs = [], {}
    for i, (name, shape) in enumerate(PACKAGE_SHAPES.items()):
        path = workdir / f"{name}.pth"
        write_random_checkpoint(path, seed=10 + i, **shape)
        gen = torch.Generator().manual_seed(i)
        tokens = torch.randint(0, shape["vocab_size"], (PACKAGE_TOKENS,), generator=gen).tolist()
        jobs.append((path, tokens))
        runs[name] = {"path": path, "tokens": tokens}
    for (name, run), result in zip(runs.items(), package_reference(jobs, workdir)):
        run.update(result)
    return runs


@pytest.mark.parametrize("name", list(PACKAGE_SHAPES))
def test_logits_and_state_match_rwkv_package(package_runs, name):
    run, shape = package_runs[name], PACKAGE_SHAPES[name]
    model = load_rwkv(run["path"], wkv_op="torch", dtype=torch.float32).eval()
    assert isinstance(model, RWKV7)
    config = model.config
    for field in ("dim_w_lora", "dim_a_lora", "dim_v_lora", "dim_g_lora", "head_size", "dim_ffn",
                  "layer0_value_lora"):
        if field in shape:
            assert getattr(config, field) == shape[field], field
    with torch.no_grad():
        logits, state = model(torch.tensor([run["tokens"]]), return_state=True)
    expected = run["logits"]
    assert logits[0].shape == expected.shape
    error = (logits[0] - expected).abs().max().item()
    print(f"{name}: max |logit diff| vs rwkv package = {error:.2e} (max |logit| {expected.abs().max():.2f})")
    assert error <= PACKAGE_TOL, f"{name}: max |logit diff| {error:.3e} > {PACKAGE_TOL}"
    for i, (att_shift, wkv_state, ffn_shift) in enumerate(state):
        assert wkv_state.dtype == torch.float32
        assert_close_rel(wkv_state[0], run["state"][3 * i + 1], 1e-5, f"layer {i} WKV state [head, value, key]")
        assert_close_rel(att_shift[0], run["state"][3 * i], 1e-5, f"layer {i} att shift")
        assert_close_rel(ffn_shift[0], run["state"][3 * i + 2], 1e-5, f"layer {i} ffn shift")


# ---------------------------------------------------------------- the model on its own


def test_state_continuation_token_by_token_and_batching():
    model = random_rwkv7(n_layer=2, n_embd=64, vocab_size=50, head_size=16, dim_w_lora=16, dim_a_lora=16,
                         dim_v_lora=8, dim_g_lora=32, seed=1).eval()
    idx = torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, full_state = model(idx, return_state=True)
        pieces, state = [], None
        first, state = model(idx[:, :9], return_state=True)
        pieces.append(first)
        for t in range(9, 21):
            step, state = model(idx[:, t:t + 1], state=state, return_state=True)
            pieces.append(step)
        torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
        for (a1, s1, f1), (a2, s2, f2) in zip(state, full_state):
            torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a1, a2)
            torch.testing.assert_close(f1, f2)
        # rows of a batch evolve independently: a state sliced to one row continues that row alone
        _, prefix_state = model(idx[:, :9], return_state=True)
        row, _ = model(idx[2:, 9:], state=select_state(prefix_state, [2]), return_state=True)
        torch.testing.assert_close(row, full[2:, 9:], rtol=1e-5, atol=1e-5)
        both = concat_states([select_state(prefix_state, [0]), select_state(prefix_state, [1])])
        rows, _ = model(idx[:2, 9:], state=both, return_state=True)
        torch.testing.assert_close(rows, full[:2, 9:], rtol=1e-5, atol=1e-5)


def test_layer_checkpointing_gives_same_gradients():
    """v_first crosses every checkpointed block as an argument: layer 0's value projection gets its gradient from
    the later layers' value residual, recomputed or not."""
    model = random_rwkv7(n_layer=3, n_embd=64, vocab_size=50, head_size=16, dim_w_lora=16, dim_a_lora=16,
                         dim_v_lora=8, dim_g_lora=32, seed=2)
    idx = torch.randint(0, 50, (2, 19), generator=torch.Generator().manual_seed(2))
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.config.layer_checkpointing = flag
        model(idx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0]["blocks.0.att.value.weight"].abs().max() > 0
    assert grads[0]["blocks.2.att.v1"].abs().max() > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_layer0_value_lora_is_kept_but_never_read(tmp_path):
    with_v = random_rwkv7(n_layer=2, n_embd=64, vocab_size=40, head_size=16, seed=3).eval()
    keys = set(with_v.state_dict())
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    assert unused <= keys
    assert not unused & {n for n, _ in with_v.named_parameters()}  # buffers: no gradient, no optimizer state
    sd = {k: v.clone() for k, v in with_v.state_dict().items()}
    without = RWKV7.from_state_dict({k: v for k, v in sd.items() if k not in unused}, "torch")
    assert not without.config.layer0_value_lora and "blocks.0.att.v0" not in without.state_dict()
    sd["blocks.0.att.v0"].fill_(1e6)
    sd["blocks.0.att.v2"].normal_()
    scrambled = RWKV7.from_state_dict(sd, "torch").eval()
    idx = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        reference = with_v(idx)
        torch.testing.assert_close(without.eval()(idx), reference, rtol=0, atol=0)
        torch.testing.assert_close(scrambled(idx), reference, rtol=0, atol=0)
    # the file's keys are written back exactly
    save_official(without, tmp_path / "a.pth")
    assert set(read_checkpoint(tmp_path / "a.pth")) == keys - unused


def test_bf16_model_is_close_to_fp32():
    fp32 = random_rwkv7(n_layer=2, n_embd=128, vocab_size=100, seed=4).eval()
    bf16 = random_rwkv7(n_layer=2, n_embd=128, vocab_size=100, seed=4).to(torch.bfloat16).eval()
    idx = torch.randint(0, 100, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = fp32(idx)
        logits, state = bf16(idx, return_state=True)
    assert logits.dtype == torch.bfloat16 and state[0][1].dtype == torch.float32
    assert_close_rel(logits, expected, 0.1, "bf16 logits")


def test_official_init_values():
    C, L, N = 128, 4, 64
    model = RWKV7(RWKV7Config(n_layer=L, n_embd=C, vocab_size=300)).init_weights(seed=0)
    att, ffn = model.blocks[1].att, model.blocks[1].ffn
    r01, r1a0 = 1 / 3, 1 - 1 / 4
    n = 70
    linear = n / (C - 1) - 0.5
    zig = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    zig *= abs(zig)
    assert att.x_r[0, 0, n].item() == pytest.approx(1 - (n / C) ** (0.2 * r1a0), rel=1e-6)
    assert att.x_w[0, 0, n].item() == pytest.approx(1 - (n / C) ** (0.9 * r1a0), rel=1e-6)
    assert att.x_k[0, 0, n].item() == pytest.approx(1 - (n / C) ** (0.7 * r1a0), rel=1e-6)
    www = -6 + 6 * (n / (C - 1)) ** (1 + r01 ** 0.3)
    assert att.w0[0, 0, n].item() == pytest.approx(www + 0.5 + 2.5 * zig, rel=1e-6)
    assert att.a0[0, 0, n].item() == pytest.approx(-0.19 + 0.3 * zig + 0.4 * linear, rel=1e-5)
    assert att.v0[0, 0, n].item() == pytest.approx(0.73 - 0.4 * linear, rel=1e-6)
    assert att.k_k[0, 0, n].item() == pytest.approx(0.71 - 0.1 * linear, rel=1e-6)
    assert torch.all(att.k_a == 1.02) and torch.all(att.r_k == -0.04)
    assert ffn.x_k[0, 0, n].item() == pytest.approx(1 - (n / C) ** (r1a0 ** 4), rel=1e-6)
    assert att.ln_x.weight[0].item() == pytest.approx((2 / L) ** 0.7) and att.ln_x.eps == 64e-5
    for zero in (att.w1, att.a1, att.v1, att.g1, att.output.weight, ffn.value.weight):
        assert zero.abs().max() == 0
    g2 = att.g2  # orthogonal rows, gain 0.1
    torch.testing.assert_close(g2 @ g2.T, 0.01 * torch.eye(g2.shape[0]), atol=1e-6, rtol=0)
    for linear_layer, gain in ((att.receptance, 1.0), (att.key, 0.1), (ffn.key, 1.0)):
        weight = linear_layer.weight  # (out, in); ffn.key is tall: orthonormal columns, no widening
        gram = weight.T @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.T
        torch.testing.assert_close(gram, gain ** 2 * torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
    assert model.emb.weight.abs().max() <= 1e-4
    head = model.head.weight  # (V, C), V > C: gain 0.5 sqrt(V / C)
    torch.testing.assert_close(head.T @ head, 0.25 * 300 / C * torch.eye(C), atol=1e-4, rtol=0)


def test_config_inferred_from_tensors(tmp_path):
    path = tmp_path / "RWKV-x070-World-2.9B-misleading-name.pth"
    write_random_checkpoint(path, n_layer=2, n_embd=128, vocab_size=64, dim_ffn=320, dim_w_lora=48, dim_a_lora=32,
                            dim_v_lora=16, dim_g_lora=96, head_size=32)
    config = RWKV7Config.from_state_dict(read_checkpoint(path))
    assert (config.n_layer, config.n_embd, config.vocab_size, config.dim_ffn) == (2, 128, 64, 320)
    assert (config.head_size, config.n_head) == (32, 4)
    assert (config.dim_w_lora, config.dim_a_lora, config.dim_v_lora, config.dim_g_lora) == (48, 32, 16, 96)


def test_load_for_inference_dispatches_to_rwkv7(tmp_path):
    path = tmp_path / "m.pth"
    write_random_checkpoint(path, n_layer=2, n_embd=64, vocab_size=32, head_size=16, dtype=torch.bfloat16)
    model = load_for_inference(read_checkpoint(path), "auto", "cpu", torch.float32)
    assert isinstance(model, RWKV7) and not model.training and model.config.wkv_op == "torch"
    assert model.head.weight.dtype == torch.float32 and not model.head.weight.requires_grad
    with pytest.raises(RuntimeError, match="WKV7 op 'cuda' cannot run here"):
        load_for_inference(read_checkpoint(path), "cuda", "cpu", torch.float32)


# ---------------------------------------------------------------- bad checkpoints


def _state_dict(**kwargs):
    shape = dict(n_layer=2, n_embd=64, vocab_size=32, head_size=16, dim_w_lora=16, dim_a_lora=16, dim_v_lora=8,
                 dim_g_lora=32) | kwargs
    return {k: v.clone() for k, v in random_rwkv7(**shape).state_dict().items()}


def test_error_missing_key(tmp_path):
    sd = _state_dict()
    del sd["blocks.1.att.k_a"]
    save_atomic(sd, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.1\.att\.k_a"):
        load_rwkv(tmp_path / "m.pth", wkv_op="torch")


def test_error_missing_required_key():
    sd = _state_dict()
    del sd["blocks.0.att.g1"]
    with pytest.raises(ValueError, match="missing 'blocks.0.att.g1'"):
        RWKV7Config.from_state_dict(sd)


def test_error_wrong_lora_width(tmp_path):
    sd = _state_dict()
    sd["blocks.1.att.a1"] = torch.zeros(64, 24)
    sd["blocks.1.att.a2"] = torch.zeros(24, 64)
    save_atomic(sd, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"inconsistent shapes.*blocks\.1\.att\.a1: file \(64, 24\), expected "
                                         r"\(64, 16\)"):
        load_rwkv(tmp_path / "m.pth", wkv_op="torch")


def test_error_partial_layer0_value_lora():
    sd = _state_dict()
    del sd["blocks.0.att.v2"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.0\.att\.v2"):
        RWKV7Config.from_state_dict(sd)


def test_error_deep_embed(tmp_path):
    sd = _state_dict()
    for i in range(2):
        sd[f"blocks.{i}.ffn.s_emb.weight"] = torch.zeros(32, 1024)
        sd[f"blocks.{i}.ffn.s1"] = torch.zeros(64, 32)
    save_atomic(sd, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"DeepEmbed \(rwkv7a\).*blocks\.0\.ffn\.s1"):
        load_rwkv(tmp_path / "m.pth", wkv_op="torch")


def test_error_pre_release_x070_names(tmp_path):
    sd = {"emb.weight": torch.zeros(8, 64), "blocks.0.att.time_maa_x": torch.zeros(1, 1, 64),
          "blocks.0.att.time_aaaaa": torch.zeros(1, 1, 64), "blocks.0.att.time_faaaa": torch.zeros(1, 1, 1, 64)}
    save_atomic(sd, tmp_path / "m.pth")
    with pytest.raises(ValueError, match="pre-release x070 naming"):
        load_rwkv(tmp_path / "m.pth", wkv_op="torch")


def test_error_rwkv6_file_given_to_rwkv7():
    from tests.rwkv_fixtures import random_rwkv6

    sd = random_rwkv6(n_layer=1, n_embd=64, vocab_size=16).state_dict()
    with pytest.raises(ValueError, match=r"RWKV6 \(x060\)"):
        RWKV7Config.from_state_dict(sd)


def test_loading_takes_a_chosen_op_and_never_chooses():
    sd = _state_dict()
    assert RWKV7.from_state_dict(sd, wkv_op="cuda").config.wkv_op == "cuda"  # stored as chosen, not re-checked
    with pytest.raises(ValueError, match="wkv_op must be one of"):
        RWKV7.from_state_dict(sd, wkv_op="auto")


def test_check_state_dict_accepts_its_own_output():
    config = RWKV7Config(n_layer=2, n_embd=64, vocab_size=32, head_size=16)
    check_state_dict(RWKV7(config).state_dict(), config)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_torch_op_on_cuda_matches_float64_reference():
    tensors, state = make_inputs(2, 70, 4, 64, decay="mixed", seed=11)
    expected = outputs_and_grads(seq_op, tensors, state)
    cuda = [x.float().cuda() for x in tensors]
    actual = outputs_and_grads(torch_op, cuda, state.float().cuda())
    for name in expected:
        tol = F32_TOL if name in ("y", "state") else F32_GRAD_TOL
        assert_close_rel(actual[name].cpu(), expected[name], tol, f"cuda {name}")


@pytest.mark.gpu
def test_model_on_cuda_matches_cpu():
    model = random_rwkv7(n_layer=2, n_embd=128, vocab_size=100, seed=12).eval()
    idx = torch.randint(0, 100, (2, 33), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        expected = model(idx)
        actual = model.cuda()(idx.cuda()).cpu()
    assert_close_rel(actual, expected, 1e-4, "cuda logits")
