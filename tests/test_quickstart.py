"""The offline quickstart end to end at its CI size: the same stages and code path as `bash scripts/quickstart.sh`,
smaller numbers. Each stage must leave its file, and fine-tuning must beat the base on held-out questions."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.eval.answers import answers_equal, extract_prediction, extract_reference

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    env = dict(os.environ, PYTHON=sys.executable, QUICKSTART_SIZE="ci", OUT_DIR=str(out))
    completed = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh")], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=1800)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out, completed.stdout


def test_every_stage_leaves_its_file(quickstart):
    out, _ = quickstart
    expected = ["data/pretrain.jsonl", "data/train.jsonl", "data/test.jsonl", "base/rwkv-final.pth",
                "base/metrics.csv", "bone/adapter-final.pth", "bone/metrics.csv", "lora/adapter-final.pth",
                "lora/metrics.csv", "bone-merged.pth", "lora-merged.pth", "eval-base.jsonl", "eval-bone.jsonl",
                "eval-lora.jsonl", "results.json", "results.md", "chat.txt", "loss_curves.png"]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The merged models keep the base's official layout: same keys, shapes and dtypes.
    base = torch.load(out / "base" / "rwkv-final.pth", map_location="cpu")
    merged = torch.load(out / "bone-merged.pth", map_location="cpu")
    assert {k: (v.shape, v.dtype) for k, v in merged.items()} == {k: (v.shape, v.dtype) for k, v in base.items()}


def rescore(path):
    """Accuracy recomputed from the per-question file's generated text and reference, not its 'correct' field."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    correct = sum(answers_equal("gsm8k", extract_prediction("gsm8k", r["generated"]), r["reference"])
                  for r in records)
    return correct, len(records)


def test_fine_tuning_beats_the_base_on_held_out_questions(quickstart):
    out, stdout = quickstart
    results = json.loads((out / "results.json").read_text())
    rows = {row["model"].split()[0]: row for row in results["rows"]}
    test_answers = [json.loads(line)["answer"] for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    for name in ("base", "bone", "lora"):
        correct, total = rescore(out / f"eval-{name}.jsonl")
        row = rows[{"base": "base", "bone": "Bone-row", "lora": "LoRA"}[name]]
        assert (row["correct"], row["total"]) == (correct, total) == (correct, len(test_answers))
    base, bone, lora = (rows[k]["accuracy"] for k in ("base", "Bone-row", "LoRA"))
    assert bone > base + 0.1, f"Bone {bone:.2f} does not clearly beat the base {base:.2f}"
    assert lora > base + 0.1, f"LoRA {lora:.2f} does not clearly beat the base {base:.2f}"
    # Equal trainable parameters, as the comparison promises.
    assert rows["Bone-row"]["trainable"] == rows["LoRA"]["trainable"] > 0
    assert "| Bone-row b=" in stdout and "held-out accuracy" in stdout


def test_the_references_are_the_task_answers(quickstart):
    out, _ = quickstart
    first = json.loads((out / "data" / "test.jsonl").read_text().splitlines()[0])
    record = json.loads((out / "eval-bone.jsonl").read_text().splitlines()[0])
    assert record["reference"] == extract_reference("gsm8k", first["answer"])


def test_chat_transcript_answers_both_prompts(quickstart):
    out, _ = quickstart
    transcript = (out / "chat.txt").read_text(encoding="utf-8")
    replies = [part.split("\n\nUser: ")[0].strip() for part in transcript.split("Assistant:")[1:]]
    assert transcript.count("User: ") == 2 and len(replies) == 2
    assert all(replies), transcript
