"""Where a run can continue from: the newest complete checkpoint in --proj_dir (read without Lightning, so
planning and bad-input checks stay light), and which checkpoints are kept.

    checkpoints/step-NNNNNNNN/             resumable training state (trainable tensors, optimizer, rng; DeepSpeed's
                                           shards), and point.json, written last: the folder is complete
    checkpoints/step-NNNNNNNN/point.json   its position (step, epoch, batch), the run's settings, a manifest of
                                           its files (size and sampled hash of each), and whether it is known good
    checkpoints/latest.json                names the newest complete checkpoint (a copy of its point.json)

--fresh moves an earlier run's outputs (adapter-*.pth, rwkv-*.pth, state-*.pth, metrics.csv, loss.png, tb/,
checkpoints/) into proj_dir/replaced-YYYYmmdd-HHMMSS/ (nothing is deleted; remove that folder when it is not needed).

Kept checkpoints: the newest, the complete one before it (a newest one found damaged at resume falls back to
it, saying so), and the newest known-good one. A checkpoint is known good when its trainable weights were finite
when written and the loss of the next optimizer step, computed from those weights, was finite too; after a
non-finite loss the run goes back to that one (see src/train/launch.py).
"""
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from src.checkpoint.files import file_identity, write_text_atomic
from src.train.plots import LOSS_PLOT, METRICS_FILE

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
POINT_FILE = "point.json"
REPLACED_PREFIX = "replaced-"  # --fresh moves an earlier run's outputs into proj_dir/replaced-YYYYmmdd-HHMMSS/
RUN_OUTPUT_PATTERNS = ("adapter-*.pth", "rwkv-*.pth", "state-*.pth", METRICS_FILE, LOSS_PLOT, "tb", CHECKPOINT_DIR)


@dataclass
class ResumePoint:
    """Where a checkpoint stands: optimizer steps taken, and the epoch / micro-batches of it already trained."""

    directory: str  # folder name under proj_dir/checkpoints
    step: int
    epoch: int
    batch: int
    world_size: int
    deepspeed: bool
    run_key: dict  # the settings a resume must share with the run that wrote the checkpoint
    manifest: dict = field(default_factory=dict)  # {file relative to the folder: file_identity}; {}: not recorded
    weights_finite: Optional[bool] = None  # every trainable weight finite when written (None: not recorded)
    verified: bool = False  # the next optimizer step's loss, computed from these weights, was finite

    def path(self, proj_dir) -> Path:
        return Path(proj_dir) / CHECKPOINT_DIR / self.directory

    @property
    def good(self) -> bool:
        return self.verified and self.weights_finite is not False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def _point_from_file(path: Path) -> ResumePoint:
    return ResumePoint(**json.loads(path.read_text(encoding="utf-8")))


def read_point_file(folder) -> Optional[ResumePoint]:
    """The point.json of a checkpoint folder; None when it is missing or unreadable (the folder is incomplete)."""
    try:
        return _point_from_file(Path(folder) / POINT_FILE)
    except (OSError, ValueError, TypeError):
        return None


