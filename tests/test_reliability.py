"""Reliability (issue 15): adapter sizes that cannot fit, settings that would be dropped, a full disk, a damaged
metrics.csv, non-UTF-8 chat input and SIGTERM with several processes. Each asserts the exit status, the one-line
message and, where nothing may be lost, that the files written before are byte-identical afterwards."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.checkpoint.files import DiskFullError, atomic_binary_file
from src.train.args import parse_args
from tests import test_cli as cli
from tests.rwkv_fixtures import write_random_checkpoint
from tests.test_cli import expect_error, run_main, tiny_run_args, train_ok

ROOT = Path(__file__).resolve().parents[1]
# test_cli's fixtures: its tiny base and binidx data, and the environment guards of in-process runs
tiny = cli.tiny
isolated_environment = cli.isolated_environment
in_process_training = cli.in_process_training


def files_under(folder) -> dict:
    """{relative path: bytes} of every file under folder."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- adapter sizes


@pytest.mark.parametrize("method,rank", [("lora", 100000), ("pissa", 65)])
def test_rank_above_the_layer_dimensions_is_refused_before_training(tiny, tmp_path, capsys, method, rank):
    """The tiny model is 64 wide (ffn 224): B·A has rank at most min(out, in) = 64 in every target."""
    args = tiny_run_args(tiny, tmp_path / "run")
    args[args.index("lora")] = method
    args[args.index("--lora_r") + 1] = str(rank)
    label = "LoraConfig" if method == "lora" else "PissaConfig"
    expect_error(args, capsys, f"{label}.r (--lora_r)={rank} exceeds the rank limit of blocks.0.att.receptance",
                 "min(out_features, in_features) = 64", "pass r <= 64")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    args[args.index("--lora_r") + 1] = "64"  # the limit itself fits
    status, _, err = run_main(args + ["--dry_run"], capsys)
    assert status == 0, err


# ---------------------------------------------------------------------------------------- dropped settings


@pytest.mark.parametrize("argv,fragments", [
    (["--peft", "lora", "--bone_b", "16"], ["--bone_b (read by --peft bone): this run is --peft lora"]),
    (["--peft", "lora", "--bone_config", '{"b": 16}'], ["--bone_config (read by --peft bone)"]),
    (["--peft", "pissa", "--lora_dropout", "0.1"], ["--lora_dropout (read by --peft lora): this run is --peft pissa"]),
    (["--peft", "bone", "--lora_r", "8", "--miss_r", "8"],
     ["--lora_r (read by --peft lora/pissa), --miss_r (read by --peft miss)", "ignore them"]),
    (["--peft", "none", "--peft_targets", "att"], ["--peft none, a full fine-tune without adapters"]),
    (["--peft", "bone", "--bone_b", "32", "--bone_config", '{"r": 64}'],
     ["BoneConfig.b is given 2 times with different values (--bone_b 32; --bone_config key 'r': 64)"]),
    (["--peft", "miss", "--miss_config", '{"r": 16, "miss_r": 32}'],
     ["MissConfig.r is given 2 times with different values (--miss_config key 'r': 16; --miss_config key "
      "'miss_r': 32)"]),
    (["--peft", "pissa", "--lora_alpha", "8", "--pissa_config", '{"pissa_alpha": 16}'],
     ["PissaConfig.alpha is given 2 times", "--lora_alpha 8.0", "'pissa_alpha': 16"]),
])
def test_settings_that_would_be_dropped_are_refused(tiny, tmp_path, capsys, argv, fragments):
    rest = ["--load_model", tiny / "base.pth", "--data_file", tiny / "text", "--proj_dir", tmp_path / "run"]
    expect_error(argv + rest, capsys, *fragments, "train.py: error: ")


