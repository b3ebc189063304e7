"""The RWKV6 language model."""
from src.model.rwkv6 import RWKV6, RWKV6Config, concat_states, select_state

__all__ = ["RWKV6", "RWKV6Config", "select_state", "concat_states"]
