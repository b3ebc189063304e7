"""Adapter math against independent float64 formulas: ΔW built block by block with explicit loops, LoRA/PiSSA from
their definitions, gradients by autograd through those formulas (never through the code under test)."""
import itertools

import pytest
import torch
import torch.nn as nn

from src.peft import BoneConfig, BoneLinear, LoraConfig, LoraLinear, PissaConfig, PissaLinear
from src.peft.bone import BoneRowFactored

OUT, IN = 192, 128  # non-square on purpose: row groups = IN/b, col groups = OUT/b


def reference_delta(weight, tensors, b, grouping, form):
    """ΔW by explicit loops over the b×b blocks (a, j), straight from the definitions."""
    n_out, n_in = weight.shape[0] // b, weight.shape[1] // b
    rows = []
    for a in range(n_out):
        row = []
        for j in range(n_in):
            g = j if grouping == "row" else a
            block = weight[a * b:(a + 1) * b, j * b:(j + 1) * b]
            if form == "affine":
                row.append(block @ tensors[0][g] + tensors[0][g])
            elif form == "hadamard":
                row.append(block * tensors[0][g] + tensors[0][g])
            else:
                row.append(block @ tensors[0][g] + tensors[1][g])
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


def bone_cases():
    cases = []
    for b in (64, 32):
        cases += [("row", "affine", "factored", False, b), ("row", "affine", "materialize", False, b),
                  ("row", "affine", "materialize", True, b), ("col", "affine", "materialize", False, b),
                  ("col", "affine", "materialize", True, b)]
    for grouping, form in itertools.product(("row", "col"), ("unconstrained", "hadamard")):
        cases += [(grouping, form, "materialize", False, 32), (grouping, form, "materialize", True, 64)]
    return cases