def test_settings_given_once_or_alike_twice_are_kept(tmp_path):
    assert parse_args(["--peft", "bone", "--bone_b", "32", "--bone_config", '{"r": 32}']).bone_b == 32
    # One --config file for the Bone and the LoRA runs of a comparison: its Bone keys do not refuse a LoRA run.
    cfg = parse_args(["--config", str(ROOT / "configs" / "rwkv6-1b6.yaml"), "--peft", "lora"])
    assert (cfg.peft, cfg.lora_r) == ("lora", 32)
    config = tmp_path / "run.yaml"
    config.write_text("peft: bone\nbone_b: 16\nbone_config: '{\"b\": 32}'\n")  # two spellings in one file
    with pytest.raises(ValueError, match=r"BoneConfig.b is given 2 times .*--bone_b 16; --bone_config key 'b': 32"):
        parse_args(["--config", str(config)])


# ---------------------------------------------------------------------------------------- a full disk


def test_full_disk_at_a_checkpoint_keeps_what_was_saved_and_the_run_resumes(tiny, tmp_path, capsys,
                                                                            monkeypatch, in_process_training):
    proj = tmp_path / "run"
    real_save = torch.save
    before = {}

    def disk_fills_at_step_3(obj, target, *args, **kwargs):
        if "step-00000003" in str(target):
            before.update(files_under(proj))  # everything saved until now, as it was
            with open(target, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_step_3)
    status, _, err = run_main(tiny_run_args(tiny, proj), capsys)
    monkeypatch.setattr(torch, "save", real_save)
    last = err.strip().splitlines()[-1]
    assert status == 4 and "Traceback" not in err, err[-3000:]
    assert last.startswith(f"train.py: error: no space left on the disk of {proj / 'checkpoints'} while writing "
                           f"checkpoint step-00000003 (the latest complete checkpoint is still step-00000002)")
    assert "MB free now" in last and "what was saved before is intact" in last and "run the same command" in last
    partial = "checkpoints/step-00000003/"
    assert {k: v for k, v in files_under(proj).items() if not k.startswith(partial)} == \
        {k: v for k, v in before.items() if not k.startswith(partial)} and "adapter-0.pth" in before
    assert not (proj / partial).exists()  # removed: it held no point.json and only took space
    assert json.loads((proj / "checkpoints" / "latest.json").read_text())["step"] == 2

    # A kill during a row's append leaves the last line cut off: resuming drops it and says so (recovered).
    with open(proj / "metrics.csv", "a", encoding="utf-8") as handle:
        handle.write("3,1,1,5.5")
    out, err = train_ok(tiny_run_args(tiny, proj), capsys)
    assert "resuming checkpoints/step-00000002" in out
    assert f"note: the last line of {proj / 'metrics.csv'} was cut off" in err and "'3,1,1,5.5'" in err
    assert [line.split(",")[0] for line in (proj / "metrics.csv").read_text().splitlines()] == \
        ["step", "1", "2", "3", "4"]
    assert (proj / "adapter-final.pth").is_file()


def test_full_disk_in_an_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "adapter-final.pth"
    path.write_bytes(b"the previous adapter")
    with pytest.raises(DiskFullError) as error:
        with atomic_binary_file(path) as handle:
            handle.write(b"x" * 3_000_000)
            handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(error.value)
    assert f"no space left on the disk of {tmp_path} while writing adapter-final.pth (the previous " \
           f"adapter-final.pth is unchanged) (at least 3.0 MB needed, " in message and "MB free now)" in message
    assert path.read_bytes() == b"the previous adapter" and os.listdir(tmp_path) == ["adapter-final.pth"]


