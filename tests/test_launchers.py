"""Every shell launcher under scripts/ parses (bash -n), and each one that trains runs its --dry_run on a tiny
checkpoint, printing the plan and the trainable count that train.py's dry run computes for the same shapes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rwkv_fixtures import write_random_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.sh"))


def run_script(name, env_overrides, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1", **env_overrides)
    return subprocess.run(["bash", str(ROOT / "scripts" / name)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])


def test_the_expected_launchers_exist():
    expected = {"run_bone.sh", "run_lora.sh", "run_pissa.sh", "merge_bone.sh", "chat.sh", "quickstart.sh",
                "eval_gsm8k.sh", "eval_math.sh", "bench_table7.sh", "test.sh", "setup_venv.sh"}
    assert expected <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_launcher_parses(name):
    checked = subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launchers")
    # D=128, F=448: b=64 divides both, so the paper's b applies unchanged.
    write_random_checkpoint(folder / "base.pth", n_layer=2, n_embd=128, vocab_size=256)
    records = [{"query": f"What is {i} + 1?", "response": f"{i} + 1 = {i + 1}. The answer is {i + 1}."}
               for i in range(20)]
    (folder / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


@pytest.mark.parametrize("script,method,expected_trainable", [
    # Bone-row: in·b per adapted layer; LoRA / PiSSA: r·(in+out). L2 D128 F448, 8 projections per layer.
    ("run_bone.sh", "bone", 2 * 64 * (5 * 128 + 128 + 128 + 448)),
    ("run_lora.sh", "lora", 2 * 32 * (5 * 256 + (128 + 448) + 256 + (448 + 128))),
    ("run_pissa.sh", "pissa", 2 * 32 * (5 * 256 + (128 + 448) + 256 + (448 + 128))),
])
def test_training_launcher_dry_run(tiny_inputs, script, method, expected_trainable):
    completed = run_script(script, {
        "LOAD_MODEL": str(tiny_inputs / "base.pth"), "DATA_FILE": str(tiny_inputs / "sft.jsonl"),
        "PROJ_DIR": str(tiny_inputs / f"out-{method}"), "N_LAYER": "2", "N_EMBD": "128", "VOCAB_SIZE": "256",
        "DEVICES": "1", "MICRO_BSZ": "8", "ACCELERATOR": "cpu", "PRECISION": "fp32",
    })
    assert completed.returncode == 0, completed.stderr
    summary = last_json_line(completed.stdout)
    assert summary["method"] == method
    assert summary["trainable"] == expected_trainable
    assert summary["adapted_modules"] == 2 * 8


@pytest.mark.parametrize("script,entry", [("merge_bone.sh", "src.merge"), ("chat.sh", "demo/chat.py"),
                                          ("eval_gsm8k.sh", "src.eval.math"), ("eval_math.sh", "src.eval.math")])
def test_non_training_launcher_dry_run_prints_its_command(script, entry):
    completed = run_script(script, {})
    assert completed.returncode == 0, completed.stderr
    assert entry in completed.stdout


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