def complete_checkpoints(proj_dir) -> list:
    """ResumePoints of the checkpoint folders holding a readable point.json, newest (highest step) first."""
    root = Path(proj_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    points = [read_point_file(child) for child in root.iterdir() if child.is_dir() and child.name.startswith("step-")]
    return sorted((p for p in points if p is not None), key=lambda p: p.step, reverse=True)


def folder_manifest(folder) -> dict:
    """{relative path: file_identity} of every file under a checkpoint folder except point.json."""
    folder = Path(folder)
    return {str(path.relative_to(folder)): file_identity(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != POINT_FILE}


def checkpoint_problem(point: ResumePoint, proj_dir) -> Optional[str]:
    """Why the checkpoint of `point` cannot be loaded (a missing folder or file, a size or content that differs
    from what was written), or None when it is intact. Checkpoints written before manifests existed are only
    checked for their folder."""
    folder = point.path(proj_dir)
    if not folder.is_dir():
        return f"its folder {folder} is missing"
    for name, written in point.manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        now = file_identity(path)
        if now["size"] != written["size"]:
            return f"{name} holds {now['size']} bytes, {written['size']} were written (truncated or replaced)"
        if now != written:
            return f"{name} is not the file that was written (its sampled bytes differ: corrupted or replaced)"
    return None


def read_resume_point(proj_dir, report: Optional[Callable[[str], None]] = None) -> Optional[ResumePoint]:
    """The checkpoint a run in proj_dir continues from, or None when there is none.

    That is the one latest.json names; when it is damaged (a file missing, truncated or overwritten), the newest
    intact complete checkpoint before it, and `report` gets one line saying so. ValueError when checkpoints exist
    but none can be used.
    """
    latest = Path(proj_dir) / CHECKPOINT_DIR / LATEST_FILE
    if not latest.is_file():
        return None
    try:
        newest = _point_from_file(latest)
    except (ValueError, TypeError) as error:
        newest, problem = None, f"{latest} is unreadable ({error})"
    else:
        problem = checkpoint_problem(newest, proj_dir)
        if problem is None:
            return newest
        problem = f"{CHECKPOINT_DIR}/{newest.directory} is damaged: {problem}"
    for point in complete_checkpoints(proj_dir):
        if newest is not None and (point.directory == newest.directory or point.step > newest.step):
            continue
        if checkpoint_problem(point, proj_dir) is None:
            if report is not None:
                report(f"warning: {problem}; resuming from {CHECKPOINT_DIR}/{point.directory} (step {point.step}), "
                       f"the complete checkpoint before it; the steps after it are trained again")
            return point
    raise ValueError(f"{problem}, and no intact earlier checkpoint is left in {latest.parent}; pass --fresh to start "
                     f"over (the old files are moved aside, not deleted)")


def write_point(proj_dir, point: ResumePoint, latest: bool = True) -> None:
    """Write a checkpoint's point.json (which makes the folder complete), then latest.json when `latest`."""
    write_text_atomic(point.to_json(), point.path(proj_dir) / POINT_FILE)
    if latest:
        write_text_atomic(point.to_json(), Path(proj_dir) / CHECKPOINT_DIR / LATEST_FILE)


def mark_verified(proj_dir, directory: str) -> Optional[ResumePoint]:
    """Record that the loss computed from the weights of checkpoint `directory` was finite (point.json, and
    latest.json when it names that checkpoint); returns the updated point."""
    point = read_point_file(Path(proj_dir) / CHECKPOINT_DIR / directory)
    if point is None or point.verified:
        return point
    point.verified = True
    latest = Path(proj_dir) / CHECKPOINT_DIR / LATEST_FILE
    try:
        names_it = json.loads(latest.read_text(encoding="utf-8")).get("directory") == directory
    except (OSError, ValueError, AttributeError):
        names_it = False
    write_point(proj_dir, point, latest=names_it)
    return point


def checkpoints_to_keep(proj_dir, newest: Optional[str]) -> set:
    """Names of the checkpoint folders kept beside `newest`: the complete one just before it, and the newest
    known-good one at or before it."""
    if newest is None:
        return set()
    keep = {newest}
    points = complete_checkpoints(proj_dir)
    newest_step = next((p.step for p in points if p.directory == newest), None)
    if newest_step is None:
        return keep
    earlier = [p for p in points if p.step < newest_step]
    if earlier:
        keep.add(earlier[0].directory)
    good = next((p for p in points if p.step <= newest_step and p.good), None)
    if good is not None:
        keep.add(good.directory)
    return keep


def remove_checkpoints(proj_dir, keep: Union[None, str, Iterable[str]] = None) -> None:
    """Delete checkpoint folders other than those in `keep` (leftovers of killed runs, or superseded ones)."""
    keep = {keep} if isinstance(keep, str) else set(keep or ())
    root = Path(proj_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith("step-") and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def previous_run_files(proj_dir) -> list:
    """Names of the run outputs (RUN_OUTPUT_PATTERNS) present directly in proj_dir, sorted."""
    proj = Path(proj_dir)
    if not proj.is_dir():
        return []
    return sorted({path.name for pattern in RUN_OUTPUT_PATTERNS for path in proj.glob(pattern)})


def move_previous_run(proj_dir) -> Optional[Path]:
    """Move an earlier run's outputs into a new proj_dir/replaced-YYYYmmdd-HHMMSS/ folder (--fresh); returns
    that folder, or None when there was nothing to move."""
    names = previous_run_files(proj_dir)
    if not names:
        return None
    proj = Path(proj_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = proj / f"{REPLACED_PREFIX}{stamp}", 1
    while target.exists():
        n += 1
        target = proj / f"{REPLACED_PREFIX}{stamp}-{n}"
    target.mkdir()
    for name in names:
        os.replace(proj / name, target / name)
    return target