def test_merge_on_a_full_disk_exits_4_and_keeps_the_existing_output(tiny, tmp_path, monkeypatch, capsys):
    """torch's C++ writer reports a full disk as "unexpected pos": with almost no space free it is read as one."""
    import src.checkpoint.files as files
    from src.checkpoint.io import load_rwkv
    from src.merge import main as merge_main
    from src.peft import LoraConfig, apply_peft, save_adapter

    model = load_rwkv(tiny / "base.pth", wkv_op="torch", dtype=torch.float32)
    apply_peft(model, LoraConfig(r=4))
    adapter = save_adapter(model, tmp_path / "adapter.pth")
    output = tmp_path / "merged.pth"
    output.write_bytes(b"an earlier merge")
    real_save = torch.save

    def torch_writer_fails(obj, target, *args, **kwargs):
        target.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_writer_fails)
    monkeypatch.setattr(files, "free_bytes", lambda folder: 4096)
    status = merge_main(["--base", str(tiny / "base.pth"), "--adapter", str(adapter), "--output", str(output)])
    monkeypatch.setattr(torch, "save", real_save)
    err = capsys.readouterr().err
    assert status == 4 and err.startswith(f"merge failed: no space left on the disk of {tmp_path} while writing "
                                          f"merged.pth (the previous merged.pth is unchanged)") and "0.0 MB free" in err
    assert output.read_bytes() == b"an earlier merge" and sorted(os.listdir(tmp_path)) == ["adapter.pth",
                                                                                          "merged.pth"]


def test_metrics_row_cut_by_a_full_disk_is_removed_again(tmp_path):
    from src.train.metrics import ProgressTracker

    path = tmp_path / "metrics.csv"
    path.write_bytes(b"step,epoch\r\n1,0\r\n")

    class FillsUp:
        """A file whose disk fills after 3 more bytes."""

        def __init__(self):
            self.handle = open(path, "ab", buffering=0)

        def write(self, data):
            self.handle.write(data[:3])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

    tracker = ProgressTracker(tmp_path, tokens_per_step=1, accumulate=1)
    tracker.csv_handle = FillsUp()
    with pytest.raises(DiskFullError, match="while writing a row of metrics.csv"):
        tracker.append_row(b"2,0,1,5.5\r\n")
    tracker.csv_handle.close()
    assert path.read_bytes() == b"step,epoch\r\n1,0\r\n"


# ---------------------------------------------------------------------------------------- damaged metrics.csv


def test_damaged_metrics_csv_is_refused_at_resume_and_left_as_it_is(tiny, tmp_path, capsys, in_process_training):
    proj = tmp_path / "run"
    train_ok(tiny_run_args(tiny, proj), capsys)
    metrics = proj / "metrics.csv"
    lines = metrics.read_bytes().split(b"\n")
    fix = f"move it away (e.g. mv {metrics} {metrics}.damaged) and rerun"
    for damaged, fragment in [
        (b"\n".join(lines[:2] + [b"\xff\xfe garbage"] + lines[3:]), "line 3 holds bytes that are not UTF-8 text"),
        (b"\n".join([b"when,what"] + lines[1:]), "its first line is 'when,what', not the header step,epoch"),
        (b"\n".join(lines[:2] + [lines[2][:5]] + lines[3:]), f"line 3 ({lines[2][:5].decode()!r}) is not a row of 9"),
    ]:
        metrics.write_bytes(damaged)
        expect_error(tiny_run_args(tiny, proj), capsys, f"{metrics} is damaged", fragment, fix)
        assert metrics.read_bytes() == damaged


# ---------------------------------------------------------------------------------------- chat input


def test_chat_refuses_stdin_that_is_not_utf8_before_loading(tmp_path):
    write_random_checkpoint(tmp_path / "model.pth", n_layer=1, n_embd=64, vocab_size=256, seed=1)
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "chat.py"), "--model", str(tmp_path / "model.pth")],
                          cwd=ROOT, input=b"Hello\n\xc3\x28 caf\xe9\n", capture_output=True, timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 2 and "Traceback" not in err, err
    assert err.strip() == ("chat: stdin line 2: byte 0xc3 at position 1 is not UTF-8; send UTF-8 text (convert "
                           "other encodings first, e.g. iconv -f latin1 -t utf-8)")


