"""train.py's main program and its process environment: the only training code that reads or sets os.environ.

    python train.py --peft bone --bone_b 64 --load_model BASE.pth --data_file DATA --proj_dir OUT
    python train.py ... --dry_run          # meta-device model: adapter table + JSON counts, no weights, no data

Exit statuses (every refusal or stop is one `train.py: error: ...` line on stderr, no traceback):
    0    trained to the end (or the checkpoint in --proj_dir had already finished); --dry_run printed its counts
    1    crashed: an unexpected exception (a traceback; a bug, or a device / disk failure)
    2    bad input, found before any training step: missing or unreadable files, contradicting shapes or flags,
         unknown choices, data beyond the vocabulary or with no supervised token, an output that would overwrite
         an input, a --proj_dir that cannot be written or holds another run, a checkpoint that cannot be resumed
    3    diverged: a loss became NaN or infinite; the run goes back to its last known-good checkpoint and the
         message says how to continue from it with other settings, or that only --fresh helps
    4    the disk filled while saving (ENOSPC or a quota): the message names the file or checkpoint, the folder and
         the space; what was saved before is intact (the partial write is removed), so after freeing space,
         rerunning the same command continues from the latest checkpoint
    130  interrupted by Ctrl-C (128 + SIGINT 2): nothing more is saved; rerunning continues from the latest checkpoint
    143  interrupted by SIGTERM (128 + 15, what schedulers send before a kill): a resumable checkpoint was saved
         first, at the last optimizer step (one process) or at the end of the optimizer step under way (several
         processes: they stop together; the ranks Lightning's launcher started end first, with status 0, and the
         main process reports); rerunning the same command continues from it

Launching (every process runs the same command; --devices is processes per node):
    one GPU / CPU:            python train.py ...
    G GPUs, Lightning:        python train.py ... --devices G          (Lightning re-runs the command G-1 times)
    G GPUs, torchrun:         torchrun --nproc_per_node G train.py ... --devices G
    N nodes, torchrun:        torchrun --nnodes N --node_rank R --nproc_per_node G --master_addr HOST \\
                                  --master_port PORT train.py ... --devices G --num_nodes N      (on node R)
    N nodes, Lightning:       MASTER_ADDR=HOST MASTER_PORT=PORT NODE_RANK=R python train.py ... --devices G \\
                                  --num_nodes N                                              (on node R)
    SLURM:                    srun --nodes N --ntasks-per-node G python train.py ... --devices G --num_nodes N
    2 CPU processes (CI):     python train.py ... --accelerator cpu --devices 2   (DeepSpeed on gloo)
--proj_dir must be on a filesystem every node sees (DeepSpeed writes one optimizer shard per rank).
"""
import os
import socket
import sys
from pathlib import Path

from src.checkpoint.files import DiskFullError, disk_full_error, is_disk_full
from src.train.args import CHANGEABLE_ON_RESUME, TrainConfig, parse_args
from src.train.plan import TrainingPlan, TrainSetupError, plan_training, resolve_accelerator
from src.train.report import dry_run
from src.train.resume import CHECKPOINT_DIR, LATEST_FILE, complete_checkpoints, remove_checkpoints, write_point

EXIT_CRASHED = 1  # what Python itself returns for an uncaught exception
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_DISK_FULL = 4
EXIT_INTERRUPTED = {"SIGTERM": 143, "SIGINT": 130}


