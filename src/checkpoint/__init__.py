"""Checkpoint I/O: official RWKV6 files in and out, atomic writes."""
from src.checkpoint.io import (
    check_against_config,
    detect_rwkv_version,
    infer_config,
    load_rwkv_state_dict,
    save_atomic,
    save_official,
)

__all__ = [
    "load_rwkv_state_dict", "infer_config", "check_against_config", "detect_rwkv_version", "save_atomic",
    "save_official",
]
