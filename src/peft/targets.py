"""Which modules get adapters (module-name suffixes) and which other parameters train (name fragments).

The default targets are those of the model's generation, so every default target exists in the model: RWKV6
(x060) adapts att.{receptance,key,value,gate,output} and ffn.{key,receptance,value}; RWKV-7 (x070), which has no
att.gate (its gate is the g1/g2 mini-LoRA) and no ffn.receptance, adapts att.{receptance,key,value,output} and
ffn.{key,value} (RWKV-PEFT's target_modules). The generation is read from parameter names (`generation_of`).
"""

from typing import Sequence

ATT_TARGETS = ("att.receptance", "att.key", "att.value", "att.gate", "att.output")
FFN_TARGETS = ("ffn.key", "ffn.receptance", "ffn.value")
DEFAULT_TARGETS = ATT_TARGETS + FFN_TARGETS
PART_TARGETS = {"att": ATT_TARGETS, "ffn": FFN_TARGETS}
X070_ATT_TARGETS = ("att.receptance", "att.key", "att.value", "att.output")
X070_FFN_TARGETS = ("ffn.key", "ffn.value")
PART_TARGETS_BY_GENERATION = {
    "x060": PART_TARGETS,
    "x070": {"att": X070_ATT_TARGETS, "ffn": X070_FFN_TARGETS},
}
DEFAULT_TARGETS_BY_GENERATION = {g: parts["att"] + parts["ffn"] for g, parts in PART_TARGETS_BY_GENERATION.items()}
X070_MARKER = "att.r_k"  # the (H, N) bonus of every RWKV-7 layer; RWKV6 has time_faaaa instead


def generation_of(names) -> str:
    """'x070' when the parameter / state-dict names (an iterable of str) are an RWKV-7's, else 'x060' (RWKV6 and
    any other model, whose default targets are RWKV6's)."""
    return "x070" if any(n == X070_MARKER or n.endswith("." + X070_MARKER) for n in names) else "x060"


def resolve_targets(targets=None, generation: str = "x060") -> tuple:
    """Module-name suffixes from None (all projections of the generation's blocks), 'att', 'ffn', 'att,ffn', or a
    list mixing those part names with suffixes such as 'att.key' or 'head'. generation: 'x060' (RWKV6) or 'x070'
    (RWKV-7), which decides what None, 'att' and 'ffn' stand for."""
    if generation not in PART_TARGETS_BY_GENERATION:
        raise ValueError(f"unknown model generation {generation!r}; choose one of "
                         f"{', '.join(PART_TARGETS_BY_GENERATION)}")
    if targets is None:
        return DEFAULT_TARGETS_BY_GENERATION[generation]
    parts = PART_TARGETS_BY_GENERATION[generation]
    items = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    resolved = []
    for item in items:
        if not isinstance(item, str) or not item.strip(" ."):
            raise ValueError(f"adapter targets must be module-name suffixes or 'att'/'ffn', got {targets!r}")
        for suffix in parts.get(item, (item,)):
            if suffix not in resolved:
                resolved.append(suffix)
    return tuple(resolved)


def name_matches(name: str, suffixes: Sequence[str]) -> bool:
    """True when the module name equals a suffix or ends with '.' + suffix (so 'att.key' never matches 'xatt.key')."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def parse_parts(text) -> tuple:
    """'time,ln' -> ('time', 'ln'); '', 'none', '[]' (RWKV-PEFT's spelling), None -> (); a list or tuple of names
    is passed through."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    parts = tuple(p.strip() for p in items if p.strip())
    if parts in ((), ("none",), ("[]",)):
        return ()
    for part in parts:
        if any(c in part for c in "[]'\" "):
            raise ValueError(
                f"train part {part!r} is not a parameter-name fragment: give a comma-separated list such as "
                f"'time,ln' (or 'none'), not a Python/JSON list"
            )
    return parts
