"""The methods compared honestly at a scale a CPU runs: each at its own best learning rate, over several seeds,
on a task that saturates and one that does not (the paper's convergence comparisons, Figure 1 and Tables 4-6).

Every method fine-tunes the offline quickstart's tiny base (built first if missing, with the quickstart's own
stages) at equal trainable parameters where the method allows it (b = 2r): Bone-row, Bone-col, the Table 6
ablations Bone-Unconstrained (twice Bone's parameters: A and B) and Bone-Hadamard, MiSS (HF peft's default form,
r = b), LoRA and PiSSA. Two tasks, both scored on held-out questions (GSM8K-style exact match, src.eval.math
with the adapter merged in memory):
- one-step: the quickstart's own questions ("Tom has 7 apples. How many after getting 5 more?");
- two-step: two changes in a row, worked in two equations (demo/quickstart_task.py --two_step); both changes of
  a test question are pairs held out of every training question and worked example.

For each task and method:
1. Learning-rate sweep at seed 0 on a log grid (--lr_grid). While the best value lies on an edge of the grid, the
   grid grows past that edge by the same factor, so each method's best is inside its own grid (at most
   --max_grow values more; a best still on the edge is marked in the table).
2. The best learning rate (highest accuracy; lower final loss breaks ties) is rerun with seeds 1..n-1 (--seeds
   n in all). The seed sets the adapter's initialisation and the data order; base and data stay the same.
   The reported accuracy is the mean over the n seeds, with the smallest and largest.
3. Training loss at fixed step counts (mean of the 5 steps up to each), over the same seeds: the paper's
   "faster convergence" claim is about the early steps.

    python bench/convergence.py                     # the quickstart's full size: hours on 2 cores
    python bench/convergence.py --size ci --tasks one-step --methods bone-row,lora

Writes, per task, bench/results/convergence-cpu-TASK.{json,md}, convergence-cpu-TASK.png (held-out accuracy
against learning rate, every method on one figure) and convergence-cpu-TASK-loss.png (loss curves at each
method's best rate). Results are reported as measured, whichever way they fall. Finished runs are reused when
rerun, so a sweep that was stopped goes on where it was.
"""
import argparse
import json
import math
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.common import machine_info, markdown_table, write_json
from demo.quickstart import SIZES, Quickstart
from demo.quickstart_task import write_two_step_task
from src.checkpoint.files import save_figure_atomic, write_text_atomic
from src.checkpoint.io import load_rwkv
from src.peft import BoneConfig, LoraConfig, MissConfig, PissaConfig, apply_peft
from src.train.plots import COLORS, plot_loss_curves, read_metrics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TASKS = ("one-step", "two-step")
TWO_STEP_CTX_LEN = 160  # its longest question and answer take 136 bytes
LOSS_STEPS = (10, 25, 50, 100)  # loss reported at these steps (those within the run), and at the end
LOSS_WINDOW = 5


def methods(b: int) -> dict:
    """name -> (train.py flags, the same adapter as a config object for counting and timing it)."""
    r = b // 2
    return {
        "bone-row": (["--peft", "bone", "--bone_b", b], BoneConfig(b=b)),
        "bone-col": (["--peft", "bone", "--bone_b", b, "--bone_grouping", "col"], BoneConfig(b=b, grouping="col")),
        "bone-unconstrained": (["--peft", "bone", "--bone_b", b, "--bone_form", "unconstrained"],
                               BoneConfig(b=b, form="unconstrained")),
        "bone-hadamard": (["--peft", "bone", "--bone_b", b, "--bone_form", "hadamard"],
                          BoneConfig(b=b, form="hadamard")),
        "miss": (["--peft", "miss", "--miss_r", b], MissConfig(r=b)),
        "lora": (["--peft", "lora", "--lora_r", r, "--lora_alpha", r], LoraConfig(r=r, alpha=r)),
        "pissa": (["--peft", "pissa", "--lora_r", r, "--svd_niter", 4], PissaConfig(r=r, svd_niter=4)),
    }


def method_label(name: str, b: int) -> str:
    return f"{name} r={b // 2}" if name in ("lora", "pissa") else f"{name} {'r' if name == 'miss' else 'b'}={b}"


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


def grown(grid: list, accuracy: dict) -> list:
    """Learning rates to add to a sorted log grid: one past each edge that holds the best accuracy, unless the
    accuracy is the same everywhere (then no direction is better)."""
    best = max(accuracy[lr] for lr in grid)
    if len(grid) < 2 or all(accuracy[lr] == best for lr in grid):
        return []
    extra = []
    if accuracy[grid[0]] == best:
        extra.append(grid[0] * grid[0] / grid[1])
    if accuracy[grid[-1]] == best:
        extra.append(grid[-1] * grid[-1] / grid[-2])
    return extra


