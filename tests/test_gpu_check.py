"""scripts/gpu_check.sh and scripts/prepare_gpu_wheels.sh, checked without a GPU.

The GPU check runs once, on a GPU machine lent for a few minutes, so it must work the first time. Here: both
scripts parse (`bash -n`); the DRY_RUN=1 plan runs in about a second without calling any Python; every part
appears in it; and every command it names exists with the flags it passes (each tool's --help is asked), the
Table 7 rows, shapes and settings included. The helper's key-figure and summary steps are run on small made-up
outputs.
"""
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "gpu_check.sh"
PREPARE = ROOT / "scripts" / "prepare_gpu_wheels.sh"
HELPER = ROOT / "scripts" / "gpu_check_helper.py"

PARTS = ["wheels", "env", "imports", "build-wkv-bf16", "build-wkv-fp32", "build-fused-adam", "build-rwkv",
         "ckpt-1.6b", "data", "ckpt-3b", "train-1.6b", "merge", "pytest-gpu", "eval", "chat", "wkv-bench",
         "table7-1.6b", "table7-3b", "train-3b", "wkv-fla", "summary", "collect"]


@pytest.mark.parametrize("script", [CHECK, PREPARE], ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_pins_cover_what_the_gpu_image_lacks():
    pins = subprocess.run(["bash", str(PREPARE), "--print-pins"], capture_output=True, text=True, check=True)
    names = {line.split("==")[0] for line in pins.stdout.split()}
    assert {"deepspeed", "rwkv", "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
            "fla-core"} <= names
    for line in pins.stdout.split():
        assert re.fullmatch(r"[a-z0-9-]+==[0-9][0-9.]*", line), f"unpinned or odd pin {line!r}"
    requirements = (ROOT / "requirements-gpu.txt").read_text()
    for name in ("deepspeed", "rwkv"):  # the same versions the project pins
        pin = next(line for line in pins.stdout.split() if line.startswith(name + "=="))
        assert pin in requirements, f"{pin} differs from requirements-gpu.txt"


def fake_wheels(folder: Path) -> Path:
    """Empty files named like the pinned wheels: enough for the plan, which only lists them."""
    pins = subprocess.run(["bash", str(PREPARE), "--print-pins"], capture_output=True, text=True, check=True)
    folder.mkdir()
    for pin in pins.stdout.split():
        name, version = pin.split("==")
        (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"x" * 1024)
    return folder


def run_plan(tmp_path, **env_extra):
    """DRY_RUN=1 with a python3 on PATH that records being called (the plan must call no Python)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "python-was-called"
    for name in ("python3", "python"):
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\nexit 1\n")
        fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHON", "GPU_CHECK_SMALL")}
    env.update(DRY_RUN="1", PATH=f"{bin_dir}:{env['PATH']}", GPU_CHECK_WORK=str(tmp_path / "work"), **env_extra)
    started = time.perf_counter()
    result = subprocess.run(["bash", str(CHECK)], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=60)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists(), "the dry run called python"
    assert not (tmp_path / "work").exists(), "the dry run wrote into its work folder"
    return result.stdout, seconds


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("plan")
    wheels = fake_wheels(tmp_path / "wheels")
    text, seconds = run_plan(tmp_path, GPU_CHECK_WHEELS=str(wheels))
    return {"text": text, "seconds": seconds, "wheels": wheels}


def plan_commands(text):
    """The '+ ...' lines of the plan as argument lists."""
    return [shlex.split(line[2:]) for line in text.splitlines() if line.startswith("+ ")]


def test_dry_run_is_fast_and_names_every_part(plan):
    assert plan["seconds"] < 10, f"the dry run took {plan['seconds']:.1f} s"
    for part in PARTS:
        assert f"[{part}]" in plan["text"], f"part {part} missing from the plan:\n{plan['text']}"
    text = plan["text"]
    assert "L24 D2048 vocab 65536: ~1.60B parameters" in text
    assert "L32 D2560 vocab 65536: ~3.10B parameters" in text
    assert "9 wheels" in text and "MISSING" not in text
    assert "total budget 470s" in text


def test_dry_run_without_wheels_says_how_to_make_them(tmp_path):
    text, _ = run_plan(tmp_path, GPU_CHECK_WHEELS=str(tmp_path / "none"))
    assert "bash scripts/prepare_gpu_wheels.sh" in text and "deepspeed==0.19.8" in text


def help_flags(argv):
    """Every --flag a command's --help shows."""
    result = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=ROOT,
                            timeout=180)
    assert result.returncode == 0, f"{argv} --help failed: {result.stderr[-2000:]}"
    return set(re.findall(r"--[A-Za-z][A-Za-z0-9_-]*", result.stdout)), result.stdout


