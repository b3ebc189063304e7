"""metrics.csv in, loss-curve PNGs out (matplotlib's Agg canvas: no display needed)."""
import csv
from pathlib import Path
from typing import Optional

from src.checkpoint.files import save_figure_atomic

METRICS_FILE = "metrics.csv"  # in --proj_dir: one row per optimizer step
LOSS_PLOT = "loss.png"
METRIC_COLUMNS = ("step", "epoch", "batch", "loss", "lr", "tokens", "kt_s", "peak_mem_gb", "elapsed_s")
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


INT_COLUMNS = ("step", "epoch", "batch", "tokens")


class MetricsFileError(ValueError):
    """A metrics.csv that cannot be read: the message names the file, the line and what to do."""


def read_metrics(path, report=None) -> list:
    """Rows of a metrics.csv as dicts of floats (step/epoch/batch/tokens as ints); [] when there is no file.

    A last line without its newline is the trace of a kill during an append: it is dropped (`report` gets a
    note), since the rows before it are whole. Anything else (bytes that are not UTF-8, another
    header, a bad line before the last) is not something a run writes: MetricsFileError names the line and says to
    move the file away, rather than guessing which rows are right."""
    path = Path(path)
    if not path.is_file():
        return []
    fix = f"move it away (e.g. mv {path} {path}.damaged) and rerun: a new {path.name} is started"
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise MetricsFileError(f"{path} is damaged: line {line} holds bytes that are not UTF-8 text; {fix}") from None
    lines = text.split("\n")  # whole rows end with a newline: the last item is "" or a line cut off
    header, body, cut = lines[0].rstrip("\r"), lines[1:-1], lines[-1] if len(lines) > 1 else ""
    expected = ",".join(METRIC_COLUMNS)
    if header != expected:
        if len(lines) == 1 and expected.startswith(header):  # only the header was being written
            return []
        raise MetricsFileError(f"{path} is damaged or not a metrics file: its first line is {header[:80]!r}, not the "
                               f"header {expected}; {fix}")
    rows = []
    for number, line in enumerate(body, start=2):
        row = parse_metrics_row(line)
        if row is None:
            raise MetricsFileError(f"{path} is damaged: line {number} ({line[:80]!r}) is not a row of "
                                   f"{len(METRIC_COLUMNS)} numbers; {fix}")
        rows.append(row)
    if cut and report is not None:  # even when it parses, its last number may be cut short
        report(f"note: the last line of {path} was cut off (a kill during its append) and is dropped: {cut[:80]!r}")
    return rows


def parse_metrics_row(line: str):
    """One metrics.csv line as a dict, or None when it does not hold one number per column."""
    values = next(csv.reader([line]), [])
    if len(values) != len(METRIC_COLUMNS):
        return None
    try:
        return {k: (int(float(v)) if k in INT_COLUMNS else float(v)) for k, v in zip(METRIC_COLUMNS, values)}
    except (ValueError, OverflowError):
        return None


def running_mean(values: list, window: int) -> list:
    """Mean of the last `window` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _draw(axes, series: dict, max_step: Optional[int] = None):
    for color, (label, rows) in zip(COLORS * 4, series.items()):
        rows = [r for r in rows if max_step is None or r["step"] <= max_step]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        window = max(1, len(losses) // 20)
        if window > 1:
            axes.plot(steps, losses, color=color, alpha=0.25, linewidth=1)
            axes.plot(steps, running_mean(losses, window), color=color, linewidth=2,
                      label=f"{label} (mean of {window})")
        else:
            axes.plot(steps, losses, color=color, linewidth=1.5, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def plot_loss_curves(panels: list, path, zoom_steps: Optional[int] = None) -> Optional[Path]:
    """One PNG with a panel per (title, {label: metrics rows}); with zoom_steps, each panel gets a twin showing
    only the first zoom_steps steps (where adapters differ most, as in the Bone paper's Figure 1).
    None when no panel has rows."""
    panels = [(title, series) for title, series in panels if any(series.values())]
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 2 if zoom_steps else 1
    figure = Figure(figsize=(7 * columns, 4 * len(panels)), dpi=100)
    FigureCanvasAgg(figure)
    for row, (title, series) in enumerate(panels):
        axes = figure.add_subplot(len(panels), columns, row * columns + 1)
        _draw(axes, series)
        axes.set_title(title, fontsize=10)
        if zoom_steps:
            zoomed = figure.add_subplot(len(panels), columns, row * columns + 2)
            _draw(zoomed, series, max_step=zoom_steps)
            zoomed.set_title(f"{title}: first {zoom_steps} steps", fontsize=10)
    figure.tight_layout()
    return save_figure_atomic(figure, path)


def plot_loss(rows: list, path) -> Optional[Path]:
    """A run's own loss curve (raw and running mean) against optimizer step; None without rows."""
    return plot_loss_curves([("training loss", {"loss": rows})], path)