def loss_at(rows: list, step: int):
    """Mean training loss over the LOSS_WINDOW steps up to `step`; None when the run is shorter."""
    window = [r["loss"] for r in rows if step - LOSS_WINDOW < r["step"] <= step]
    return sum(window) / len(window) if len(window) == LOSS_WINDOW else None


def final_loss(rows: list) -> float:
    tail = rows[-max(1, len(rows) // 10):]
    return sum(r["loss"] for r in tail) / len(tail)


class Sweep:
    """Runs one task's fine-tunes and their held-out scoring, `jobs` at a time, each stage a command of `qs` (the
    Quickstart whose sizes the task trains at); files: the task's {"train", "test"} data."""

    def __init__(self, task: str, qs: Quickstart, files: dict, base: Path, jobs: int):
        self.task, self.qs, self.files, self.base, self.jobs = task, qs, files, base, jobs

    def one(self, method: str, flags: list, lr: float, seed: int) -> dict:
        name = f"{self.task}-{method}-lr{lr:g}-seed{seed}"
        adapter = self.qs.fine_tune(name, flags, self.base, self.files["train"], lr, seed)
        score = self.qs.evaluate(name, ["--base", self.base, "--adapter", adapter], self.files["test"])
        rows = read_metrics(self.qs.out / name / "metrics.csv")
        return {"task": self.task, "method": method, "lr": lr, "seed": seed, **score,
                "final_loss": final_loss(rows), "loss_at": {str(s): loss_at(rows, s) for s in LOSS_STEPS},
                "train_seconds": self.qs.seconds.get(name), "metrics": rows}

    def many(self, jobs: list) -> list:
        """[(method, flags, lr, seed)] -> their results, in order."""
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            results = list(pool.map(lambda job: self.one(*job), jobs))
        for r in results:
            print(f"  {r['task']} {r['method']} lr {r['lr']:g} seed {r['seed']}: {100 * r['accuracy']:.1f}% "
                  f"(loss {r['final_loss']:.4f})", flush=True)
        return results


def sweep_methods(sweep: Sweep, chosen: dict, grid: list, max_grow: int, seeds: int) -> dict:
    """For each method: its seed-0 runs over the grown grid, its best learning rate and the runs at it."""
    runs = {m: {lr: None for lr in grid} for m in chosen}
    grow_left = {m: max_grow for m in chosen}
    pending = [(m, lr) for m in chosen for lr in grid]
    while pending:  # each round runs every method's new grid points together, so jobs stay busy
        results = sweep.many([(m, chosen[m][0], lr, 0) for m, lr in pending])
        for (m, lr), result in zip(pending, results):
            runs[m][lr] = result
        pending = []
        for m in chosen:
            lrs = sorted(runs[m])
            extra = grown(lrs, {lr: runs[m][lr]["accuracy"] for lr in lrs})[:grow_left[m]]
            grow_left[m] -= len(extra)
            pending += [(m, lr) for lr in extra]
    best = {}
    for m in chosen:
        best[m] = min(runs[m], key=lambda lr: (-runs[m][lr]["accuracy"], runs[m][lr]["final_loss"]))
    reruns = sweep.many([(m, chosen[m][0], best[m], seed) for m in chosen for seed in range(1, seeds)])
    out = {}
    for m in chosen:
        at_best = [runs[m][best[m]]] + [r for r in reruns if r["method"] == m]
        lrs = sorted(runs[m])
        out[m] = {"grid": [{k: v for k, v in runs[m][lr].items() if k != "metrics"} for lr in lrs],
                  "best_lr": best[m], "best_on_edge": best[m] in (lrs[0], lrs[-1]) and len(lrs) > 1,
                  "seeds": [{k: v for k, v in r.items() if k != "metrics"} for r in at_best],
                  "curve": runs[m][best[m]]["metrics"]}
    return out


def summary_row(m: str, result: dict) -> dict:
    accuracies = [r["accuracy"] for r in result["seeds"]]
    losses = {}
    for step in [str(s) for s in LOSS_STEPS] + ["final"]:
        values = [r["final_loss"] if step == "final" else r["loss_at"][step] for r in result["seeds"]]
        losses[step] = None if None in values else sum(values) / len(values)
    return {"method": m, "best_lr": result["best_lr"], "best_on_edge": result["best_on_edge"],
            "accuracy_mean": sum(accuracies) / len(accuracies), "accuracy_min": min(accuracies),
            "accuracy_max": max(accuracies), "n_seeds": len(accuracies), "loss": losses}


def plot_accuracy(task: str, per_method: dict, labels: dict, path: Path) -> Path:
    """Held-out accuracy (seed 0) against learning rate, a line per method, all on one figure; each best
    rate's mean over seeds as a square with its min-max range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    highest = 0.0
    for i, (m, result) in enumerate(per_method.items()):
        color = COLORS[i % len(COLORS)]
        axes.plot([r["lr"] for r in result["grid"]], [100 * r["accuracy"] for r in result["grid"]], marker="o",
                  color=color, label=labels[m], linewidth=1.2)
        row = summary_row(m, result)
        highest = max(highest, row["accuracy_max"], *(r["accuracy"] for r in result["grid"]))
        dodge = 1 + 0.04 * (i - (len(per_method) - 1) / 2)  # methods sharing a best rate stay apart
        axes.errorbar([row["best_lr"] * dodge], [100 * row["accuracy_mean"]], fmt="s", color=color, markersize=6,
                      yerr=[[100 * (row["accuracy_mean"] - row["accuracy_min"])],
                            [100 * (row["accuracy_max"] - row["accuracy_mean"])]], capsize=3)
    axes.set_xscale("log")
    axes.set_xlabel("peak learning rate (cosine to a tenth)")
    axes.set_ylabel("held-out accuracy (%)")
    axes.set_ylim(-2, min(102, 100 * highest + 8))
    axes.set_title(f"{task} task: circles seed 0; squares the mean over seeds at each method's best rate, "
                   f"bars min-max", fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return save_figure_atomic(figure, path)


def fmt_loss(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def report(task: str, per_method: dict, labels: dict, counts: dict, base_score: dict, size, args, info) -> str:
    stem = f"bench/results/convergence-cpu-{task}"
    command = (f"python bench/convergence.py --size {args.size} --tasks {task}"
               + (f" --methods {args.methods}" if args.methods else "")
               + f" --seeds {args.seeds} --jobs {args.jobs} --threads {args.threads}")
    loss_steps = [s for s in LOSS_STEPS if s <= size.ft_steps]
    rows = sorted((summary_row(m, r) for m, r in per_method.items()), key=lambda row: -row["accuracy_mean"])
    table = [[labels[row["method"]], f"{counts[row['method']]:,}",
              f"{row['best_lr']:g}" + (" (edge)" if row["best_on_edge"] else ""),
              f"{100 * row['accuracy_mean']:.1f}%", f"{100 * row['accuracy_min']:.1f}–{100 * row['accuracy_max']:.1f}%",
              *[fmt_loss(row["loss"][str(s)]) for s in loss_steps], fmt_loss(row["loss"]["final"])]
             for row in rows]
    lrs = sorted({r["lr"] for result in per_method.values() for r in result["grid"]})
    grid_rows = []
    for m, result in per_method.items():
        by_lr = {r["lr"]: r for r in result["grid"]}
        grid_rows.append([labels[m]] + [f"{100 * by_lr[lr]['accuracy']:.1f}%" if lr in by_lr else "" for lr in lrs])
    return "\n".join([
        f"# The {task} task: methods at their own best learning rates (CPU)", "",
        f"{info['cpu']} ({info['cpu_count']} cores); torch {info['torch']}; {info['date_utc']}. Produced by "
        f"`{command}`; method in its docstring.", "",
        f"Base: the quickstart's {args.size} base (L{size.n_layer} D{size.n_embd}, byte vocabulary), "
        f"{100 * base_score['accuracy']:.1f}% ({base_score['correct']}/{base_score['total']}) before fine-tuning. "
        f"Every fine-tune: {size.ft_steps} steps of {size.ft_micro_bsz} samples at ctx {size.ft_ctx_len}, cosine "
        f"from the peak learning rate to a tenth after 10 warm-up steps. Accuracy: held-out questions, exact "
        f"final number. Learning rates swept at seed 0; at each method's best, seeds 0..{args.seeds - 1} (the "
        f"seed sets the adapter's initialisation and the data order). loss @N: mean training loss of steps "
        f"N-{LOSS_WINDOW - 1}..N, averaged over those seeds; final: the last 10% of steps.", "",
        markdown_table(["method", "trainable", "best lr", f"accuracy, mean of {args.seeds} seeds", "min–max",
                        *[f"loss @{s}" for s in loss_steps], "final loss"],
                       table, right_align=tuple(range(1, 6 + len(loss_steps)))), "",
        "Seed-0 accuracy at each learning rate:", "",
        markdown_table(["method"] + [f"{lr:g}" for lr in lrs], grid_rows, right_align=tuple(range(1, 1 + len(lrs)))),
        "", f"Accuracy against learning rate: `{stem}.png`; loss curves at each method's best rate (seed 0): "
        f"`{stem}-loss.png`.", ""])


def parse_floats(text: str) -> list:
    values = sorted({float(v) for v in text.split(",") if v.strip()})
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise SystemExit(f"--lr_grid needs positive numbers separated by commas, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="the quickstart size to run at")
    parser.add_argument("--work_dir", default="", help="base, data and the runs' folders "
                                                       "(default out/convergence-SIZE)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"some of {','.join(TASKS)}")
    parser.add_argument("--methods", default="", help="some of the methods (default: all), comma-separated")
    parser.add_argument("--lr_grid", default="1e-3,3e-3,1e-2,3e-2", help="starting learning rates (log grid)")
    parser.add_argument("--max_grow", type=int, default=2, help="learning rates a method's grid may grow by")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at each method's best learning rate")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run")
    parser.add_argument("--base_threads", type=int, default=2,
                        help="CPU threads of the base's pretraining (the quickstart's 2 give the quickstart's base)")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    table = methods(size.bone_b)
    names = [m.strip() for m in args.methods.split(",") if m.strip()] or list(table)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [m for m in names if m not in table] + [t for t in tasks if t not in TASKS]
    if unknown or args.seeds < 1 or args.jobs < 1:
        raise SystemExit(f"unknown method or task {unknown} (methods: {', '.join(table)}; tasks: "
                         f"{', '.join(TASKS)}), or --seeds/--jobs below 1")
    grid = parse_floats(args.lr_grid)

    work_dir = Path(args.work_dir or f"out/convergence-{args.size}")
    # The quickstart's own rates (bone_lr, lora_lr) are this sweep's outcome, not one of its settings.
    run_settings = {k: v for k, v in asdict(size).items() if k not in ("bone_lr", "lora_lr")}
    settings = {"size": run_settings, "base_threads": args.base_threads}
    settings_file = work_dir / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"{work_dir} holds runs made with other settings ({settings_file}); choose another "
                         f"--work_dir, or delete it to start again")
    work_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    pretraining = Quickstart(size, work_dir, 0, args.base_threads, fresh=False)
    data = pretraining.make_task()
    base = pretraining.train_base(data["pretrain"])
    two_step = write_two_step_task(work_dir / "data", 0, size.n_train, size.n_test)
    sizes = {"one-step": size, "two-step": replace(size, ft_ctx_len=TWO_STEP_CTX_LEN)}
    files = {"one-step": {"train": data["train"], "test": data["test"]}, "two-step": two_step}
    labels = {m: method_label(m, size.bone_b) for m in names}
    counts, init_seconds = {}, {}
    for m in names:
        init_seconds[m], counts[m] = init_and_trainable(base, table[m][1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        print(f"{task}:", flush=True)
        qs = Quickstart(sizes[task], work_dir, 0, args.threads, fresh=False)
        sweep = Sweep(task, qs, files[task], base, args.jobs)
        per_method = sweep_methods(sweep, {m: table[m] for m in names}, grid, args.max_grow, args.seeds)
        base_score = qs.evaluate(f"{task}-base", ["--model", base], files[task]["test"])
        info = machine_info("cpu")
        stem = f"convergence-cpu-{task}"
        plot_accuracy(task, per_method, labels, RESULTS / f"{stem}.png")
        plot_loss_curves([(f"{task} task: loss at each method's best learning rate (seed 0)",
                           {labels[m]: r["curve"] for m, r in per_method.items()})],
                         RESULTS / f"{stem}-loss.png", zoom_steps=40)
        write_json(RESULTS / f"{stem}.json", {
            "machine": info, "task": task, "size": args.size, "settings": asdict(sizes[task]), "options": vars(args),
            "trainable": counts, "init_seconds": init_seconds, "base_accuracy": base_score,
            "summary": [summary_row(m, r) for m, r in per_method.items()],
            "runs": {m: {k: v for k, v in r.items() if k != "curve"} for m, r in per_method.items()}})
        text = report(task, per_method, labels, counts, base_score, sizes[task], args, info)
        write_text_atomic(text, RESULTS / f"{stem}.md")
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
