"""The RWKV6 (x060) and RWKV-7 (x070) language models."""
from src.model.dtypes import DTYPES
from src.model.rwkv6 import RWKV6, RWKV6Config, concat_states, select_state
from src.model.rwkv7 import RWKV7, RWKV7Config

__all__ = ["DTYPES", "RWKV6", "RWKV6Config", "RWKV7", "RWKV7Config", "select_state", "concat_states"]
