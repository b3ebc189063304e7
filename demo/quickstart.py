"""The offline quickstart: Bone learning a real task on a CPU, end to end, with the project's own commands.

    python demo/quickstart.py                        # about 12 minutes on 2 cores (bash scripts/quickstart.sh)
    python demo/quickstart.py --size ci              # the same stages at a smaller size (the CI test)

Stages, each a command a user could type (the exact commands are in OUT/logs/*.log and printed as they run):
1. task     demo/quickstart_task.py: arithmetic word problems, a pretraining text, and a held-out test split.
2. base     train.py --peft none: a tiny byte-level RWKV6 trained from the official initialisation on the text.
3. bone     train.py --peft bone --bone_b B on the question/answer data (loss masked to the answers).
   lora     train.py --peft lora --lora_r B/2: the same number of trainable parameters (Bone-row has in·b per
            layer, LoRA r·(in+out); over the RWKV6 projections the totals are equal when b = 2r).
            Each at its own peak learning rate (bone_lr, lora_lr): the best of bench/convergence.py's sweep.
4. merge    python -m src.merge for each adapter; then python -m src.eval.math scores base, Bone and LoRA on the
            held-out questions (GSM8K format, exact match of the final number).
5. chat     demo/chat.py on the merged Bone model; a PNG of the loss curves.

Everything lands in --out_dir: data/, base/, bone/, lora/, *.pth merged models, eval-*.jsonl per-question
results, results.json and results.md (the table), chat.txt, loss_curves.png, logs/. A stage whose output
already exists for the same settings is skipped when the script is run again; --fresh redoes everything.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from src.peft.adapter_io import read_adapter
from src.train.plots import plot_loss_curves, read_metrics

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class QuickstartSize:
    """Every number that sets how long the quickstart takes."""

    n_pretrain: int  # pretraining documents
    n_train: int  # fine-tuning questions
    n_test: int  # held-out questions scored
    n_layer: int
    n_embd: int
    base_ctx_len: int
    base_micro_bsz: int
    base_steps: int  # optimizer steps of base pretraining
    base_lr: float
    ft_ctx_len: int
    ft_micro_bsz: int
    ft_steps: int  # optimizer steps of each fine-tune
    bone_lr: float  # each method's own peak rate: its best in bench/convergence.py's one-step sweep
    lora_lr: float
    bone_b: int  # LoRA gets r = bone_b // 2


SIZES = {
    "full": QuickstartSize(n_pretrain=40000, n_train=4000, n_test=300, n_layer=4, n_embd=128,
                           base_ctx_len=128, base_micro_bsz=16, base_steps=1400, base_lr=4e-3,
                           ft_ctx_len=128, ft_micro_bsz=16, ft_steps=150, bone_lr=3e-3, lora_lr=1e-2,
                           bone_b=32),
    "ci": QuickstartSize(n_pretrain=20000, n_train=2000, n_test=100, n_layer=3, n_embd=128,
                         base_ctx_len=128, base_micro_bsz=16, base_steps=500, base_lr=4e-3,
                         ft_ctx_len=128, ft_micro_bsz=16, ft_steps=150, bone_lr=3e-3, lora_lr=1e-2,
                         bone_b=32),
}
CHAT_PROMPTS = ("Sara has 12 shells. How many after finding 7 more?",
                "Omar has 15 coins. How many after losing 6?")
STEPS_PER_EPOCH = 50  # epochs only pace checkpoints and the log here


class StageFailed(RuntimeError):
    """A stage's command exited with an error; its log says why."""


