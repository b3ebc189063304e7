"""train.py's command line: --dry_run counts (the paper's Table 2), flags and --config, and every refusal message."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.checkpoint.io import load_rwkv
from src.data import get_tokenizer
from src.data.make_binidx import convert
from src.peft import BoneConfig, apply_peft, save_adapter
from src.train.args import parse_args
from src.train.launch import main
from src.train.plan import build_model, plan_training
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
                  tiny / "empty.jsonl", "--data_type", "jsonl", "--accelerator", "cpu"], capsys,
                 "contains no documents")


def test_ctx_len_and_precision_the_cuda_kernel_cannot_run(tiny, capsys):
    base = ["--peft", "bone", "--bone_b", "16", "--load_model", tiny / "base.pth", "--data_file", tiny / "text",
            "--accelerator", "cpu", "--wkv_op", "cuda"]
    expect_error(base + ["--ctx_len", str(2 ** 31)], capsys, f"--ctx_len {2 ** 31}", "cuda WKV kernel")
    expect_error(base + ["--ctx_len", "64"], capsys, "WKV6 op 'cuda' cannot run here")
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


def test_adapter_file_as_load_model_says_to_merge_it(tiny, capsys):
    model = load_rwkv(tiny / "base.pth", wkv_op="torch")
    apply_peft(model, BoneConfig(b=16))
    adapter = save_adapter(model, tiny / "adapter.pth")
    for argv in (["--peft", "bone", "--bone_b", "16", "--data_file", tiny / "text", "--accelerator", "cpu"],
                 ["--peft", "bone", "--bone_b", "16", "--dry_run"]):
        expect_error(argv + ["--load_model", adapter], capsys, "is an adapter file", "python -m src.merge",
                     f"--adapter {adapter}")


# ------------------------------------------------------------------ outputs, earlier runs, resumes, setup order
def tiny_run_args(tiny, proj, *extra):
    """A 4-step LoRA run on the CLI fixture (single device, fp32): a few seconds."""
    return ["--peft", "lora", "--lora_r", "4", "--load_model", tiny / "base.pth", "--data_file", tiny / "text",
            "--ctx_len", "16", "--micro_bsz", "2", "--epoch_steps", "2", "--epoch_count", "2", "--save_every_steps",
            "1", "--strategy", "auto", "--accelerator", "cpu", "--precision", "fp32", "--proj_dir", proj, *extra]


@pytest.fixture
def in_process_training(monkeypatch):
    """main() trains in this process: give back the seed variable Lightning sets."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "unset-by-test")
    monkeypatch.delenv("PL_GLOBAL_SEED")


def train_ok(argv, capsys):
    status, out, err = run_main(argv, capsys)
    assert status == 0, f"{out[-2000:]}\n{err[-3000:]}"
    return out, err


def test_train_refuses_outputs_that_are_inputs(tiny, tmp_path, capsys):
    import shutil

    proj = tmp_path / "run"
    proj.mkdir()
    shutil.copy(tiny / "base.pth", proj / "rwkv-final.pth")  # an earlier full fine-tune, used as the base
    before = (proj / "rwkv-final.pth").read_bytes()
    expect_error(tiny_run_args(tiny, proj, "--load_model", proj / "rwkv-final.pth"), capsys,
                 f"--proj_dir output {proj / 'rwkv-final.pth'} is --load_model", "destroy the input")
    linked = tmp_path / "linked"
    linked.mkdir()
    os.link(tiny / "base.pth", linked / "adapter-0.pth")
    expect_error(tiny_run_args(tiny, linked), capsys, "is a hard link to", "--load_model")
    inside = tmp_path / "inside"
    (inside / "checkpoints").mkdir(parents=True)
    for suffix in (".bin", ".idx"):
        shutil.copy(str(tiny / "text") + suffix, inside / "checkpoints" / f"text{suffix}")
    expect_error(tiny_run_args(tiny, inside, "--data_file", inside / "checkpoints" / "text"), capsys,
                 "--data_file", "lies inside", "checkpoints")
    assert (proj / "rwkv-final.pth").read_bytes() == before
    assert (linked / "adapter-0.pth").read_bytes() == (tiny / "base.pth").read_bytes()


