"""Tensor files told apart by their content, not their name: torch `.pth` (zip or legacy pickle) and safetensors.

A safetensors file starts with an 8-byte little-endian header length followed by a JSON object (`{`) naming each
tensor's dtype, shape and byte range; a torch zip file starts with `PK`. Reading maps the file (no package needed);
writing uses the `safetensors` package, pinned in requirements-gpu.txt (where it is missing, writing says how to
install it).
"""
import json
import struct
from pathlib import Path

import torch

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
        raise ValueError(f"writing .safetensors files needs the safetensors package: {SAFETENSORS_HOWTO}") from None
    return safetensors.torch


# safetensors dtype names -> torch dtypes (the ones RWKV checkpoints and adapters use)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path) -> dict:
    """{name: tensor} of a safetensors file, memory-mapped on the CPU (copy-on-write: pages are read when used,
    and changing a tensor never changes the file), as torch.load(mmap=True) does for .pth files. ValueError
    naming the file when its header is not a consistent safetensors header."""
    size = Path(path).stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        start = 8 + length
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            numel = 1
            for d in shape:
                numel *= d
            if not 0 <= begin <= end <= size - start or end - begin != numel * dtype.itemsize:
                raise ValueError(f"tensor {name}: data offsets {begin}..{end} do not hold {shape} {entry['dtype']} "
                                 f"within the file's {size - start} data bytes")
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, start + begin, (end - begin,))
            tensors[name] = raw.view(dtype).reshape(shape)
        return tensors
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