def make_bone(grouping, form, impl, checkpoint, b, dtype=torch.float64, bias=False, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(IN, OUT, bias=bias).to(dtype)
    module = BoneLinear(linear, BoneConfig(b=b, grouping=grouping, form=form, impl=impl, checkpoint=checkpoint))
    with torch.no_grad():
        for p in module.adapter_tensors().values():
            p.normal_(0, 0.05)
    return module


def run_and_reference(module, tensors_of, reference_weight, x_shape=(2, 5, IN), seed=1):
    """Forward+backward through `module` and through the float64 reference W' = reference_weight(W, tensors)."""
    torch.manual_seed(seed)
    dtype = module.weight.dtype
    x = torch.randn(*x_shape, dtype=torch.float64)
    grad_y = torch.randn(*x_shape[:-1], module.out_features, dtype=torch.float64)

    x_mod = x.to(dtype).detach().requires_grad_(True)
    y = module(x_mod)
    y.backward(grad_y.to(y.dtype))
    grads = [p.grad for p in tensors_of(module)]

    w64 = module.weight.detach().double()
    ref_tensors = [p.detach().double().requires_grad_(True) for p in tensors_of(module)]
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = x_ref @ reference_weight(w64, ref_tensors).T
    if module.bias is not None:
        y_ref = y_ref + module.bias.detach().double()
    y_ref.backward(grad_y)
    return (y, x_mod.grad, grads), (y_ref, x_ref.grad, [t.grad for t in ref_tensors])


def assert_close_all(got, want, rtol, atol):
    (y, gx, gp), (y_ref, gx_ref, gp_ref) = got, want
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=rtol, atol=atol)
    for g, g_ref in zip(gp, gp_ref):
        torch.testing.assert_close(g.double(), g_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("grouping,form,impl,checkpoint,b", bone_cases())
def test_bone_matches_float64_formula(grouping, form, impl, checkpoint, b):
    module = make_bone(grouping, form, impl, checkpoint, b)
    assert module.impl == impl
    got, want = run_and_reference(
        module, lambda m: m.adapter_tensors().values(),
        lambda w, ts: w + reference_delta(w, ts, b, grouping, form))
    assert_close_all(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grouping,impl", [("row", "factored"), ("row", "materialize"), ("col", "materialize")])
def test_bone_fp32_with_bias_close_to_float64_formula(grouping, impl):
    module = make_bone(grouping, "affine", impl, False, 64, dtype=torch.float32, bias=True)
    got, want = run_and_reference(
        module, lambda m: m.adapter_tensors().values(),
        lambda w, ts: w + reference_delta(w, ts, 64, grouping, "affine"))
    assert_close_all(got, want, rtol=1e-4, atol=1e-4)


def test_factored_function_gradcheck_including_weight_and_bias():
    torch.manual_seed(0)
    x = torch.randn(5, 24, dtype=torch.float64, requires_grad=True)
    bone = torch.randn(3, 8, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, 24, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BoneRowFactored.apply, (x, bone, weight, bias))
    # and ∂W against the materialised formula: W' = W + W·bone + bone is affine in W
    weight_ref = weight.detach().clone().requires_grad_(True)
    grad_y = torch.randn(5, 16, dtype=torch.float64)
    BoneRowFactored.apply(x.detach(), bone.detach(), weight, None).backward(grad_y)
    (x.detach() @ (weight_ref + reference_delta(weight_ref, [bone.detach()], 8, "row", "affine")).T).backward(grad_y)
    torch.testing.assert_close(weight.grad, weight_ref.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grouping,form,impl,checkpoint,b", bone_cases()[:5] + bone_cases()[-4:])
def test_zero_initialised_bone_is_the_base_layer_and_still_trains(grouping, form, impl, checkpoint, b):
    torch.manual_seed(0)
    linear = nn.Linear(IN, OUT, bias=False)
    module = BoneLinear(linear, BoneConfig(b=b, grouping=grouping, form=form, impl=impl, checkpoint=checkpoint))
    x = torch.randn(3, 7, IN)
    y = module(x)
    assert torch.equal(y, nn.functional.linear(x, linear.weight))
    y.square().sum().backward()
    for p in module.adapter_tensors().values():
        assert p.grad is not None and p.grad.abs().max() > 0, "a zero-initialised adapter must get a gradient"


def weight_sized_saved_tensors(module, x):
    """How many tensors autograd keeps from forward to backward that are as big as W, W itself excluded."""
    count = []

    def pack(t):
        if t.numel() >= module.weight.numel() and t.data_ptr() != module.weight.data_ptr():
            count.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    y.sum().backward()
    return count


@pytest.mark.parametrize("grouping,form", [("row", "affine"), ("col", "affine"), ("row", "hadamard"),
                                          ("col", "unconstrained")])
def test_checkpoint_keeps_no_weight_sized_tensor(grouping, form):
    x = torch.randn(4, IN, requires_grad=True)  # fewer tokens than W has rows: x is smaller than W
    plain = make_bone(grouping, form, "materialize", False, 32, dtype=torch.float32)
    checkpointed = make_bone(grouping, form, "materialize", True, 32, dtype=torch.float32)
    assert len(weight_sized_saved_tensors(plain, x)) >= 1
    assert weight_sized_saved_tensors(checkpointed, x) == []
    # the checkpointed gradients are the plain ones
    for m in (plain, checkpointed):
        for p in m.adapter_tensors().values():
            p.grad = None
        m(x).square().sum().backward()
    for p, q in zip(plain.adapter_tensors().values(), checkpointed.adapter_tensors().values()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_factored_keeps_no_weight_sized_tensor():
    module = make_bone("row", "affine", "factored", False, 32, dtype=torch.float32)
    assert weight_sized_saved_tensors(module, torch.randn(4, IN, requires_grad=True)) == []


def test_lora_matches_float64_formula():
    torch.manual_seed(0)
    module = LoraLinear(nn.Linear(IN, OUT, bias=True).double(), LoraConfig(r=8, alpha=24.0))
    with torch.no_grad():
        module.lora_B.normal_(0, 0.1)
    got, want = run_and_reference(
        module, lambda m: (m.lora_A, m.lora_B), lambda w, ts: w + (24.0 / 8) * ts[1] @ ts[0])
    assert_close_all(got, want, rtol=1e-10, atol=1e-10)


def test_lora_init_and_dropout():
    torch.manual_seed(0)
    linear = nn.Linear(IN, OUT, bias=False)
    module = LoraLinear(linear, LoraConfig(r=16, alpha=32.0, dropout=0.5))
    assert module.lora_B.abs().max() == 0
    bound = 1.0 / IN ** 0.5  # kaiming_uniform(a=√5) on [r, in]: U(-1/√in, 1/√in)
    assert 0.8 * bound < module.lora_A.abs().max() <= bound
    x = torch.randn(5, IN)
    assert torch.equal(module(x), nn.functional.linear(x, linear.weight))
    with torch.no_grad():
        module.lora_B.normal_()
    module.train()
    assert not torch.allclose(module(x), module(x)), "dropout acts on the LoRA path in training"
    module.eval()
    torch.testing.assert_close(module(x), x @ (linear.weight + 2.0 * module.lora_B @ module.lora_A).T,
                               rtol=1e-5, atol=1e-5)


def decaying_spectrum_matrix(out_features, in_features, rank_decay=0.7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_features, in_features, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_features, in_features, generator=generator, dtype=torch.float64))
    s = rank_decay ** torch.arange(in_features, dtype=torch.float64)
    return (u * s) @ v.T


@pytest.mark.parametrize("alpha", [None, 64.0])
def test_pissa_principal_split(alpha):
    torch.manual_seed(0)
    w = decaying_spectrum_matrix(OUT, IN)
    linear = nn.Linear(IN, OUT, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(w)
    module = PissaLinear(linear, PissaConfig(r=16, alpha=alpha, svd_niter=4))
    scale = 1.0 if alpha is None else alpha / 16
    principal = scale * module.lora_B.detach() @ module.lora_A.detach()
    torch.testing.assert_close(module.weight.detach() + principal, w, rtol=0, atol=1e-12)
    # the principal part is the best rank-16 approximation: its singular values are W's top 16
    # (randomized SVD with q = r and 4 power iterations: the smallest kept value is the least accurate)
    found = torch.linalg.svdvals(principal)[:16]
    torch.testing.assert_close(found, torch.linalg.svdvals(w)[:16], rtol=1e-3, atol=0)
    assert torch.equal(module.pissa_init_A, module.lora_A.detach())
    # √S on both sides: A·Aᵀ and Bᵀ·B are both diag(S)/scale
    diag = torch.diag(found) / scale
    torch.testing.assert_close(module.lora_A @ module.lora_A.T, diag, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(module.lora_B.T @ module.lora_B, diag, rtol=1e-8, atol=1e-10)
    x = torch.randn(4, IN, dtype=torch.float64)
    torch.testing.assert_close(module(x), x @ w.T, rtol=1e-10, atol=1e-10)


def test_pissa_gradients_match_formula():
    torch.manual_seed(0)
    module = PissaLinear(nn.Linear(IN, OUT, bias=False).double(), PissaConfig(r=8))
    w_res = module.weight.detach().clone()
    got, want = run_and_reference(module, lambda m: (m.lora_A, m.lora_B), lambda w, ts: w_res + ts[1] @ ts[0])
    assert_close_all(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", [
    lambda lin: BoneLinear(lin, BoneConfig(b=32)),
    lambda lin: BoneLinear(lin, BoneConfig(b=32, impl="materialize")),
    lambda lin: BoneLinear(lin, BoneConfig(b=32, grouping="col", checkpoint=True)),
    lambda lin: LoraLinear(lin, LoraConfig(r=8)),
])
def test_bf16_base_computes_in_bf16_with_fp32_adapter(make):
    torch.manual_seed(0)
    module = make(nn.Linear(IN, OUT, bias=False).to(torch.bfloat16))
    params = [p for n, p in module.named_parameters() if n not in ("weight", "bias")]
    assert all(p.dtype == torch.float32 for p in params)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    x = torch.randn(2, 9, IN).to(torch.bfloat16).requires_grad_(True)
    y = module(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and all(p.grad.dtype == torch.float32 for p in params)
    reference = x.detach().double() @ module.merged_weight().double().T
    torch.testing.assert_close(y.double(), reference, rtol=0.05, atol=0.05)


def test_factored_under_cpu_autocast():
    module = make_bone("row", "affine", "factored", False, 64, dtype=torch.float32)
    x = torch.randn(2, 8, IN, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and module.bone.grad.dtype == torch.float32
    reference = x.detach().double() @ (module.weight.double() + reference_delta(
        module.weight.detach().double(), [module.bone.detach().double()], 64, "row", "affine")).T
    torch.testing.assert_close(y.double(), reference, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("config", [BoneConfig(b=64), BoneConfig(b=64, grouping="col", form="unconstrained"),
                                    LoraConfig(r=32), PissaConfig(r=32)])
def test_adapters_build_on_meta_without_values(config):
    from src.peft.inject import make_adapter

    with torch.device("meta"):
        linear = nn.Linear(2048, 7168, bias=False)
    module = make_adapter(linear, config)
    assert all(t.is_meta for t in module.adapter_tensors().values())
    y = module(torch.empty(1, 3, 2048, device="meta"))
    assert y.shape == (1, 3, 7168)


def test_config_validation_and_round_trip():
    for config in (BoneConfig(b=32, grouping="col", form="hadamard", impl="materialize", checkpoint=True),
                   LoraConfig(r=4, alpha=8, dropout=0.1), PissaConfig(r=8, alpha=16, svd_niter=2), PissaConfig()):
        data = config.to_dict()
        assert data["method"] == config.method
        assert type(config).from_dict(data) == config
    assert BoneConfig().resolved_impl == "factored"
    assert BoneConfig(grouping="col").resolved_impl == "materialize"
    bad = [
        lambda: BoneConfig(b=0), lambda: BoneConfig(b=64.0), lambda: BoneConfig(grouping="rows"),
        lambda: BoneConfig(form="affin"), lambda: BoneConfig(impl="fast"),
        lambda: BoneConfig(grouping="col", impl="factored"), lambda: BoneConfig(form="hadamard", impl="factored"),
        lambda: BoneConfig(checkpoint=True), lambda: BoneConfig(checkpoint="yes", impl="materialize"),
        lambda: LoraConfig(r=0), lambda: LoraConfig(alpha=0), lambda: LoraConfig(dropout=1.0),
        lambda: PissaConfig(r=-1), lambda: PissaConfig(alpha=-2.0), lambda: PissaConfig(svd_niter=-1),
        lambda: BoneConfig.from_dict({"method": "lora", "r": 8}), lambda: LoraConfig.from_dict({"rank": 8}),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()
