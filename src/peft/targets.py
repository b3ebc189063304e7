"""Which modules get adapters (module-name suffixes) and which other parameters train (name fragments)."""

from typing import Sequence

ATT_TARGETS = ("att.receptance", "att.key", "att.value", "att.gate", "att.output")
FFN_TARGETS = ("ffn.key", "ffn.receptance", "ffn.value")
DEFAULT_TARGETS = ATT_TARGETS + FFN_TARGETS
PART_TARGETS = {"att": ATT_TARGETS, "ffn": FFN_TARGETS}


def resolve_targets(targets=None) -> tuple:
    """Module-name suffixes from None (all RWKV6 projections), 'att', 'ffn', 'att,ffn', or a list mixing those
    part names with suffixes such as 'att.key' or 'head'."""
    if targets is None:
        return DEFAULT_TARGETS
    items = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    resolved = []
    for item in items:
        if not isinstance(item, str) or not item.strip(" ."):
            raise ValueError(f"adapter targets must be module-name suffixes or 'att'/'ffn', got {targets!r}")
        for suffix in PART_TARGETS.get(item, (item,)):
            if suffix not in resolved:
                resolved.append(suffix)
    return tuple(resolved)


def name_matches(name: str, suffixes: Sequence[str]) -> bool:
    """True when the module name equals a suffix or ends with '.' + suffix (so 'att.key' never matches 'xatt.key')."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def parse_parts(text) -> tuple:
    """'time,ln' -> ('time', 'ln'); '', 'none', None -> (); a list or tuple of names is passed through."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    parts = tuple(p.strip() for p in items if p.strip())
    if parts in ((), ("none",)):
        return ()
    for part in parts:
        if any(c in part for c in "[]'\" "):
            raise ValueError(
                f"train part {part!r} is not a parameter-name fragment: give a comma-separated list such as "
                f"'time,ln' (or 'none'), not a Python/JSON list"
            )
    return parts
