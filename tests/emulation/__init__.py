"""Host emulation of our CUDA kernel (cuda/wkv6_cuda.cu + cuda/wkv6_op.cpp) for CPU-only CI. Test-only code.

- build.py: compiles the unchanged sources as host C++ against include/ (cuda_host_emulation.h and the shims
  cuda_runtime.h, cuda_bf16.h, c10/cuda/*), as a torch extension (`build_emulated_extension`, `emulated_wkv6`)
  or as a plain program for the shared-memory race check (`build_race_check`).
- fixtures.py: the pytest fixture `emulated_wkv6_cuda` that makes `wkv6(..., op="cuda")` run the emulated build.
- train_emulated.py: `python -m tests.emulation.train_emulated <train.py args>` does the same for train.py.

Nothing outside tests/ imports this package, so the emulated op is reachable from tests only.
"""