def test_interactive_chat_asks_again_for_a_line_that_is_not_utf8(monkeypatch, capsys):
    from demo.chat import interactive

    typed = iter([UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), "caf\udce9", "hi", EOFError()])

    def fake_input(prompt):
        value = next(typed)
        if isinstance(value, BaseException):
            raise value
        return value

    class Session:
        sent = []

        def reply(self, message, on_text):
            self.sent.append(message)

    monkeypatch.setattr("builtins.input", fake_input)
    interactive(Session())
    out = capsys.readouterr().out
    assert Session.sent == ["hi"]
    assert "(not sent: byte 0xff at position 3 is not UTF-8;" in out
    assert "(not sent: byte 0xe9 at position 4 is not UTF-8;" in out


# ---------------------------------------------------------------------------------------- SIGTERM, 2 processes


def child_pids(pid: int) -> list:
    """Processes whose parent is pid (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_with_two_processes_saves_a_checkpoint_exits_143_and_leaves_no_process(tiny, tmp_path):
    """Lightning's own SIGTERM handler runs a collective inside the handler: with two ranks the run used to hang
    for good after the signal (half a checkpoint written, no exit)."""
    proj = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), *map(str, tiny_run_args(tiny, proj)), "--epoch_steps", "400",
               "--epoch_count", "1", "--save_every_steps", "3", "--strategy", "ddp", "--devices", "2",
               "--num_threads", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    log = open(tmp_path / "log", "w")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    children = []
    try:
        deadline = time.monotonic() + 300
        while not (proj / "checkpoints" / "latest.json").is_file():
            assert process.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        children = child_pids(process.pid)
        assert children, "the second rank is a child process of the first"
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        for pid in [process.pid] + children:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
        process.wait()
        log.close()
    output = (tmp_path / "log").read_text()
    assert process.returncode == 143, output[-3000:]
    assert not [pid for pid in children if is_running(pid)], "a rank outlived the run"
    point = json.loads((proj / "checkpoints" / "latest.json").read_text())
    rows = (proj / "metrics.csv").read_text().splitlines()[1:]
    assert point["step"] == int(rows[-1].split(",")[0]) and point["world_size"] == 2  # the step under way, saved
    folder = proj / "checkpoints" / point["directory"]
    assert sorted(point["manifest"]) == sorted(p.name for p in folder.iterdir() if p.name != "point.json")
    errors = [line for line in output.splitlines() if line.startswith("train.py: error:")]
    assert errors == [f"train.py: error: interrupted by SIGTERM at optimizer step {point['step']}; the checkpoint "
                      f"of that step is saved: {folder}. Rerun the same command to continue from it"]
    assert "Traceback" not in output and not (proj / "adapter-final.pth").exists()


WORKER_SCRIPT = """
import os, signal, time, torch
from src.data.dataset import ignore_sigterm_in_worker

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, index):
        time.sleep(0.005)
        return torch.tensor([index])

signal.signal(signal.SIGTERM, lambda signum, frame: print("the training process noted SIGTERM", flush=True))
for name, init in (("torch's", None), ("train.py's", ignore_sigterm_in_worker)):
    batches = iter(torch.utils.data.DataLoader(Slow(), batch_size=2, num_workers=1, worker_init_fn=init))
    first = next(batches)
    os.killpg(os.getpgrp(), signal.SIGTERM)  # as a scheduler signals every process of the job
    try:
        print(name, "batches:", 1 + sum(1 for _ in batches), flush=True)
    except (RuntimeError, OSError) as error:  # a killed worker: RuntimeError, or a reset pipe mid-transfer
        print(name, "failed:", type(error).__name__, error, flush=True)
    del batches
"""


def test_dataloader_workers_survive_a_sigterm_sent_to_the_whole_job():
    """The workers (num_workers 1 on GPU) leave SIGTERM to the training process; with torch's default it kills
    them, which the training process then sees as a crash."""
    done = subprocess.run([sys.executable, "-c", WORKER_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, start_new_session=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch's failed:" in done.stdout  # what the test guards against: the default handler kills the worker
    assert "train.py's batches: 20" in done.stdout and done.stdout.count("noted SIGTERM") == 2
