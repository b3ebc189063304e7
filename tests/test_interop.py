"""Adapter files of RWKV-PEFT and HF peft in and out, --init_adapter, RWKV-PEFT's launcher flags.

Foreign files are built here by hand from each tool's documented layout (RWKV-PEFT: flat `blocks.N.<module>.bone`
/ `.disha` tensors, 3-D (in/b, b, b) Bone-row or 2-D (r, out) MiSS; HF peft: adapter_config.json plus
`base_model.model.<module>.miss_block` / `.lora_A.weight` safetensors), never with our exporter, and every merge
is compared with the method's formula evaluated block by block in float64.
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from src.checkpoint.io import load_rwkv, read_checkpoint
from src.merge import main as merge_main
from src.peft import BoneConfig, LoraConfig, MissConfig, apply_peft, read_adapter, save_adapter
from src.peft.adapter_io import adapter_state_dict
from src.peft.merged import merged_state_dict
from src.train.launch import main as train_main
from tests.rwkv_fixtures import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["att.receptance", "att.key", "att.value", "att.gate", "att.output", "ffn.key", "ffn.receptance",
           "ffn.value"]
MODULES = [f"blocks.{layer}.{t}" for layer in range(2) for t in TARGETS]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random L2 D64 vocab-256 RWKV6 (att 64x64, ffn.key 224x64, ffn.value 64x224) and its float64 weights."""
    folder = tmp_path_factory.mktemp("interop")
    write_random_checkpoint(folder / "base.pth", n_layer=2, n_embd=64, vocab_size=256, seed=3)
    weights = {k: v.double() for k, v in torch.load(folder / "base.pth", weights_only=True).items()}
    return folder / "base.pth", weights


def shapes(weights):
    return {m: tuple(weights[f"{m}.weight"].shape) for m in MODULES}


# ---- the reference formulas, block by block in float64 -------------------------------------------------------

def bone_reference(w, blocks, grouping):
    """W[a,j] + W[a,j]·B[g] + B[g] for every b×b block; g = j (row) or a (col)."""
    b = blocks.shape[-1]
    out = w.clone()
    for a in range(w.shape[0] // b):
        for j in range(w.shape[1] // b):
            block = w[a * b:(a + 1) * b, j * b:(j + 1) * b]
            g = blocks[j if grouping == "row" else a].double()
            out[a * b:(a + 1) * b, j * b:(j + 1) * b] = block + block @ g + g
    return out


def miss_reference(w, shard, mini_r=None):
    """W[o, g·r + c] += D[c, o], with D = M repeated along the output for the mini form (D[c, o] = M[c, o % mini_r])."""
    r = shard.shape[0]
    out = w.clone()
    for o in range(w.shape[0]):
        column = shard[:, o if mini_r is None else o % mini_r].double()
        for g in range(w.shape[1] // r):
            out[o, g * r:(g + 1) * r] += column
    return out


def assert_merged(merged, weights, expected_by_module, others=None):
    """Adapted weights match their formula (fp32 merge vs float64 loop); every other tensor is the base's, or
    `others`' where given (trained base tensors)."""
    others = others or {}
    worst = 0.0
    for name, tensor in merged.items():
        module = name[: -len(".weight")]
        if module in expected_by_module:
            error = (tensor.double() - expected_by_module[module]).abs().max().item()
            worst = max(worst, error)
        elif name in others:
            assert torch.equal(tensor, others[name].to(tensor.dtype)), name
        else:
            assert torch.equal(tensor.double(), weights[name]), name
    assert worst < 1e-6, worst
    return worst


def random_tensors(shape_of, seed):
    generator = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(s, generator=generator) * 0.05) for m, s in shape_of.items()}


# ---- files in ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, form", [("bone", "bone-row"), ("disha", "bone-row"), ("bone", "miss"),
                                       ("disha", "miss")])
