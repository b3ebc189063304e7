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
