"""pytest fixture that runs `wkv6(..., op="cuda")` on CPU tensors through the host-emulated build of our kernel.

    pytest_plugins = ["tests.emulation.fixtures"]        # in a test module (or import the fixture)

    def test_something(emulated_wkv6_cuda):
        y, state = wkv6(r, k, v, w, u, s0, op="cuda")      # CPU tensors; the real Wkv6CudaFunction runs

With the fixture active, `src.ops.wkv6_cuda.build_extension` is tests.emulation.build.build_emulated_extension,
the module's build cache `_loaded` starts empty (so no GPU build is reused), and the cuda op's device check
accepts the CPU (so `resolve_wkv_op("cuda", "cpu")` and models loaded with wkv_op="cuda" work too). Everything
is restored after the test. The fixture's value is the emulated builder's module (tests.emulation.build).
"""
import importlib

import pytest

from tests.emulation import build as emulation_build


def cpu_accepting(reason_for):
    """The cuda op's device check, also accepting CPU devices (where the emulated build runs)."""

    def cuda_unavailable_reason(device):
        import torch

        if torch.device(device).type == "cpu":
            return None
        return reason_for(device)

    cuda_unavailable_reason.emulated = True
    return cuda_unavailable_reason


def install_emulation(setattr_):
    """Point the cuda op at the emulated build; `setattr_` is monkeypatch.setattr or the builtin setattr."""
    # importlib, not `import src.ops.wkv6 as m`: src.ops re-exports the function wkv6 under the module's name.
    wkv6_module = importlib.import_module("src.ops.wkv6")
    wkv6_cuda = importlib.import_module("src.ops.wkv6_cuda")
    choice = importlib.import_module("src.ops.choice")  # where resolve_wkv_op asks about the device

    setattr_(wkv6_cuda, "build_extension", emulation_build.build_emulated_extension)
    setattr_(wkv6_cuda, "_loaded", {})
    for module in (wkv6_cuda, wkv6_module, choice):
        current = getattr(module, "cuda_unavailable_reason", None)
        if current is not None and not getattr(current, "emulated", False):
            setattr_(module, "cuda_unavailable_reason", cpu_accepting(current))


@pytest.fixture
def emulated_wkv6_cuda(monkeypatch):
    """op="cuda" runs the host-emulated build of cuda/ on CPU tensors for the duration of the test."""
    install_emulation(monkeypatch.setattr)
    yield emulation_build
