"""The shell launchers under scripts/: every one parses (bash -n); the training launchers are thin wrappers over
`train.py --config configs/rwkv6-<size>.yaml` (the paper's setting lives in the config, written once), so their
dry run prints what train.py's own dry run on that config prints; DEVICES / MICRO_BSZ keep the config's global
batch and step count; the other launchers print their command under DRY_RUN=1."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from src.train.args import load_yaml_config, parse_args
from tests.rwkv_fixtures import write_random_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.sh"))
TRAINING_LAUNCHERS = ("run.sh", "run_bone.sh", "run_lora.sh", "run_pissa.sh")
PAPER_CONFIGS = ("rwkv6-1b6", "rwkv6-3b", "rwkv6-7b")
METAMATHQA_RECORDS = 395_000


def run_script(name, env_overrides, args=(), timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1", **env_overrides)
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_train_py(args, timeout=300):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])


def printed_train_command(stderr):
    """The train.py arguments the launcher printed (its '+ ...' line on stderr), without python and train.py."""
    lines = [line for line in stderr.splitlines() if line.startswith("+ ")]
    assert len(lines) == 1, stderr
    words = shlex.split(lines[0][2:])
    assert words[1] == "train.py", words
    return words[2:]


def printed_train_config(stderr):
    """The TrainConfig that the printed train.py command gives (its relative --config read from the repo root)."""
    args = printed_train_command(stderr)
    at = args.index("--config") + 1
    config = parse_args(args[:at] + [str(ROOT / args[at])] + args[at + 1:])
    config.config = args[at]
    return config


def test_the_expected_launchers_exist():
    expected = {"run.sh", "run_bone.sh", "run_lora.sh", "run_pissa.sh", "merge_bone.sh", "chat.sh", "quickstart.sh",
                "eval.sh", "bench_table7.sh", "test.sh", "setup_venv.sh"}
    assert expected <= set(SCRIPTS)
    assert not {"eval_gsm8k.sh", "eval_math.sh"} & set(SCRIPTS)  # one eval launcher, FORMAT=gsm8k|math


@pytest.mark.parametrize("name", SCRIPTS)
def test_launcher_parses(name):
    checked = subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# ---- the paper's setting: once, in the configs ----------------------------------------------------------------------
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_hold_table1_and_one_pass_over_metamathqa(name):
    cfg = parse_args(["--config", str(ROOT / "configs" / f"{name}.yaml")])
    # Table 1: "4×NVIDIA 4090 RWKV6 r=32/b=64 64 2e-5 bf16"; ctx 512 (Section 5)
    assert (cfg.bone_b, cfg.lora_r) == (64, 32)
    assert cfg.micro_bsz * cfg.accumulate_grad_batches * cfg.world_size == 64
    assert cfg.lr_init == cfg.lr_final == 2e-5 and cfg.warmup_steps <= 0
    assert (cfg.precision, cfg.ctx_len) == ("bf16", 512)
    # SFT on MetaMathQA: one record per padded sample, loss on the responses
    assert (cfg.data_type, cfg.dataload, cfg.loss_mask) == ("sft", "pad", "qa")
    # the same optimizer steps at every size: one pass over the 395K records at 64 samples per step
    assert cfg.total_steps == -(-METAMATHQA_RECORDS // 64) == 6172
    assert cfg.epoch_count == 1


def test_training_launchers_restate_no_setting():
    derived = {"peft", "bone_b", "lora_r", "devices", "micro_bsz", "accumulate_grad_batches", "epoch_steps",
               "num_nodes", "config", "load_model", "data_file", "proj_dir", "dry_run"}
    keys = set()
    for name in PAPER_CONFIGS:
        keys |= set(load_yaml_config(str(ROOT / "configs" / f"{name}.yaml")))
    for script in TRAINING_LAUNCHERS:
        text = (ROOT / "scripts" / script).read_text(encoding="utf-8")
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
        flags = set(re.findall(r"--([a-z_]+)", code))
        assert not (flags & keys) - derived, f"{script} restates {(flags & keys) - derived}"
        assert not re.search(r"2e-5|2\.0e-5|\b512\b", code), f"{script} restates a value of the config"
    for script in ("run_bone.sh", "run_lora.sh", "run_pissa.sh"):
        text = (ROOT / "scripts" / script).read_text(encoding="utf-8")
        assert "run.sh" in text and "train.py" not in text.replace("to train.py", "")
        assert re.findall(r"bash scripts/(\w+\.sh)", text) == [script] * len(re.findall(r"bash scripts/", text))


# ---- "done when": the launcher's dry run is train.py's dry run on the config ----------------------------------------
def test_run_bone_dry_run_is_train_py_dry_run_on_the_config(tmp_path):
    # No checkpoint (LOAD_MODEL empty): the shapes come from the config's shape keys, on the meta device.
    data_file, proj_dir = str(tmp_path / "MetaMathQA-395K.json"), str(tmp_path / "out")
    launched = run_script("run_bone.sh", {"LOAD_MODEL": "", "DATA_FILE": data_file, "PROJ_DIR": proj_dir})
    assert launched.returncode == 0, launched.stderr
    direct = run_train_py(["--config", "configs/rwkv6-1b6.yaml", "--peft", "bone", "--dry_run",
                           "--data_file", data_file, "--proj_dir", proj_dir])
    assert direct.returncode == 0, direct.stderr
    assert launched.stdout == direct.stdout
    summary = last_json_line(launched.stdout)
    assert (summary["method"], summary["trainable"], summary["n_layer"], summary["n_embd"]) == \
        ("bone", 33_030_144, 24, 2048)
    assert sorted(printed_train_command(launched.stderr)) == sorted(
        ["--config", "configs/rwkv6-1b6.yaml", "--peft", "bone", "--data_file", data_file, "--proj_dir", proj_dir,
         "--dry_run"])


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launchers")
    # D=128, F=448: b=64 divides both, so the paper's b applies unchanged.
    write_random_checkpoint(folder / "base.pth", n_layer=2, n_embd=128, vocab_size=256)
    records = [{"query": f"What is {i} + 1?", "response": f"{i} + 1 = {i + 1}. The answer is {i + 1}."}
               for i in range(20)]
    (folder / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


# The tiny checkpoint's shape, passed through: the config's shape keys (L24 D2048) are checked against it.
TINY_SHAPE = ("--n_layer", "2", "--n_embd", "128", "--vocab_size", "256")


@pytest.mark.parametrize("script,method,expected_trainable", [
    # Bone-row: in·b per adapted layer; LoRA / PiSSA: r·(in+out). L2 D128 F448, 8 projections per layer.
    ("run_bone.sh", "bone", 2 * 64 * (5 * 128 + 128 + 128 + 448)),
    ("run_lora.sh", "lora", 2 * 32 * (5 * 256 + (128 + 448) + 256 + (448 + 128))),
    ("run_pissa.sh", "pissa", 2 * 32 * (5 * 256 + (128 + 448) + 256 + (448 + 128))),
])
def test_training_launcher_dry_run_on_a_checkpoint(tiny_inputs, script, method, expected_trainable):
    paths = {"LOAD_MODEL": str(tiny_inputs / "base.pth"), "DATA_FILE": str(tiny_inputs / "sft.jsonl"),
             "PROJ_DIR": str(tiny_inputs / f"out-{method}")}
    launched = run_script(script, paths, args=TINY_SHAPE)
    assert launched.returncode == 0, launched.stderr
    direct = run_train_py(["--config", "configs/rwkv6-1b6.yaml", "--peft", method, "--load_model", paths["LOAD_MODEL"],
                           "--data_file", paths["DATA_FILE"], "--proj_dir", paths["PROJ_DIR"], "--dry_run",
                           *TINY_SHAPE])
    assert direct.returncode == 0, direct.stderr
    assert launched.stdout == direct.stdout
    summary = last_json_line(launched.stdout)
    assert summary["method"] == method
    assert summary["trainable"] == expected_trainable
    assert summary["adapted_modules"] == 2 * 8


def test_launcher_rank_variables_and_default_proj_dir(tiny_inputs):
    launched = run_script("run_lora.sh", {"LOAD_MODEL": str(tiny_inputs / "base.pth"), "LORA_R": "8"},
                          args=TINY_SHAPE)
    assert launched.returncode == 0, launched.stderr
    assert last_json_line(launched.stdout)["trainable"] == 2 * 8 * (5 * 256 + (128 + 448) + 256 + (448 + 128))
    cfg = printed_train_config(launched.stderr)
    assert (cfg.peft, cfg.lora_r, cfg.proj_dir) == ("lora", 8, "out/lora-r8-metamath")
    launched = run_script("run_bone.sh", {"LOAD_MODEL": "", "SIZE": "3b"})
    assert launched.returncode == 0, launched.stderr
    cfg = printed_train_config(launched.stderr)
    assert (cfg.config, cfg.bone_b, cfg.proj_dir, cfg.n_embd) == ("configs/rwkv6-3b.yaml", 64,
                                                                   "out/bone-b64-metamath-3b", 2560)
    assert last_json_line(launched.stdout)["trainable"] == 55_050_240


# ---- DEVICES / MICRO_BSZ: accumulation derived once, in scripts/run.sh --------------------------------------------
@pytest.mark.parametrize("env,expected", [
    ({"DEVICES": "4"}, dict(devices=4, micro_bsz=8, accumulate_grad_batches=2)),       # the paper's 4 GPUs
    ({"DEVICES": "2", "MICRO_BSZ": "4"}, dict(devices=2, micro_bsz=4, accumulate_grad_batches=8)),
    ({"DEVICES": "8", "SIZE": "7b"}, dict(devices=8, micro_bsz=4, accumulate_grad_batches=2)),
])
def test_devices_keep_the_global_batch_and_the_steps(tiny_inputs, env, expected):
    launched = run_script("run_bone.sh", dict(env, LOAD_MODEL=str(tiny_inputs / "base.pth")), args=TINY_SHAPE)
    assert launched.returncode == 0, launched.stderr
    cfg = printed_train_config(launched.stderr)
    paper = parse_args(["--config", str(ROOT / cfg.config)])
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    assert cfg.micro_bsz * cfg.accumulate_grad_batches * cfg.world_size == 64
    assert cfg.total_steps == paper.total_steps == 6172


@pytest.mark.parametrize("env,args,message", [
    ({"DEVICES": "3"}, (), "not a multiple of"),
    ({"MICRO_BSZ": "128"}, (), "not a multiple of"),
    ({"DEVICES": "4"}, ("--accumulate_grad_batches", "4"), "use one or the other"),
    ({}, ("--config", "configs/tiny-cpu.yaml"), "set CONFIG=FILE (or SIZE) instead"),
])
def test_batch_variables_that_break_the_global_batch_are_refused(env, args, message):
    launched = run_script("run_bone.sh", dict(env, LOAD_MODEL=""), args=args)
    assert launched.returncode == 2
    assert message in launched.stderr and "+ " not in launched.stderr


def test_run_sh_refuses_unknown_methods_and_sizes():
    launched = run_script("run.sh", {}, args=("dora",))
    assert launched.returncode == 2 and "usage: bash scripts/run.sh bone|lora|pissa" in launched.stderr
    launched = run_script("run_bone.sh", {"SIZE": "14b"})
    assert launched.returncode == 2 and "configs/rwkv6-14b.yaml not found" in launched.stderr


# ---- the other launchers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script,entry", [("merge_bone.sh", "src.merge"), ("chat.sh", "demo/chat.py"),
                                          ("eval.sh", "src.eval.math")])
def test_non_training_launcher_dry_run_prints_its_command(script, entry):
    completed = run_script(script, {})
    assert completed.returncode == 0, completed.stderr
    assert entry in completed.stdout


@pytest.mark.parametrize("fmt", ["gsm8k", "math"])
def test_eval_launcher_format(fmt):
    completed = run_script("eval.sh", {"FORMAT": fmt, "LIMIT": "5"}, args=("--log_every", "0"))
    assert completed.returncode == 0, completed.stderr
    words = completed.stdout.split()
    assert words[words.index("--format") + 1] == fmt
    assert words[words.index("--data") + 1] == f"data/{fmt}_test.jsonl"
    assert words[words.index("--out") + 1] == f"out/eval/{fmt}_results.jsonl"
    assert "--max_new_tokens" not in words  # src.eval.math's per-format limit
    assert words[-4:] == ["--limit", "5", "--log_every", "0"]
    completed = run_script("eval.sh", {"FORMAT": fmt, "MAX_NEW_TOKENS": "16"})
    words = completed.stdout.split()
    assert words[words.index("--max_new_tokens") + 1] == "16"


def test_eval_launcher_refuses_an_unknown_format():
    completed = run_script("eval.sh", {"FORMAT": "humaneval"})
    assert completed.returncode == 2 and "FORMAT must be gsm8k or math" in completed.stderr


def test_quickstart_dry_run(tmp_path):
    completed = run_script("quickstart.sh", {"QUICKSTART_SIZE": "ci", "OUT_DIR": str(tmp_path / "qs")})
    assert completed.returncode == 0, completed.stderr
    counts = {}
    for line in completed.stdout.splitlines():
        for method in ("bone", "lora"):
            if line.startswith(f"[{method}-dry-run] {{"):
                counts[method] = json.loads(line.split("] ", 1)[1])["trainable"]
    # Equal trainable parameters at b = 2r, as the quickstart's comparison needs.
    assert counts["bone"] == counts["lora"] > 0
    for name in ("pretrain", "train", "test"):
        assert (tmp_path / "qs" / "data" / f"{name}.jsonl").stat().st_size > 0