def flags_of(args):
    return [a.split("=")[0] for a in args if a.startswith("--")]


def test_every_planned_command_exists_with_its_flags(plan):
    commands = plan_commands(plan["text"])
    assert len(commands) >= len(PARTS) - 1
    helps = {}

    def check_python(args, where):
        if args[0] == "-m":
            module = args[1]
            rest = args[2:]
            if module == "pytest":
                assert rest[:2] == ["-q", "-m"] and rest[2] == "gpu", rest
                assert '"gpu' in (ROOT / "tests" / "conftest.py").read_text(), "the gpu marker is not registered"
                assert all((ROOT / p).exists() for p in rest[3:]), rest
                return
            if module == "pip":
                assert rest[0] == "install" and "--no-deps" in rest and "--no-index" in rest and "--target" in rest
                wheels = [a for a in rest if a.endswith(".whl")]
                assert wheels and all(Path(w).is_file() for w in wheels), wheels
                assert not any(Path(w).name.startswith("torch-") for w in wheels), "torch must never be installed"
                return
            path = ROOT / (module.replace(".", "/") + ".py")
            assert path.is_file(), f"{where}: no module {module}"
            key = ("-m", module)
        else:
            script, rest = args[0], args[1:]
            assert (ROOT / script).is_file(), f"{where}: no file {script}"
            key = (script,)
            if script == "scripts/gpu_check_helper.py":  # subcommands: each has its own --help
                key = (script, rest[0])
                rest = rest[1:]
        if key not in helps:
            helps[key] = help_flags(list(key))
        known, _ = helps[key]
        unknown = [f for f in flags_of(rest) if f not in known]
        assert not unknown, f"{where}: {' '.join(key)} does not accept {unknown}"

    for argv in commands:
        where = shlex.join(argv)
        env_vars = {}
        while argv and (argv[0] == "env" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0])):
            if argv[0] != "env":
                name, value = argv[0].split("=", 1)
                env_vars[name] = value
            argv = argv[1:]
        program, args = argv[0], argv[1:]
        if program in ("python3", "python"):
            check_python(args, where)
        elif program == "bash":
            script = ROOT / args[0]
            assert script.is_file(), f"{where}: no script {args[0]}"
            if args[0] == "scripts/bench_table7.sh":
                check_table7(script, env_vars, args[1:], where)
        elif program == "tar":
            continue
        else:
            pytest.fail(f"unexpected program in the plan: {where}")


def check_table7(script, env_vars, extra_args, where):
    text = script.read_text()
    for name in env_vars:
        assert re.search(rf"^{name}=\"\$\{{{name}:-", text, re.M), f"{where}: bench_table7.sh does not read {name}"
    known, help_text = help_flags(["bench/table7.py"])
    unknown = [f for f in flags_of(extra_args) if f not in known]
    assert not unknown, f"{where}: bench/table7.py does not accept {unknown}"
    for key in ("ROWS", "SHAPES", "SETTINGS"):  # table7.py's --help lists the names it knows
        for name in env_vars.get(key, "").split(","):
            if name:
                assert f"'{name}'" in help_text, f"{where}: bench/table7.py knows no {key} entry {name!r}"
    assert env_vars.get("DEVICE") == "cuda"


def test_x070_plan_names_the_rwkv7_parts_and_their_commands_exist(tmp_path):
    """GPU_CHECK_ARCH=x070: the same parts at the RWKV-7 1.5B / 2.9B shapes, our WKV7 kernel, bench/wkv7.py, the
    x070 Table 7 shapes; the x070-only commands accept what the plan passes them."""
    wheels = fake_wheels(tmp_path / "wheels")
    text, _ = run_plan(tmp_path, GPU_CHECK_WHEELS=str(wheels), GPU_CHECK_ARCH="x070")
    names = {"ckpt-1.6b": "ckpt-1.5b", "ckpt-3b": "ckpt-2.9b", "train-1.6b": "train-1.5b", "train-3b": "train-2.9b",
             "table7-1.6b": "table7-1.5b", "table7-3b": "table7-2.9b"}
    for part in PARTS:
        assert f"[{names.get(part, part)}]" in text, f"part {names.get(part, part)} missing from the x070 plan"
    assert "x070 L24 D2048 vocab 65536: ~1.52B parameters" in text  # the released 1.5B has 1527.7M
    assert "x070 L32 D2560 vocab 65536: ~2.93B parameters" in text  # the released 2.9B has 2948.1M
    assert "gpu-check-x070-" in text and "SHAPES=x070-1.5b" in text and "SHAPES=x070-2.9b" in text
    commands = [argv for argv in plan_commands(text) if argv[0] == "python3"]
    wanted = {("scripts/gpu_check_helper.py", "checkpoint"), ("scripts/gpu_check_helper.py", "build-wkv"),
              ("scripts/gpu_check_helper.py", "build-rwkv"), ("bench/wkv7.py",)}
    seen = set()
    for argv in commands:
        key = tuple(argv[1:3]) if argv[1] == "scripts/gpu_check_helper.py" else tuple(argv[1:2])
        if key not in wanted:
            continue
        seen.add(key)
        rest = argv[3:] if len(key) == 2 else argv[2:]
        known, _ = help_flags(list(key))
        assert not [f for f in flags_of(rest) if f not in known], f"{shlex.join(argv)}: unknown flags"
        if "--arch" in rest:
            assert rest[rest.index("--arch") + 1] == "x070"
    assert seen == wanted, f"missing from the x070 plan: {wanted - seen}"
    _, table7_help = help_flags(["bench/table7.py"])
    assert "'x070-1.5b'" in table7_help and "'x070-2.9b'" in table7_help and "'floor'" in table7_help


