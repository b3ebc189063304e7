"""train.py's command line: --dry_run counts (the paper's Table 2), flags and --config, and every refusal message."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.data import get_tokenizer
from src.data.make_binidx import convert
from src.train.args import parse_args
from src.train.run import build_model, main, plan_training
from tests.rwkv_fixtures import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR",
                    "OMP_NUM_THREADS")
RWKV6_SHAPES = {"1b6": (24, 2048), "3b": (32, 2560), "7b": (32, 4096)}
TABLE2_TRAINABLE = {"1b6": 33_030_144, "3b": 55_050_240, "7b": 88_080_384}  # Bone b=64 = LoRA r=32


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch):
    """main() sets launcher variables for DeepSpeed; give them back after each test."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.setenv(name, "unset-by-test")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    write_random_checkpoint(folder / "base.pth", n_layer=2, n_embd=64, vocab_size=256, seed=2)
    with open(folder / "text.jsonl", "w", encoding="utf-8") as handle:
        for i in range(30):
            handle.write(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) + "\n")
    convert(str(folder / "text.jsonl"), str(folder / "text"), get_tokenizer("byte"))
    (folder / "empty.jsonl").write_text("")
    return folder


def run_main(argv, capsys):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def dry_run_summary(argv, capsys):
    status, out, err = run_main(list(argv) + ["--dry_run"], capsys)
    assert status == 0, err
    return json.loads(out.strip().splitlines()[-1]), out


@pytest.mark.parametrize("size", ["1b6", "3b", "7b"])
@pytest.mark.parametrize("method", [["--peft", "bone", "--bone_b", "64"], ["--peft", "lora", "--lora_r", "32"]])
def test_dry_run_matches_table2(size, method, capsys):
    n_layer, n_embd = RWKV6_SHAPES[size]
    summary, _ = dry_run_summary(method + ["--n_layer", n_layer, "--n_embd", n_embd, "--vocab_size", 65536], capsys)
    assert summary["trainable"] == TABLE2_TRAINABLE[size]
    assert summary["adapted_modules"] == 8 * n_layer
    assert summary["total"] > 1.5e9


def test_dry_run_cli_last_line_is_json_and_prints_the_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--peft", "bone", "--bone_b", "64", "--n_layer", "24", "--n_embd",
         "2048", "--vocab_size", "65536", "--dry_run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert (summary["trainable"], summary["adapted_modules"]) == (33_030_144, 192)
    assert summary["total"] >= summary["trainable"]
    assert any(line.startswith("blocks.23.ffn.value") and "458,752" in line for line in lines)  # 7168 x 64


def test_dry_run_train_parts_time_ln_adds_rwkv_peft_extra(capsys):
    """RWKV-PEFT's default parts: per layer 458*C time parameters and 6*C LayerNorm ones, plus ln0 and ln_out."""
    n_layer, n_embd = 24, 2048
    base = ["--peft", "bone", "--n_layer", n_layer, "--n_embd", n_embd, "--vocab_size", 65536]
    bone_only, _ = dry_run_summary(base, capsys)
    with_parts, _ = dry_run_summary(base + ["--train_parts", "time,ln"], capsys)
    time_per_layer = 6 * n_embd + 2 * n_embd * 5 * 32 + n_embd + 2 * n_embd * 64 + n_embd + 2 * n_embd
    ln = n_layer * 6 * n_embd + 4 * n_embd
    assert with_parts["trainable"] - bone_only["trainable"] == n_layer * time_per_layer + ln == 22_814_720


def test_dry_run_from_checkpoint_shapes_and_full_finetune(tiny, capsys):
    summary, out = dry_run_summary(["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth"], capsys)
    per_layer_in = 5 * 64 + 64 + 64 + 224  # att.{r,k,v,g,o}, ffn.key, ffn.receptance in 64; ffn.value in 224
    assert summary["trainable"] == 2 * per_layer_in * 16 and summary["n_layer"] == 2
    assert "shapes from" in out
    full, _ = dry_run_summary(["--load_model", tiny / "base.pth"], capsys)
    assert full["trainable"] == full["total"] and full["adapted_modules"] == 0 and full["method"] == "none"