def is_launch_rank_zero() -> bool:
    """Whether the launcher made this process global rank 0 (torchrun / deepspeed: RANK; SLURM: SLURM_PROCID;
    Lightning's own subprocess launcher: NODE_RANK and LOCAL_RANK). A plain `python train.py` is rank 0; so is
    the process that Lightning's launcher later starts the other ranks from."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def is_lightning_child_rank() -> bool:
    """Whether Lightning's own launcher started this process as one of the other ranks (LOCAL_RANK > 0 with no
    RANK or SLURM_PROCID: torchrun, deepspeed and SLURM set those)."""
    return ("RANK" not in os.environ and "SLURM_PROCID" not in os.environ
            and int(os.environ.get("LOCAL_RANK", 0)) > 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_process_environment(cfg: TrainConfig, accelerator: str) -> None:
    """Environment DeepSpeed reads at import/init time, set before anything imports it.

    On CPU DeepSpeed must pick its CPU accelerator (gloo). A single process started with plain python has no
    launcher to announce ranks, and DeepSpeed would then look for MPI: give it rank 0 of 1 and a free port.
    Multi-process runs get these from their launcher (Lightning's, torchrun, deepspeed, SLURM) and are left alone.
    --num_threads goes to OMP_NUM_THREADS, which Lightning's launcher (and its child processes) apply.
    """
    if accelerator == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cfg.num_threads:
        os.environ["OMP_NUM_THREADS"] = str(cfg.num_threads)
    if cfg.uses_deepspeed and cfg.world_size == 1 and "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))


def fail(message: str, status: int) -> int:
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    return status


def plan_from_argv(argv=None):
    """Parse, dry-run or plan: (config, plan or None, exit status or None). Bad input is reported here."""
    try:
        cfg = parse_args(argv)
        if cfg.dry_run:
            return cfg, None, dry_run(cfg)
        prepare_process_environment(cfg, resolve_accelerator(cfg))
        return cfg, plan_training(cfg, extensions_dir=os.environ.get("TORCH_EXTENSIONS_DIR")), None
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        return None, None, fail(str(error), EXIT_BAD_INPUT)


def go_back_to_good_checkpoint(proj_dir, rank_zero: bool) -> str:
    """After a non-finite loss: make the newest known-good checkpoint the resume point (rank 0 rewrites
    latest.json and removes the checkpoints written after it, whose weights led to the bad loss) and say what
    the user can do next."""
    points = complete_checkpoints(proj_dir)
    good = next((p for p in points if p.good), None)
    fresh_only = ("Only --fresh helps now: rerun with --fresh (the files so far are moved aside) and a lower "
                  "--lr_init, --precision fp32, or checked data")
    if good is None:
        written = (f"checkpoint step {points[0].step} was written from weights that led to it" if points
                   else "no checkpoint had been written yet")
        return f"no checkpoint is known good (finite weights and a finite loss after them): {written}. {fresh_only}"
    later = [p for p in points if p.step > good.step]
    if rank_zero:
        write_point(proj_dir, good)  # latest.json names it again
        remove_checkpoints(proj_dir, keep=[p.directory for p in points if p.step <= good.step])
    folder = Path(proj_dir) / CHECKPOINT_DIR / good.directory
    removed = (f"; the checkpoint(s) after it ({', '.join(p.directory for p in later)}) came from weights that "
               f"led to the bad loss and were removed" if later else "")
    changeable = ",".join(CHANGEABLE_ON_RESUME[:2])
    return (f"the last known-good checkpoint is {folder} (step {good.step}: finite weights, and the loss of step "
            f"{good.step + 1} computed from them was finite){removed}. {Path(proj_dir) / CHECKPOINT_DIR / LATEST_FILE} "
            f"now names it, so rerunning continues from it; the same settings would diverge the same way, so continue "
            f"with e.g. a lower --lr_init / --lr_final plus --change_on_resume {changeable} (may change: "
            f"{', '.join(CHANGEABLE_ON_RESUME)}). If it diverges again from there, check the data; other changes "
            f"(--precision fp32, the optimizer) need a new run: --fresh")


def run_plan(plan: TrainingPlan, extra_callbacks=()) -> int:
    """Train a planned run and map how it ended to the exit statuses of the module docstring."""
    from src.train.checkpointing import CheckpointLoadError, TrainingInterrupted  # Lightning: not for bad input
    from src.train.fit import train
    from src.train.module import NonFiniteLossError

    cfg = plan.cfg
    rank_zero = is_launch_rank_zero()
    lightning_child = is_lightning_child_rank()  # read now: DeepSpeed's init sets RANK in every process
    try:
        return train(plan, rank_zero=rank_zero, extra_callbacks=extra_callbacks)
    except NonFiniteLossError as error:
        return fail(f"{error}; {go_back_to_good_checkpoint(cfg.proj_dir, rank_zero)}", EXIT_NON_FINITE)
    except TrainingInterrupted as interrupted:
        if lightning_child:
            # Its parent, rank 0, waits for it and reports the interruption; a non-zero status here would make
            # Lightning's process watcher kill rank 0 before it does.
            return 0
        return fail(str(interrupted), EXIT_INTERRUPTED[interrupted.signal_name])
    except (TrainSetupError, CheckpointLoadError) as error:
        return fail(str(error), EXIT_BAD_INPUT)
    except Exception as error:
        if not is_disk_full(error, cfg.proj_dir):
            raise
        full = error if isinstance(error, DiskFullError) else disk_full_error(f"({error})", cfg.proj_dir)
        return fail(str(full), EXIT_DISK_FULL)


def main(argv=None) -> int:
    """Entry point of train.py; returns the process exit status."""
    _, plan, status = plan_from_argv(argv)
    return status if plan is None else run_plan(plan)
