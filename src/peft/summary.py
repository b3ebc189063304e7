"""Parameter counts and the per-module adapter table (what `train.py --dry_run` prints; works on the meta device)."""

import torch.nn as nn

from src.peft.inject import adapter_modules


def peft_summary(model: nn.Module) -> dict:
    """{trainable, total, adapted_modules, rows}: parameter counts of the whole model (adapters included) and one
    row (name, method, in_features, out_features, trainable adapter parameters) per adapted module."""
    rows = []
    for name, module in adapter_modules(model):
        trainable = sum(t.numel() for t in module.adapter_tensors().values() if t.requires_grad)
        rows.append((name, module.describe(), module.in_features, module.out_features, trainable))
    state = getattr(model, "peft_state", None)
    summary = {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
        "adapted_modules": len(rows),
        "rows": rows,
    }
    if state is not None:
        summary["method"] = state.config.method
        summary["train_parts"] = list(state.train_parts)
        summary["peft_init_seconds"] = state.peft_init_seconds
    return summary


def format_peft_table(summary: dict) -> str:
    """The summary as a fixed-width text table with a totals line."""
    rows = summary["rows"]
    header = ("module", "method", "in", "out", "trainable")
    cells = [header] + [(n, m, str(i), str(o), f"{t:,}") for n, m, i, o, t in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    right = (False, False, True, True, True)

    def line(row):
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(row, widths, right)).rstrip()

    adapter_total = sum(r[4] for r in rows)
    share = 100.0 * summary["trainable"] / summary["total"] if summary["total"] else 0.0
    lines = [line(header), line(tuple("-" * w for w in widths))] + [line(row) for row in cells[1:]]
    lines.append(
        f"{summary['adapted_modules']} adapted modules, {adapter_total:,} adapter parameters; trainable "
        f"{summary['trainable']:,} of {summary['total']:,} ({share:.3f}%)"
    )
    return "\n".join(lines)
