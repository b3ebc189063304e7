"""train.py's GPU plan on a machine without a GPU, for tests: `python -m tests.emulation.gpu_plan_run <flags>`.

While the run is planned, torch reports a CUDA device and the emulated build of our kernel (tests/emulation:
cuda/wkv6_cuda.cu compiled for the host) stands in for the nvcc build, so planning takes every GPU decision:
accelerator gpu, bf16, `--wkv_op auto` -> cuda, built for the checkpoint's head size and dtype. Then the planned
run trains with Lightning and DeepSpeed on the CPU (the one part a CPU cannot take), and the model is loaded
with the op the plan chose, exactly as on a GPU. Prints one `planned: ...` line before training.
"""
import dataclasses
import os
import sys
from unittest import mock

import src.ops.wkv6_cuda as wkv6_cuda
from src.train.launch import plan_from_argv, run_plan
from tests.emulation.build import build_emulated_extension


def main(argv=None) -> int:
    wkv6_cuda.build_extension = build_emulated_extension
    wkv6_cuda.missing_build_tool = lambda: None  # the host build needs no nvcc
    with mock.patch("torch.cuda.is_available", return_value=True):
        cfg, plan, status = plan_from_argv(argv)
    if plan is None:
        return status
    print(f"planned: accelerator {plan.accelerator}, precision {plan.precision}, wkv op {plan.wkv_op}", flush=True)
    os.environ["DS_ACCELERATOR"] = "cpu"
    return run_plan(dataclasses.replace(plan, accelerator="cpu"))


if __name__ == "__main__":
    sys.exit(main())