def test_rwkv_peft_flat_file_merges_to_formula(base, tmp_path, key, form):
    path, weights = base
    b = 32
    dims = shapes(weights)
    wanted = {m: ((i // b, b, b) if form == "bone-row" else (b, o)) for m, (o, i) in dims.items()}
    adapter = random_tensors(wanted, seed=1)
    trained = {"blocks.1.att.time_maa_x": torch.randn(1, 1, 64), "ln_out.weight": torch.randn(64)}
    torch.save({**{f"{m}.{key}": t for m, t in adapter.items()}, **trained}, tmp_path / "rwkv-peft.pth")
    merged = merged_state_dict(path, tmp_path / "rwkv-peft.pth")
    expected = {m: (bone_reference(weights[f"{m}.weight"], t, "row") if form == "bone-row"
                    else miss_reference(weights[f"{m}.weight"], t)) for m, t in adapter.items()}
    assert_merged(merged, weights, expected, others=trained)


def write_hf(folder, settings, tensors, file_name="adapter_model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / file_name), metadata={"format": "pt"})
    return folder


HF_CASES = {
    "miss-default": ({"peft_type": "MISS", "r": 32, "init_weights": True, "mini_r": 1}, "miss_block"),
    "miss-mini": ({"peft_type": "MISS", "r": 16, "init_weights": "mini", "mini_r": 32}, "miss_block"),
    "miss-bat": ({"peft_type": "MISS", "r": 32, "init_weights": "bat"}, "miss_block"),
    "bone-default": ({"peft_type": "BONE", "r": 32, "init_weights": True}, "bone_block"),
    "lora": ({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "lora_dropout": 0.0}, None),
    "lora-rslora": ({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "use_rslora": True}, None),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_peft_directory_merges_to_formula(base, tmp_path, case):
    path, weights = base
    settings, block = HF_CASES[case]
    settings = {**settings, "target_modules": TARGETS, "bias": "none", "base_model_name_or_path": None}
    r = settings["r"]
    dims = shapes(weights)
    prefix = "base_model.model."
    if block is None:
        a = random_tensors({m: (r, i) for m, (o, i) in dims.items()}, seed=2)
        bb = random_tensors({m: (o, r) for m, (o, i) in dims.items()}, seed=3)
        tensors = {f"{prefix}{m}.lora_A.weight": a[m] for m in dims}
        tensors.update({f"{prefix}{m}.lora_B.weight": bb[m] for m in dims})
        scale = settings["lora_alpha"] / (r ** 0.5 if settings.get("use_rslora") else r)
        expected = {m: weights[f"{m}.weight"] + scale * bb[m].double() @ a[m].double() for m in dims}
    else:
        init = settings["init_weights"]
        wanted = {m: ((o // r, r, r) if init == "bat" else (r, settings["mini_r"]) if init == "mini" else (r, o))
                  for m, (o, i) in dims.items()}
        shards = random_tensors(wanted, seed=4)
        tensors = {f"{prefix}{m}.{block}": t for m, t in shards.items()}
        expected = {m: (bone_reference(weights[f"{m}.weight"], t, "col") if init == "bat" else
                        miss_reference(weights[f"{m}.weight"], t, settings["mini_r"] if init == "mini" else None))
                    for m, t in shards.items()}
    folder = write_hf(tmp_path / "hf", settings, tensors)
    source = folder / "adapter_model.safetensors" if case == "miss-default" else folder  # the file path works too
    assert_merged(merged_state_dict(path, source), weights, expected)


# ---- files out, and round trips --------------------------------------------------------------------------------

EXPORTS = {
    "bone-row/rwkv-peft": (BoneConfig(b=32), "rwkv-peft", "time_maa_x"),
    "miss/rwkv-peft-disha": (MissConfig(r=32), "rwkv-peft", ""),
    "miss/peft": (MissConfig(r=32), "peft", ""),
    "miss-mini/peft": (MissConfig(r=16, form="mini", mini_r=32), "peft", ""),
    "bone-col/peft": (BoneConfig(b=32, grouping="col"), "peft", ""),
    "lora/peft": (LoraConfig(r=4, alpha=8.0), "peft", ""),
}


def trained_adapter(base_path, config, train_parts, path, seed=7):
    """Our adapter file with random (non-zero) tensors, and the model it came from."""
    model = load_rwkv(str(base_path), wkv_op="torch")
    apply_peft(model, config, train_parts=train_parts)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in adapter_state_dict(model).values():
            tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.05)
    save_adapter(model, path)
    return model


def other_tool_merge(weights, exported: Path, fmt):
    """The exported file merged by the other tool's documented rule (read here with torch / safetensors)."""
    if fmt == "rwkv-peft":
        flat = torch.load(exported, weights_only=True)
        merged = {}
        for key, tensor in flat.items():
            module, _, name = key.rpartition(".")
            if name in ("bone", "disha"):
                w = weights[f"{module}.weight"]
                merged[module] = bone_reference(w, tensor, "row") if tensor.dim() == 3 else miss_reference(w, tensor)
        return merged, {k: v for k, v in flat.items() if k.rpartition(".")[2] not in ("bone", "disha")}
    settings = json.loads((exported / "adapter_config.json").read_text())
    tensors = load_file(str(exported / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in tensors)
    merged = {}
    for key, tensor in tensors.items():
        module = key[len("base_model.model."):].rsplit(".", 2 if key.endswith(".weight") else 1)[0]
        w = weights[f"{module}.weight"]
        if key.endswith("lora_A.weight"):
            b_matrix = tensors[key.replace("lora_A", "lora_B")].double()
            merged[module] = w + settings["lora_alpha"] / settings["r"] * b_matrix @ tensor.double()
        elif key.endswith("miss_block"):
            init = settings["init_weights"]
            merged[module] = (bone_reference(w, tensor, "col") if init == "bat"
                              else miss_reference(w, tensor, settings["mini_r"] if init == "mini" else None))
    return merged, {}


@pytest.mark.parametrize("case", list(EXPORTS))
def test_export_round_trip_and_other_tools_merge(base, tmp_path, case, capsys):
    path, weights = base
    config, fmt, parts = EXPORTS[case]
    ours = tmp_path / "ours.pth"
    trained_adapter(path, config, parts, ours)
    output = tmp_path / ("exported.pth" if fmt == "rwkv-peft" else "exported")
    key = ["--rwkv_peft_key", "disha"] if case.endswith("disha") else []
    assert merge_main(["--adapter", str(ours), "--export", fmt, "--output", str(output), *key]) == 0
    capsys.readouterr()
    # the other tool's rule on the exported file gives our merge
    our_merge = merged_state_dict(path, ours)
    expected, trained = other_tool_merge(weights, output, fmt)
    assert sorted(expected) == sorted(MODULES)
    assert_merged(our_merge, weights, expected, others=trained)
    # ours -> theirs -> ours: identical tensors, same meaning, and the same merged model bit for bit
    original, back = read_adapter(ours), read_adapter(output)
    assert back["config"] == {**original["config"], **{k: back["config"][k] for k in ("impl",) if k in back["config"]}}
    assert sorted(back["tensors"]) == sorted(original["tensors"])
    for name, tensor in original["tensors"].items():
        assert torch.equal(back["tensors"][name], tensor), name
    again = merged_state_dict(path, output)
    assert all(torch.equal(again[k], our_merge[k]) for k in our_merge)


@pytest.mark.parametrize("config, fmt, parts, fragment", [
    (BoneConfig(b=32, grouping="col"), "rwkv-peft", "", "Bone-col has no RWKV-PEFT form"),
    (MissConfig(r=16, form="mini", mini_r=32), "rwkv-peft", "", "MiSS mini has no RWKV-PEFT file form"),
    (BoneConfig(b=32), "peft", "", "Bone-row has no HF peft form"),
    (MissConfig(r=32), "peft", "ln_out", "HF peft adapters hold no trained base tensors"),
])
def test_export_refuses_forms_the_other_tool_lacks(base, tmp_path, capsys, config, fmt, parts, fragment):
    trained_adapter(base[0], config, parts, tmp_path / "ours.pth")
    assert merge_main(["--adapter", str(tmp_path / "ours.pth"), "--export", fmt, "--output",
                       str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("merge failed: ") and fragment in err[0], err
    assert not (tmp_path / "out").exists()


# ---- bad input ------------------------------------------------------------------------------------------------

def refusal(base_path, adapter, *fragments):
    with pytest.raises(ValueError) as caught:
        merged_state_dict(base_path, adapter)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_bad_adapter_files_are_named(base, tmp_path):
    path, weights = base
    torch.save({"step": 3, "blocks.0.att.key.weird": torch.zeros(2, 3)}, tmp_path / "odd.pth")
    refusal(path, tmp_path / "odd.pth", "not an adapter file of any accepted format", "'step'",
            "blocks.0.att.key.weird (2, 3)", "RWKV-PEFT flat .pth", "HF peft")
    refusal(path, path, "is a model checkpoint")
    mixed = {"blocks.0.att.key.bone": torch.zeros(2, 32, 32), "blocks.0.att.value.bone": torch.zeros(32, 64)}
    torch.save(mixed, tmp_path / "mixed.pth")
    refusal(path, tmp_path / "mixed.pth", "ambiguous RWKV-PEFT file", "(2, 32, 32)", "(32, 64)")
    torch.save({"blocks.0.ffn.value.bone": torch.zeros(2, 32, 32)}, tmp_path / "wrong.pth")  # in=224 needs 7
    refusal(path, tmp_path / "wrong.pth", "blocks.0.ffn.value.bone: file (2, 32, 32) vs (7, 32, 32)",
            "(out, in = (64, 224))")
    write_hf(tmp_path / "ia3", {"peft_type": "IA3", "target_modules": ["key"]}, {"x": torch.zeros(1)})
    refusal(path, tmp_path / "ia3", "peft_type 'IA3' is not supported")
    llama = {f"base_model.model.model.layers.0.self_attn.q_proj.lora_{x}.weight": torch.zeros(4, 4) for x in "AB"}
    write_hf(tmp_path / "llama", {"peft_type": "LORA", "r": 4, "lora_alpha": 8}, llama)
    refusal(path, tmp_path / "llama", "model.layers.0.self_attn.q_proj", "not nn.Linear modules of this model")
    partial = {"base_model.model.blocks.0.att.key.lora_A.weight": torch.zeros(4, 64)}
    write_hf(tmp_path / "partial", {"peft_type": "LORA", "r": 4, "lora_alpha": 8}, partial)
    refusal(path, tmp_path / "partial", "partial adapter")


def test_safetensors_base_checkpoint_loads_and_garbage_is_refused(base, tmp_path):
    path, weights = base
    save_file({k: v.float().contiguous() for k, v in weights.items()}, str(tmp_path / "base.safetensors"))
    loaded = read_checkpoint(tmp_path / "base.safetensors")
    assert sorted(loaded) == sorted(weights) and all(torch.equal(loaded[k].double(), weights[k]) for k in weights)
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}}).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_checkpoint(tmp_path / "bad.safetensors")


# ---- train.py: RWKV-PEFT's flags, --init_adapter ----------------------------------------------------------------

def run_main(argv, capsys):
    status = train_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def stride_zero_checkpoint(path, n_layer, n_embd, vocab=65536):
    """A checkpoint with the shapes of a released model whose tensors are one stored value each (expanded views),
    so its file is tiny: enough for --dry_run, which reads shapes only."""
    ffn, one = int(n_embd * 3.5) // 32 * 32, torch.zeros(1)
    shape = {"emb.weight": (vocab, n_embd), "ln_out.weight": (n_embd,), "ln_out.bias": (n_embd,),
             "head.weight": (vocab, n_embd), "blocks.0.ln0.weight": (n_embd,), "blocks.0.ln0.bias": (n_embd,)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        shape.update({p + n: (n_embd,) for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
                                                  "att.ln_x.weight", "att.ln_x.bias")})
        shape.update({p + f"att.time_maa_{x}": (1, 1, n_embd) for x in "xwkvrg"})
        shape.update({p + "att.time_maa_w1": (n_embd, 160), p + "att.time_maa_w2": (5, 32, n_embd),
                      p + "att.time_decay": (1, 1, n_embd), p + "att.time_decay_w1": (n_embd, 64),
                      p + "att.time_decay_w2": (64, n_embd), p + "att.time_faaaa": (n_embd // 64, 64),
                      p + "ffn.time_maa_k": (1, 1, n_embd), p + "ffn.time_maa_r": (1, 1, n_embd),
                      p + "ffn.key.weight": (ffn, n_embd), p + "ffn.receptance.weight": (n_embd, n_embd),
                      p + "ffn.value.weight": (n_embd, ffn)})
        shape.update({p + f"att.{x}.weight": (n_embd, n_embd) for x in ("receptance", "key", "value", "gate",
                                                                          "output")})
    torch.save({k: one.expand(*s) for k, s in shape.items()}, path)
    return path


def test_paper_bone_launcher_passes_dry_run(tmp_path, capsys, monkeypatch):
    """Bone's rwkv-ft launcher (JL-er/Bone, run_qbone.sh without its --quant int8), verbatim but for our paths."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # absent: the dry run says how to install it
    model = stride_zero_checkpoint(tmp_path / "RWKV-x060-World-3B-v2.1-20240417-ctx4096.pth", 32, 2560)
    assert model.stat().st_size < 1_000_000
    command = (
        f"--load_model {model} --proj_dir {tmp_path / 'metabone-3b'} --data_file {tmp_path / 'metamath_text_document'} "
        "--data_type binidx --vocab_size 65536 "
        "--ctx_len 512 --epoch_steps 6171 --epoch_count 1 --epoch_begin 0 --epoch_save 1 --micro_bsz 16 "
        "--n_layer 32 --n_embd 2560 "
        "--pre_ffn 0 --head_qk 0 --lr_init 2e-5 --lr_final 2e-5 --warmup_steps 0 --beta1 0.9 --beta2 0.99 "
        "--adam_eps 1e-8 --accelerator gpu --devices 4 --precision bf16 --strategy deepspeed_stage_1 --grad_cp 1 "
        "--my_testing x060 --dataload pad --loss_mask pad "
    ).split() + ["--peft", "bone", "--bone_config", '{"bone_load":"","bone_r":64}', "--train_parts", "[]",
                 "--wandb", "finetune", "--dry_run"]
    status, out, err = run_main(command, capsys)
    assert status == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["trainable"] == 55_050_240 and summary["train_parts"] == "[]"  # in·b per Linear, nothing else
    assert "pip install wandb" in out


@pytest.mark.parametrize("flags, fragment", [
    (["--pre_ffn", "1"], "--pre_ffn 1: RWKV-4's first-layer FFN"),
    (["--head_qk", "256"], "--head_qk 256: RWKV-4's extra q/k head"),
    (["--quant", "int8"], "--quant int8: training on a quantised base"),
    (["--wandb", "proj", "--strategy", "auto"], "the wandb package is not installed: pip install wandb"),
    (["--init_adapter", "ADAPTER", "--peft", "bone", "--bone_b", "16"], "b: file 32, flags 16 (--bone_b 32)"),
    (["--init_adapter", "ADAPTER", "--peft", "miss"], "holds a bone adapter (b=32"),
    (["--init_adapter", "ADAPTER", "--peft", "bone", "--bone_b", "32", "--peft_targets", "att"],
     "--peft_targets att differs from the targets of --init_adapter"),
])
def test_train_flag_refusals(base, tmp_path, capsys, monkeypatch, flags, fragment):
    monkeypatch.setitem(sys.modules, "wandb", None)  # absent, whether or not this machine has it
    adapter = tmp_path / "adapter.pth"
    trained_adapter(base[0], BoneConfig(b=32), "", adapter)
    argv = [str(adapter) if a == "ADAPTER" else a for a in flags]
    status, out, err = run_main(["--load_model", base[0], "--data_file", tmp_path / "none", "--proj_dir",
                                 tmp_path / "out", "--accelerator", "cpu", *argv], capsys)
    last = err.strip().splitlines()[-1]
    assert status == 2 and last.startswith("train.py: error: ") and fragment in last, last


FAKE_WANDB = '''"""A stand-in for wandb (tests only): records init and log calls as JSON lines in $FAKE_WANDB_LOG."""
import json
import os


class Run:
    def log(self, values, step=None):
        write({"log": values, "step": step})

    def finish(self):
        write({"finish": True})


def write(record):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as handle:
        handle.write(json.dumps(record) + "\\n")


def init(project=None, config=None, dir=None):
    write({"init": project, "lr_init": (config or {}).get("lr_init")})
    return Run()
'''


def test_init_adapter_continues_and_wandb_logs(base, tmp_path):
    """Run 1 trains Bone (logging to a stand-in wandb); run 2 starts from its adapter file with --init_adapter:
    its tensors before the first step are the file's, and its first loss is run 1's final loss, not the base's."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "wandb.py").write_text(FAKE_WANDB)
    text = "".join(f"{i % 10} plus {i % 7} is {(i % 10) + (i % 7)}. " for i in range(400))
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": text[k:k + 400]}) + "\n"
                                                 for k in range(0, len(text), 400)))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{ROOT}", "FAKE_WANDB_LOG":
           str(tmp_path / "wandb.jsonl"), "TEST_SAVE_START": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--load_model", base[0], "--data_file", tmp_path / "data.jsonl", "--data_type", "jsonl",
              "--peft", "bone", "--bone_b", "32", "--ctx_len", "32", "--micro_bsz", "4", "--epoch_count", "1",
              "--epoch_save", "1", "--strategy", "auto", "--accelerator", "cpu", "--precision", "fp32",
              "--num_threads", "1", "--lr_schedule", "cos", "--warmup_steps", "0", "--seed", "0"]

    def train(extra):
        result = subprocess.run([sys.executable, "-m", "tests.train_observed", *map(str, common + extra)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    def losses(proj):
        lines = (proj / "metrics.csv").read_text().splitlines()
        column = lines[0].split(",").index("loss")
        return [float(line.split(",")[column]) for line in lines[1:]]

    first, second = tmp_path / "first", tmp_path / "second"
    train(["--proj_dir", first, "--epoch_steps", "24", "--lr_init", "3e-2", "--lr_final", "1e-3",
           "--wandb", "demo"])
    train(["--proj_dir", second, "--epoch_steps", "2", "--lr_init", "1e-6", "--lr_final", "1e-6",
           "--init_adapter", first / "adapter-final.pth"])
    saved = read_adapter(first / "adapter-final.pth")["tensors"]
    start = torch.load(second / "rank0-trainable-start.pt", weights_only=True)
    assert sorted(start) == sorted(saved) and all(torch.equal(start[n], saved[n]) for n in saved)
    run1, run2 = losses(first), losses(second)
    drop = run1[0] - sum(run1[-3:]) / 3
    assert drop > 1.0, run1
    assert abs(run2[0] - sum(run1[-3:]) / 3) < 0.25 * drop, (run1, run2)
    records = [json.loads(line) for line in (tmp_path / "wandb.jsonl").read_text().splitlines()]
    assert records[0] == {"init": "demo", "lr_init": 3e-2} and records[-1] == {"finish": True}
    logged = [r["log"]["loss"] for r in records if "log" in r]
    assert logged == pytest.approx(run1, rel=1e-5) and [r["step"] for r in records if "log" in r] == \
        list(range(1, 25))


def test_init_adapter_from_rwkv_peft_file_trains_its_tensors(base, tmp_path, capsys):
    """--init_adapter with an RWKV-PEFT file: the trainable tensors are the file's (Bone-row plus the base tensors
    it trained), whatever RWKV-PEFT's --train_parts spelling says."""
    path, weights = base
    dims = shapes(weights)
    flat = {f"{m}.bone": torch.zeros(i // 32, 32, 32) for m, (o, i) in dims.items()}
    flat["blocks.1.att.time_maa_x"] = torch.zeros(1, 1, 64)
    torch.save(flat, tmp_path / "rwkv-0.pth")
    status, out, err = run_main(["--load_model", path, "--peft", "bone", "--bone_config", '{"bone_r": 32}',
                                 "--train_parts", "[]", "--init_adapter", tmp_path / "rwkv-0.pth", "--dry_run"],
                                capsys)
    assert status == 0, err
    assert json.loads(out.strip().splitlines()[-1])["trainable"] == sum(t.numel() for t in flat.values())
