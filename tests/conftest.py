"""Shared test setup: markers, and GPU tests skipped where no CUDA device is present. (The repo root is on
sys.path through pytest.ini's `pythonpath`, and the package is installed with `pip install -e .`.)"""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped where torch.cuda.is_available() is False")
    config.addinivalue_line("markers", "slow: end-to-end runs of a minute or more (still run in CI)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                      "OMP_NUM_THREADS", "DS_ACCELERATOR", "PL_GLOBAL_SEED")


@pytest.fixture(autouse=True)
def launcher_variables_given_back():
    """train.py's main() sets these for DeepSpeed; a test that calls it in-process must not hand them to a later
    test's subprocesses (a leaked WORLD_SIZE/LOCAL_RANK makes a multi-process run wait for ranks never started)."""
    saved = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