class Quickstart:
    def __init__(self, size: QuickstartSize, out_dir: Path, seed: int, threads: int, fresh: bool,
                 arch: str = "x060"):
        self.size = size
        self.arch = arch  # x060: an RWKV6 base; x070: an RWKV-7 base (train.py --arch, official x070 init)
        self.out = out_dir
        self.seed = seed
        self.threads = threads
        self.fresh = fresh
        self.logs = out_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        # Wall time of each stage, kept across reruns so a reused stage still reports its time.
        self.timings_file = out_dir / "timings.json"
        self.seconds = json.loads(self.timings_file.read_text()) if self.timings_file.exists() else {}
        self.timings_lock = threading.Lock()

    # ---- running commands ----------------------------------------------------------------------------------------
    def run(self, stage: str, args: list) -> str:
        """Run `python ARGS` from the repo root, log it to logs/STAGE.log, return its stdout; raise on failure."""
        command = [sys.executable] + [str(a) for a in args]
        log = self.logs / f"{stage}.log"
        print(f"[{stage}] {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True)
        with self.timings_lock:  # bench/convergence.py runs stages from several threads
            self.seconds[stage] = time.perf_counter() - started
            self.timings_file.write_text(json.dumps(self.seconds, indent=1), encoding="utf-8")
        log.write_text(f"$ {' '.join(command)}\n\n--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}",
                       encoding="utf-8")
        if completed.returncode != 0:
            tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-15:])
            raise StageFailed(f"stage {stage} failed (exit {completed.returncode}); full log: {log}\n{tail}")
        return completed.stdout

    def done(self, path: Path) -> bool:
        return path.exists() and not self.fresh

    # ---- stages --------------------------------------------------------------------------------------------------
    def make_task(self) -> dict:
        data = self.out / "data"
        paths = {name: data / f"{name}.jsonl" for name in ("pretrain", "train", "test")}
        if not all(self.done(p) for p in paths.values()):
            s = self.size
            self.run("task", ["demo/quickstart_task.py", "--out_dir", data, "--seed", self.seed,
                              "--n_pretrain", s.n_pretrain, "--n_train", s.n_train, "--n_test", s.n_test])
        return paths

    def common_train_args(self, proj_dir: Path, ctx_len: int, micro_bsz: int, steps: int, lr: float,
                          seed: Optional[int] = None) -> list:
        """Flags every training shares; seed (of initialisation and data order) defaults to the task's."""
        epochs = max(1, steps // STEPS_PER_EPOCH)
        return ["--proj_dir", proj_dir, "--tokenizer", "byte", "--ctx_len", ctx_len, "--micro_bsz", micro_bsz,
                "--epoch_steps", steps // epochs, "--epoch_count", epochs, "--epoch_save", epochs,
                "--lr_init", lr, "--lr_final", lr / 10, "--lr_schedule", "cos", "--warmup_steps", 10,
                "--accelerator", "cpu", "--strategy", "auto", "--precision", "fp32",
                "--seed", self.seed if seed is None else seed,
                "--num_threads", self.threads, "--fresh"]

    def base_args(self, pretrain: Path) -> list:
        s = self.size
        return (["train.py", "--peft", "none", "--arch", self.arch, "--n_layer", s.n_layer, "--n_embd", s.n_embd,
                 "--vocab_size", 256, "--data_file", pretrain, "--data_type", "jsonl", "--dataload", "get"]
                + self.common_train_args(self.out / "base", s.base_ctx_len, s.base_micro_bsz, s.base_steps,
                                         s.base_lr))

    def methods(self) -> dict:
        """The two fine-tunes compared: name -> (train.py flags, peak learning rate). Equal trainable parameters
        at r = b/2; each method at its own best learning rate."""
        b = self.size.bone_b
        return {"bone": (["--peft", "bone", "--bone_b", b], self.size.bone_lr),
                "lora": (["--peft", "lora", "--lora_r", b // 2, "--lora_alpha", b // 2], self.size.lora_lr)}

    def fine_tune_args(self, name: str, peft_flags: list, base_args: list, train_data: Path, lr: float,
                       seed: Optional[int] = None) -> list:
        """train.py's arguments for the fine-tune `name` (its folder) with `peft_flags` at peak learning rate lr;
        base_args names the base (--load_model PATH, or shape flags for a dry run). For one seed every fine-tune
        sees the same data in the same order."""
        s = self.size
        return (["train.py", *peft_flags, *base_args, "--data_file", train_data, "--data_type", "sft",
                 "--dataload", "pad", "--loss_mask", "qa"]
                + self.common_train_args(self.out / name, s.ft_ctx_len, s.ft_micro_bsz, s.ft_steps, lr, seed))

    def train_base(self, pretrain: Path) -> Path:
        final = self.out / "base" / "rwkv-final.pth"
        if not self.done(final):
            self.run("base", self.base_args(pretrain))
        return final

    def fine_tune(self, name: str, peft_flags: list, base: Path, train_data: Path, lr: float,
                  seed: Optional[int] = None) -> Path:
        final = self.out / name / "adapter-final.pth"
        if not self.done(final):
            self.run(name, self.fine_tune_args(name, peft_flags, ["--load_model", base], train_data, lr, seed))
        return final

    def dry_run(self, data: dict) -> None:
        """Every training command with --dry_run (shapes from flags, since no base exists yet): checks the plan
        and prints each trainable count without training."""
        s = self.size
        shape = ["--arch", self.arch, "--n_layer", s.n_layer, "--n_embd", s.n_embd, "--vocab_size", 256]
        self.run("base-dry-run", self.base_args(data["pretrain"]) + ["--dry_run"])
        for method, (flags, lr) in self.methods().items():
            output = self.run(f"{method}-dry-run",
                              self.fine_tune_args(method, flags, shape, data["train"], lr) + ["--dry_run"])
            print(f"[{method}-dry-run] {output.strip().splitlines()[-1]}")

    def merge(self, method: str, base: Path, adapter: Path) -> Path:
        merged = self.out / f"{method}-merged.pth"
        if not self.done(merged):
            self.run(f"merge-{method}", ["-m", "src.merge", "--base", base, "--adapter", adapter, "--output", merged])
        return merged

    def evaluate(self, name: str, model_args: list, test: Path) -> dict:
        """Held-out accuracy of the model given by model_args (--model PATH, or --base PATH --adapter PATH)."""
        results = self.out / f"eval-{name}.jsonl"
        if not self.done(results):
            self.run(f"eval-{name}", ["-m", "src.eval.math", *model_args, "--data", test, "--format", "gsm8k",
                                      "--tokenizer", "byte", "--wkv_op", "torch", "--device", "cpu",
                                      "--max_new_tokens", 96, "--batch_size", 64, "--out", results,
                                      "--log_every", 0])
        records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
        n_correct = sum(bool(r["correct"]) for r in records)
        return {"correct": n_correct, "total": len(records), "accuracy": n_correct / len(records)}

    def chat(self, model: Path) -> str:
        transcript = self.out / "chat.txt"
        if not self.done(transcript):
            args = ["demo/chat.py", "--model", model, "--temperature", 0, "--max_tokens", 96, "--fresh"]
            for prompt in CHAT_PROMPTS:
                args += ["--prompt", prompt]
            transcript.write_text(self.run("chat", args), encoding="utf-8")
        return transcript.read_text(encoding="utf-8")

    def plot(self) -> Path:
        series = {"base pretraining": read_metrics(self.out / "base" / "metrics.csv")}
        fine_tunes = {f"{m} fine-tune": read_metrics(self.out / m / "metrics.csv") for m in ("bone", "lora")}
        return plot_loss_curves([("Base pretraining (byte-level LM)", series),
                                 ("Fine-tuning, equal trainable parameters", fine_tunes)],
                                self.out / "loss_curves.png")


def trainable_count(adapter: Path) -> int:
    return sum(t.numel() for t in read_adapter(adapter)["tensors"].values())


def results_table(rows: list) -> str:
    lines = ["| model | trainable parameters | peak lr | training time (s) | held-out accuracy |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['trainable']:,} | {row['lr']:g} | {row['train_seconds']:.0f} | "
                     f"{100 * row['accuracy']:.1f}% ({row['correct']}/{row['total']}) |")
    return "\n".join(lines)


def run_quickstart(size_name: str, out_dir: Path, seed: int, threads: int, fresh: bool, dry_run: bool = False,
                   arch: str = "x060"):
    size = SIZES[size_name]
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"size": size_name, "seed": seed, "threads": threads, **asdict(size)}
    if arch != "x060":  # RWKV6 quickstarts keep their settings file as it was
        settings["arch"] = arch
    settings_file = out_dir / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"{out_dir} holds a quickstart made with other settings ({settings_file}); pass --fresh "
                         f"to replace it, or choose another --out_dir")
    settings_file.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    print(f"settings: {json.dumps(settings)}\n(bone_lr, lora_lr: each method's best peak learning rate in "
          f"bench/convergence.py's one-step sweep: bench/results/convergence-cpu-one-step.md)", flush=True)

    qs = Quickstart(size, out_dir, seed, threads, fresh, arch)
    started = time.perf_counter()
    data = qs.make_task()
    if dry_run:
        qs.dry_run(data)
        return None
    base = qs.train_base(data["pretrain"])
    adapters = {m: qs.fine_tune(m, flags, base, data["train"], lr) for m, (flags, lr) in qs.methods().items()}
    merged = {m: qs.merge(m, base, adapters[m]) for m in adapters}
    scores = {"base": qs.evaluate("base", ["--model", base], data["test"])}
    scores.update({m: qs.evaluate(m, ["--model", merged[m]], data["test"]) for m in merged})
    transcript = qs.chat(merged["bone"])
    plot = qs.plot()

    base_params = sum(t.numel() for t in torch.load(base, map_location="cpu").values())
    generation = "RWKV-7 " if arch == "x070" else ""
    rows = [{"model": f"base ({generation}L{size.n_layer} D{size.n_embd}, from scratch)", "trainable": base_params,
             "lr": size.base_lr, "train_seconds": qs.seconds["base"], **scores["base"]},
            {"model": f"Bone-row b={size.bone_b}", "trainable": trainable_count(adapters["bone"]),
             "lr": size.bone_lr, "train_seconds": qs.seconds["bone"], **scores["bone"]},
            {"model": f"LoRA r={size.bone_b // 2}", "trainable": trainable_count(adapters["lora"]),
             "lr": size.lora_lr, "train_seconds": qs.seconds["lora"], **scores["lora"]}]
    table = results_table(rows)
    summary = {"settings": settings, "rows": rows, "stage_seconds": qs.seconds,
               "total_seconds": time.perf_counter() - started}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (out_dir / "results.md").write_text(table + "\n", encoding="utf-8")

    print("\n" + table)
    print(f"\nChat with the Bone model ({merged['bone']}):\n{transcript.rstrip()}")
    print(f"\nloss curves: {plot}\nresults: {out_dir / 'results.md'} | per-question answers: "
          f"{out_dir}/eval-*.jsonl | logs: {qs.logs}")
    print(f"done in {summary['total_seconds']:.0f} s")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full: about 12 minutes on 2 CPU cores; ci: the same stages, smaller")
    parser.add_argument("--out_dir", default="out/quickstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every stage")
    parser.add_argument("--fresh", action="store_true", help="delete --out_dir first and redo every stage")
    parser.add_argument("--dry_run", action="store_true",
                        help="make the task, run each training command with --dry_run (plan and trainable counts), "
                             "and stop")
    parser.add_argument("--arch", choices=("x060", "x070"), default="x060",
                        help="the tiny base's generation: x060 (RWKV6) or x070 (RWKV-7)")
    args = parser.parse_args(argv)
    try:
        run_quickstart(args.size, Path(args.out_dir), args.seed, args.threads, args.fresh, args.dry_run,
                       args.arch)
    except StageFailed as error:
        print(f"quickstart: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