def test_proj_dir_that_is_a_file_is_refused(tiny, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    expect_error(tiny_run_args(tiny, tmp_path / "a-file"), capsys, "--proj_dir", "is a file, not a folder")
    expect_error(tiny_run_args(tiny, tmp_path / "a-file" / "run"), capsys, "lies under", "which is a file")


def test_finished_run_without_checkpoints_is_not_overwritten_and_fresh_moves_it(tiny, tmp_path, capsys,
                                                                                in_process_training):
    import shutil

    proj = tmp_path / "run"
    train_ok(tiny_run_args(tiny, proj), capsys)
    shutil.rmtree(proj / "checkpoints")  # e.g. cleaned up to save space: the adapter is what was kept
    old = {name: (proj / name).read_bytes() for name in ("adapter-final.pth", "adapter-1.pth", "metrics.csv")}
    expect_error(tiny_run_args(tiny, proj), capsys, "holds the outputs of an earlier run",
                 "adapter-0.pth, adapter-1.pth, adapter-final.pth", "another --proj_dir", "--fresh")
    assert {name: (proj / name).read_bytes() for name in old} == old
    out, _ = train_ok(tiny_run_args(tiny, proj, "--fresh", "--lr_init", "1e-3"), capsys)
    moved = [p for p in proj.iterdir() if p.name.startswith("replaced-")]
    assert len(moved) == 1 and f"moved the earlier run's outputs in {proj} into {moved[0]}/" in out
    assert {name: (moved[0] / name).read_bytes() for name in old} == old  # all of it, byte for byte
    assert (moved[0] / "loss.png").is_file()
    assert (proj / "adapter-final.pth").read_bytes() != old["adapter-final.pth"]
    assert len((proj / "metrics.csv").read_text().splitlines()) == 1 + 4


def test_resume_refuses_changed_settings_and_replaced_files(tiny, tmp_path, capsys, in_process_training):
    import shutil

    data = tmp_path / "data"
    for suffix in (".bin", ".idx"):
        shutil.copy(str(tiny / "text") + suffix, str(data) + suffix)
    base = tmp_path / "base.pth"
    shutil.copy(tiny / "base.pth", base)
    proj = tmp_path / "run"
    args = tiny_run_args(tiny, proj, "--load_model", base, "--data_file", data)
    train_ok(args, capsys)
    out, _ = train_ok(args, capsys)
    assert "training already finished" in out
    for extra, fragment in [
        (["--lr_init", "1e-3"], "lr_init: checkpoint 0.0006, now 0.001"),
        (["--optim", "adam"], "optim: checkpoint 'adamw', now 'adam'"),
        (["--beta1", "0.8"], "beta1: checkpoint 0.9, now 0.8"),
        (["--gradient_clip_val", "0.5"], "gradient_clip_val: checkpoint 1.0, now 0.5"),
        (["--template", "alpaca"], "template: checkpoint 'rwkv', now 'alpaca'"),
        (["--data_shuffle", "false"], "data_shuffle: checkpoint True, now False"),
    ]:
        expect_error(args + extra, capsys, "holds a checkpoint of a different run", fragment)
    last = expect_error(args + ["--lr_init", "1e-3"], capsys)
    assert "add --change_on_resume lr_init" in last
    out, _ = train_ok(args + ["--gradient_clip_val", "0.5", "--change_on_resume", "gradient_clip_val"], capsys)
    assert "training already finished" in out
    expect_error(args + ["--change_on_resume", "optim"], capsys, "--change_on_resume optim: only lr_init")

    convert(str(tiny / "text.jsonl"), str(tmp_path / "other"), get_tokenizer("byte"))
    with open(tmp_path / "other.jsonl", "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "a different corpus " * 20}) + "\n")
    convert(str(tmp_path / "other.jsonl"), str(tmp_path / "other"), get_tokenizer("byte"))
    for suffix in (".bin", ".idx"):
        os.replace(str(tmp_path / "other") + suffix, str(data) + suffix)
    expect_error(args, capsys, "--data_file was replaced at the same path", "data.bin:")
    for suffix in (".bin", ".idx"):
        shutil.copy(str(tiny / "text") + suffix, str(data) + suffix)
    write_random_checkpoint(base, n_layer=2, n_embd=64, vocab_size=256, seed=99)  # same shapes, other weights
    expect_error(args, capsys, "--load_model was replaced at the same path", "base.pth")


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny, tmp_path, capsys, in_process_training):
    proj = tmp_path / "run"
    args = tiny_run_args(tiny, proj)
    train_ok(args, capsys)
    kept = sorted(p.name for p in (proj / "checkpoints").glob("step-*"))
    assert kept == ["step-00000003", "step-00000004"]  # the newest and the one before it
    trainer_pt = proj / "checkpoints" / "step-00000004" / "trainer.pt"
    size = trainer_pt.stat().st_size
    trainer_pt.write_bytes(os.urandom(size))
    out, err = train_ok(args, capsys)
    assert "warning: checkpoints/step-00000004 is damaged: trainer.pt is not the file that was written" in err
    assert "resuming checkpoints/step-00000003 (step 3" in out and (proj / "adapter-final.pth").is_file()
    assert [int(line.split(",")[0]) for line in (proj / "metrics.csv").read_text().splitlines()[1:]] == [1, 2, 3, 4]

    with open(trainer_pt, "r+b") as handle:  # the newest again, truncated this time
        handle.truncate(size // 2)
    _, err = train_ok(args, capsys)
    assert f"trainer.pt holds {size // 2} bytes, {size} were written" in err
    for step in ("step-00000003", "step-00000004"):
        (proj / "checkpoints" / step / "trainer.pt").unlink()
    expect_error(args, capsys, "trainer.pt is missing", "no intact earlier checkpoint", "--fresh")


def test_missing_deepspeed_shard_falls_back_to_the_checkpoint_before(tmp_path):
    from src.train.resume import ResumePoint, folder_manifest, read_resume_point, write_point

    for step in (1, 2):
        folder = tmp_path / "checkpoints" / f"step-{step:08d}"
        (folder / "ds").mkdir(parents=True)
        for name in ("mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"):
            (folder / "ds" / name).write_bytes(os.urandom(1000 + step))
        write_point(tmp_path, ResumePoint(f"step-{step:08d}", step, 0, step, 1, True, {},
                                          manifest=folder_manifest(folder)))
    (tmp_path / "checkpoints" / "step-00000002" / "ds" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    notes = []
    point = read_resume_point(tmp_path, report=notes.append)
    assert point.directory == "step-00000001"
    assert notes == ["warning: checkpoints/step-00000002 is damaged: ds/bf16_zero_pp_rank_0_mp_rank_00_optim_states"
                     ".pt is missing; resuming from checkpoints/step-00000001 (step 1), the complete checkpoint "
                     "before it; the steps after it are trained again"]


def test_setup_errors_of_the_adapter_come_before_the_data_and_the_weights(tiny, tmp_path, capsys):
    base = ["--load_model", tiny / "base.pth", "--accelerator", "cpu", "--ctx_len", "16",
            "--data_file", tmp_path / "not-read-yet.jsonl", "--data_type", "jsonl", "--proj_dir", tmp_path / "run"]
    expect_error(base + ["--peft", "bone", "--bone_b", "48"], capsys, "b=48 must divide", "blocks.0.att.receptance")
    expect_error(base + ["--peft", "lora", "--peft_targets", "nothing"], capsys,
                 "adapter targets ['nothing'] match no module")
    expect_error(base + ["--peft", "lora", "--train_parts", "zzz"], capsys, "train parts ['zzz'] match no parameter")
    expect_error(base + ["--peft", "none", "--train_parts", "time"], capsys, "--peft none already trains every weight")
    assert not (tmp_path / "run").exists()


def test_sft_prompts_beyond_ctx_len_are_refused_before_training(tiny, tmp_path, capsys):
    with open(tmp_path / "sft.jsonl", "w", encoding="utf-8") as handle:
        for i in range(4):
            handle.write(json.dumps({"query": f"question {i} " + "words " * 10, "response": "answer"}) + "\n")
    expect_error(["--peft", "lora", "--load_model", tiny / "base.pth", "--data_file", tmp_path / "sft.jsonl",
                  "--data_type", "sft", "--dataload", "pad", "--ctx_len", "16", "--accelerator", "cpu",
                  "--proj_dir", tmp_path / "run"], capsys,
                 "all 4 samples have no supervised token within --ctx_len 16", "keeps them all")


def test_ctrl_c_exits_130_and_keeps_the_latest_checkpoint(tiny, tmp_path, capsys, in_process_training):
    import signal

    from pytorch_lightning.callbacks import Callback

    from src.train.launch import plan_from_argv, run_plan

    class CtrlCAtStep3(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if pl_module.optimizer_step_count == 2:
                raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C: give it back
    try:
        _, plan, _ = plan_from_argv([str(a) for a in tiny_run_args(tiny, tmp_path / "run")])
        status = run_plan(plan, extra_callbacks=[CtrlCAtStep3()])
    finally:
        signal.signal(signal.SIGINT, handler)
    err = capsys.readouterr().err
    assert status == 130
    assert ("interrupted by Ctrl-C (SIGINT) at optimizer step 2; the checkpoint of that step is saved: "
            f"{tmp_path / 'run' / 'checkpoints' / 'step-00000002'}") in err.strip().splitlines()[-1]
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"] == 2


def test_after_a_non_finite_loss_with_no_known_good_checkpoint_only_fresh_helps(tmp_path):
    from src.train.launch import go_back_to_good_checkpoint
    from src.train.resume import ResumePoint, folder_manifest, write_point

    assert "no checkpoint had been written yet" in go_back_to_good_checkpoint(tmp_path, rank_zero=True)
    folder = tmp_path / "checkpoints" / "step-00000001"
    folder.mkdir(parents=True)
    (folder / "trainer.pt").write_bytes(b"x" * 10)
    write_point(tmp_path, ResumePoint("step-00000001", 1, 0, 1, 1, False, {}, manifest=folder_manifest(folder),
                                      weights_finite=True))  # written, but the loss after it was not finite
    message = go_back_to_good_checkpoint(tmp_path, rank_zero=True)
    assert "no checkpoint is known good" in message and "checkpoint step 1 was written from weights that led to it"\
        in message and "Only --fresh helps now" in message
    assert folder.is_dir()  # nothing is removed when there is nothing good to go back to


def test_read_only_proj_dir_is_refused(tiny, tmp_path, capsys, monkeypatch):
    import src.checkpoint.files as files

    real_access = os.access
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    # Tests may run as root, which writes anywhere: let os.access report the folder as a read-only mount would.
    monkeypatch.setattr(files.os, "access", lambda path, mode: False if str(path) == str(read_only)
                        else real_access(path, mode))
    expect_error(tiny_run_args(tiny, read_only), capsys, f"--proj_dir {read_only} is not writable")
    expect_error(tiny_run_args(tiny, read_only / "new" / "run"), capsys,
                 f"its nearest existing folder {read_only} is not writable")
