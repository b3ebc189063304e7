"""Tensor files told apart by their content, not their name: torch `.pth` (zip or legacy pickle) and safetensors.

A safetensors file starts with an 8-byte little-endian header length followed by a JSON object (`{`); a torch
zip file starts with `PK`. `safetensors` is pinned in requirements-gpu.txt; where it is missing, reading or
writing one says how to install it.
"""
import json
import struct
from pathlib import Path

from src.checkpoint.files import atomic_binary_file

SAFETENSORS_HOWTO = "pip install safetensors==0.8.0 (pinned in requirements-gpu.txt)"


def is_safetensors_file(path) -> bool:
    """True when the file's first bytes are a safetensors header (a length, then a JSON object)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= length <= Path(path).stat().st_size - 8


def _safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:
        raise ValueError(f"reading or writing .safetensors files needs the safetensors package: "
                         f"{SAFETENSORS_HOWTO}") from None
    return safetensors.torch


def read_safetensors(path) -> dict:
    """{name: tensor} of a safetensors file, on the CPU (ValueError naming the file when it is unreadable)."""
    module = _safetensors_torch()
    try:
        return module.load_file(str(path), device="cpu")
    except Exception as error:
        raise ValueError(f"{path} is not a readable safetensors file ({type(error).__name__}: {error})") from None


def write_safetensors_atomic(tensors: dict, path, metadata=None) -> Path:
    """Write {name: tensor} as a safetensors file atomically (contiguous CPU copies; metadata: str -> str)."""
    module = _safetensors_torch()
    data = module.save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                       metadata=dict(metadata or {}))
    with atomic_binary_file(path) as handle:
        handle.write(data)
    return Path(path)


def write_json_atomic(value, path) -> Path:
    """Write a JSON document (indented, sorted keys) atomically."""
    with atomic_binary_file(path) as handle:
        handle.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return Path(path)