def test_small_mode_plan_runs_on_cpu_sizes(tmp_path):
    text, _ = run_plan(tmp_path, GPU_CHECK_SMALL="1", GPU_CHECK_WHEELS=str(tmp_path / "none"))
    assert "SMALL" in text and "--accelerator cpu" in text and "DEVICE=cpu" in text


# ---------------------------------------------------------------- the helper's torch-free steps


def helper(*args):
    return subprocess.run([sys.executable, str(HELPER), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_train_figure_reads_metrics(tmp_path):
    columns = ["step", "epoch", "batch", "loss", "lr", "tokens", "kt_s", "peak_mem_gb", "elapsed_s"]
    with open(tmp_path / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for step, (loss, speed) in enumerate([(11.5, 1.0), (11.0, 40.0), (10.5, 42.0), (10.0, 41.0)], 1):
            writer.writerow([step, 0, step, loss, 2e-5, step * 4096, speed, 9.5, step])
    result = helper("figure", "train", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4 steps, loss 11.500 -> 10.000, 41.00 kt/s (median after step 1), peak 9.50 GB"
    assert helper("figure", "train", tmp_path / "none").returncode == 1


def test_wkv_and_table7_figures(tmp_path):
    rows = [{"variant": "cuda bf16", "forward+backward_median_ms": 1.5},
            {"variant": "torch bf16", "forward+backward_median_ms": 15.0},
            {"variant": "fla chunk_rwkv6 bf16", "error": "CompilationError: boom"}]
    report = {"results": rows, "speed_ratios": {"torch/cuda bf16 forward+backward": 10.0}, "partial": False}
    (tmp_path / "wkv.json").write_text(json.dumps(report))
    ours = helper("figure", "wkv", tmp_path / "wkv.json")
    assert ours.returncode == 0
    assert ours.stdout.strip() == "cuda bf16 1.50 ms; torch bf16 15.00 ms; torch/cuda bf16 10.00x"
    fla = helper("figure", "wkv-fla", tmp_path / "wkv.json")
    assert fla.returncode == 1 and "CompilationError" in fla.stdout
    table = {"table": [
        {"row": "lora", "status": "ok", "tokens_per_s": 6000.0, "memory_mb": 7000.0},
        {"row": "bone_factored", "status": "ok", "tokens_per_s": 6100.0, "memory_mb": 6900.0,
         "tokens_per_s_vs_lora": 1.0167, "memory_vs_lora": 0.9857},
        {"row": "bone_mat", "status": "oom"}]}
    (tmp_path / "t7.json").write_text(json.dumps(table))
    result = helper("figure", "table7", tmp_path / "t7.json")
    assert result.returncode == 1
    assert result.stdout.strip() == ("lora 6000 tok/s 7000 MiB; bone_factored 6100 tok/s 6900 MiB (1.02x/0.99x LoRA); "
                                     "bone_mat oom")


def test_summary_files(tmp_path):
    tsv = tmp_path / "parts.tsv"
    tsv.write_text("env\tPASS\t0.0\ttorch 2.11\ntrain-1.6b\tFAIL\t12.5\texit 1: boom | bang\n"
                   "wkv-fla\tWARN\t3.0\tfla: timed out\nbuild-rwkv\tSKIP\t0.0\tSMALL mode\n")
    result = helper("summary", tsv, "--md", tmp_path / "s.md", "--json", tmp_path / "s.json",
                    "--info", "gpu_name=NVIDIA H200", "--info", "torch=2.11.0")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["failed"] == ["train-1.6b"] and report["warned"] == ["wkv-fla"] and not report["all_passed"]
    md = (tmp_path / "s.md").read_text()
    assert md.startswith("# GPU check on NVIDIA H200")
    assert "| train-1.6b | FAIL | 12 | exit 1: boom / bang |" in md