@pytest.mark.parametrize("name,size", [("rwkv6-1b6", "1b6"), ("rwkv6-3b", "3b"), ("rwkv6-7b", "7b")])
def test_shipped_configs_give_table2_counts(name, size, capsys):
    summary, _ = dry_run_summary(["--config", ROOT / "configs" / f"{name}.yaml"], capsys)
    assert summary["trainable"] == TABLE2_TRAINABLE[size]
    assert (summary["n_layer"], summary["n_embd"]) == RWKV6_SHAPES[size]


def test_config_file_values_and_command_line_precedence(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("ctx_len: 256\nlr_init: 6e-4\ngrad_cp: 1\nprecision: 32\nsft_field: [q, a]\nmicro_bsz: 2\n")
    cfg = parse_args(["--config", str(config), "--micro_bsz", "8"])
    assert (cfg.ctx_len, cfg.lr_init, cfg.grad_cp, cfg.precision, cfg.sft_field) == (256, 6e-4, "layer", "fp32",
                                                                                       ("q", "a"))
    assert cfg.micro_bsz == 8  # the command line wins
    tiny = parse_args(["--config", str(ROOT / "configs" / "tiny-cpu.yaml")])
    assert (tiny.n_embd, tiny.strategy, tiny.accelerator, tiny.precision) == (64, "deepspeed_stage_2", "cpu", "fp32")
    assert parse_args(["--grad_cp", "0"]).grad_cp == "none" and parse_args([]).train_parts == ""
    (tmp_path / "bad.yaml").write_text("ctx_lenn: 3\n")
    with pytest.raises(ValueError, match="unknown key 'ctx_lenn'"):
        parse_args(["--config", str(tmp_path / "bad.yaml")])


def test_grad_cp_layer_and_bone_reach_the_model(tiny):
    common = ["--load_model", str(tiny / "base.pth"), "--data_file", str(tiny / "text"), "--ctx_len", "16",
              "--micro_bsz", "2", "--epoch_steps", "2", "--strategy", "auto", "--accelerator", "cpu"]
    model, _ = build_model(plan_training(parse_args(common + ["--peft", "lora", "--grad_cp", "1"])))
    assert model.config.layer_checkpointing is True
    plan = plan_training(parse_args(common + ["--peft", "bone", "--bone_b", "16", "--bone_impl", "materialize",
                                              "--grad_cp", "bone"]))
    model, adapted = build_model(plan)
    assert plan.peft_config.checkpoint is True and model.config.layer_checkpointing is False and len(adapted) == 16


def expect_error(argv, capsys, *fragments):
    status, out, err = run_main(argv, capsys)
    assert status == 2, f"expected a refusal, got status {status}: {out[-2000:]} {err[-2000:]}"
    # Diagnostics (such as which WKV op 'auto' picked) may come first; the refusal is one last line.
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("train.py: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in last_line, f"{fragment!r} not in {last_line!r}"
    return last_line


def test_missing_base_model_file(tiny, capsys):
    expect_error(["--peft", "bone", "--load_model", tiny / "nope.pth", "--data_file", tiny / "text"], capsys,
                 "--load_model file not found", "nope.pth", "BlinkDL/rwkv-6-world")


def test_missing_data_files(tiny, capsys):
    base = ["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--accelerator", "cpu"]
    expect_error(base + ["--data_file", tiny / "missing"], capsys, "missing.bin", "missing.idx")
    expect_error(base + ["--data_file", tiny / "missing.jsonl", "--data_type", "sft"], capsys,
                 "data file not found", "missing.jsonl")
    expect_error(base, capsys, "--data_file is required")


def test_token_ids_beyond_vocabulary(tiny, capsys):
    expect_error(["--n_layer", "1", "--n_embd", "64", "--vocab_size", "100", "--data_file", tiny / "text",
                  "--accelerator", "cpu", "--ctx_len", "16"], capsys,
                 f"token id {max(b'the quick brown fox jumps over the lazy dog')}", "vocab_size is 100")


def test_empty_data(tiny, capsys):
    expect_error(["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file",
                  tiny / "empty.jsonl", "--data_type", "jsonl", "--accelerator", "cpu"], capsys, "contains no documents")


def test_ctx_len_and_precision_the_cuda_kernel_cannot_run(tiny, capsys):
    base = ["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file", tiny / "text",
            "--accelerator", "cpu", "--wkv_op", "cuda"]
    expect_error(base + ["--ctx_len", str(2 ** 31)], capsys, f"--ctx_len {2 ** 31}", "cuda WKV kernel")
    expect_error(base + ["--ctx_len", "64"], capsys, "WKV op 'cuda' cannot run here")
    expect_error(base + ["--precision", "fp16"], capsys, "--precision fp16 needs a GPU")


def test_shape_flags_contradicting_checkpoint(tiny, capsys):
    expect_error(["--peft", "bone", "--load_model", tiny / "base.pth", "--data_file", tiny / "text", "--n_layer", "24",
                  "--n_embd", "64"], capsys, "--n_layer 24 (checkpoint: 2)", "contradicts", "L2 D64")


def test_unknown_peft_and_bad_json_config(tiny, capsys):
    expect_error(["--peft", "dora", "--load_model", tiny / "base.pth"], capsys, "unknown --peft 'dora'",
                 "none, bone, lora, pissa")
    expect_error(["--peft", "bone", "--bone_config", "{b: 64}", "--load_model", tiny / "base.pth"], capsys,
                 "--bone_config is not valid JSON")
    expect_error(["--peft", "bone", "--bone_config", '{"b": 64, "bone_load": "x.pth"}', "--n_layer", "2",
                  "--n_embd", "64", "--vocab_size", "256", "--dry_run"], capsys, "'bone_load' is not supported")


def test_bone_block_size_must_divide(capsys):
    expect_error(["--peft", "bone", "--bone_b", "48", "--n_layer", "2", "--n_embd", "2048", "--vocab_size", "65536",
                  "--dry_run"], capsys, "b=48 must divide", "blocks.0.att.receptance")


def test_adapter_without_base_model_says_where_to_get_one(tiny):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--peft", "bone", "--data_file",
                             str(tiny / "text")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for fragment in ("no --load_model", "BlinkDL/rwkv-6-world", "bash scripts/quickstart.sh", "--peft none"):
        assert fragment in result.stderr


def test_resume_refusals(tiny, tmp_path, capsys):
    base = ["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file", tiny / "text",
            "--accelerator", "cpu", "--ctx_len", "16", "--proj_dir", tmp_path / "run"]
    expect_error(base + ["--resume"], capsys, "--resume: no checkpoint in")
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step-00000004").mkdir(parents=True)
    (checkpoints / "latest.json").write_text(json.dumps({
        "directory": "step-00000004", "step": 4, "epoch": 0, "batch": 4, "world_size": 1, "deepspeed": True,
        "run_key": {"peft": "lora"}}))
    expect_error(base, capsys, "holds a checkpoint of a different run", "peft: checkpoint 'lora', now 'bone'",
                 "--fresh")


def test_schedule_refusals(capsys):
    expect_error(["--epoch_steps", "10", "--accumulate_grad_batches", "4", "--dry_run"], capsys,
                 "--epoch_steps 10 is not a multiple of --accumulate_grad_batches 4")
    expect_error(["--optim", "adam", "--weight_decay", "0.1", "--dry_run"], capsys, "use --optim adamw")
