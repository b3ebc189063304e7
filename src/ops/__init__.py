"""The WKV6 operator: `wkv6(r, k, v, w, u, state=None, op=...)` and `resolve_wkv_op(name, device, ...)`."""
from src.ops.wkv6 import WKV_OPS, WKV_REQUESTS, WkvChoice, resolve_wkv_op, wkv6

__all__ = ["wkv6", "resolve_wkv_op", "WkvChoice", "WKV_OPS", "WKV_REQUESTS"]
