"""The paper's convergence comparisons (Figure 1, Tables 4-6) at a scale a CPU runs: the quickstart's task.

Fine-tunes the offline quickstart's tiny base (built first if missing, with the quickstart's own stages) on its
arithmetic questions with every method at equal trainable parameters where the method allows it (b = 2r):
LoRA, PiSSA, Bone-row, Bone-col, and the Table 6 ablations Bone-Unconstrained (twice Bone's parameters: A and B)
and Bone-Hadamard. Same data, same order, same seed, same schedule: only the adapter differs. Optionally a block
size sweep of Bone-row (Table 4).

For each method: final training loss (mean of the last 10% of steps), held-out accuracy (GSM8K-style exact
match, src.eval.math with the adapter merged in memory), trainable parameters, fine-tuning wall time, and the
adapter's initialisation time (apply_peft's own clock on the base model: PiSSA's SVDs, LoRA's random A, Bone's
zeros). Results are reported as measured, whichever way they fall.

    python bench/convergence.py                     # quickstart's ci size: about 6 minutes on 2 cores
    python bench/convergence.py --size full --b_sweep 16,32,64

Writes bench/results/convergence-cpu.{json,md,png} (the PNG zooms into the early steps, as Figure 1 does).
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

from bench.common import machine_info, markdown_table, write_json
from demo.quickstart import SIZES, Quickstart
from src.checkpoint.files import write_text_atomic
from src.checkpoint.io import load_rwkv
from src.peft import BoneConfig, LoraConfig, PissaConfig, apply_peft
from src.train.plots import plot_loss_curves, read_metrics

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"


def methods(b: int, b_sweep: list) -> dict:
    """name -> (train.py flags, the same adapter as a config object for timing its initialisation)."""
    r = b // 2
    table = {
        f"lora-r{r}": (["--peft", "lora", "--lora_r", r, "--lora_alpha", r], LoraConfig(r=r, alpha=r)),
        f"pissa-r{r}": (["--peft", "pissa", "--lora_r", r, "--svd_niter", 4], PissaConfig(r=r, svd_niter=4)),
        f"bone-row-b{b}": (["--peft", "bone", "--bone_b", b], BoneConfig(b=b)),
        f"bone-col-b{b}": (["--peft", "bone", "--bone_b", b, "--bone_grouping", "col"],
                           BoneConfig(b=b, grouping="col")),
        f"bone-unconstrained-b{b}": (["--peft", "bone", "--bone_b", b, "--bone_form", "unconstrained"],
                                     BoneConfig(b=b, form="unconstrained")),
        f"bone-hadamard-b{b}": (["--peft", "bone", "--bone_b", b, "--bone_form", "hadamard"],
                                BoneConfig(b=b, form="hadamard")),
    }
    for other in b_sweep:
        if other != b:
            table[f"bone-row-b{other}"] = (["--peft", "bone", "--bone_b", other], BoneConfig(b=other))
    return table


def init_and_trainable(base: Path, config) -> tuple:
    """(apply_peft's wall time for `config` on the base model, median of 3 fresh loads; trainable parameters).
    The count comes from the adapted model, since an adapter file may also hold frozen tensors (PiSSA's
    initial factors)."""
    times = []
    for _ in range(3):
        model = load_rwkv(base, wkv_op="torch", dtype=torch.float32)
        apply_peft(model, config)
        times.append(model.peft_state.peft_init_seconds)
    return statistics.median(times), sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="ci", help="the quickstart size to run at")
    parser.add_argument("--work_dir", default="out/convergence", help="base, data and the runs' folders")
    parser.add_argument("--b_sweep", default="", help="extra Bone-row block sizes, e.g. 16,64 (Table 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    sweep = [int(v) for v in args.b_sweep.split(",") if v.strip()]

    qs = Quickstart(size, Path(args.work_dir), args.seed, args.threads, fresh=False)
    data = qs.make_task()
    base = qs.train_base(data["pretrain"])
    rows, curves = [], {}
    for name, (flags, config) in methods(size.bone_b, sweep).items():
        adapter = qs.fine_tune(name, flags, base, data["train"])
        score = qs.evaluate(name, ["--base", base, "--adapter", adapter], data["test"])
        metrics = read_metrics(Path(args.work_dir) / name / "metrics.csv")
        curves[name] = metrics
        tail = metrics[-max(1, len(metrics) // 10):]
        seconds, trainable = init_and_trainable(base, config)
        rows.append({
            "method": name,
            "trainable": trainable,
            "final_loss": sum(r["loss"] for r in tail) / len(tail),
            "first_steps_loss": sum(r["loss"] for r in metrics[:20]) / len(metrics[:20]),
            "accuracy": score["accuracy"], "correct": score["correct"], "total": score["total"],
            "train_seconds": qs.seconds[name],
            "init_seconds": seconds,
        })
        print(f"{name}: loss {rows[-1]['final_loss']:.4f}, accuracy {100 * score['accuracy']:.1f}%", flush=True)
    base_score = qs.evaluate("base", ["--model", base], data["test"])

    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine_info("cpu")
    plot = plot_loss_curves([(f"Fine-tuning the quickstart base ({args.size} size), same data and seed", curves)],
                            RESULTS / "convergence-cpu.png", zoom_steps=40)
    write_json(RESULTS / "convergence-cpu.json", {"machine": info, "size": args.size, "seed": args.seed,
                                                  "settings": vars(size), "base_accuracy": base_score,
                                                  "rows": rows})
    table = markdown_table(
        ["method", "trainable", "loss, first 20 steps", "final loss", "held-out accuracy", "fine-tune time",
         "init time"],
        [[r["method"], f"{r['trainable']:,}", f"{r['first_steps_loss']:.4f}", f"{r['final_loss']:.4f}",
          f"{100 * r['accuracy']:.1f}% ({r['correct']}/{r['total']})", f"{r['train_seconds']:.0f} s",
          f"{1000 * r['init_seconds']:.1f} ms"] for r in rows],
        right_align=(1, 2, 3, 4, 5, 6))
    text = "\n".join([
        "# Convergence on the quickstart task (CPU)", "",
        f"{info['cpu']} ({info['cpu_count']} cores); torch {info['torch']}; {info['date_utc']}. Produced by "
        f"`python bench/convergence.py --size {args.size}`; method in its docstring.", "",
        f"Base (L{size.n_layer} D{size.n_embd}, byte vocabulary) held-out accuracy before fine-tuning: "
        f"{100 * base_score['accuracy']:.1f}% ({base_score['correct']}/{base_score['total']}). Every fine-tune: "
        f"{size.ft_steps} steps of {size.ft_micro_bsz} samples, lr {size.ft_lr:g} cosine to a tenth, seed "
        f"{args.seed}. final loss: mean of the last 10% of steps.", "",
        table, "", f"Loss curves: `{plot.relative_to(ROOT)}`.", ""])
    write_text_atomic(text, RESULTS / "convergence-cpu.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
