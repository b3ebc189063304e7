"""Parameter-efficient fine-tuning for RWKV6 (and any nn.Module with nn.Linear layers): Bone, LoRA, PiSSA.

    from src.peft import BoneConfig, apply_peft, merge_peft, save_adapter, load_adapter
    names = apply_peft(model, BoneConfig(b=64), targets=None, train_parts=parse_parts("time,ln"))
"""
from src.peft.adapter_io import (
    adapter_state_dict,
    base_fingerprint,
    check_base,
    load_adapter,
    read_adapter,
    save_adapter,
)
from src.peft.bone import BoneConfig, BoneLinear
from src.peft.inject import (
    DEFAULT_TARGETS,
    PeftState,
    apply_peft,
    config_from_dict,
    get_peft_state,
    merge_peft,
    parse_parts,
    resolve_targets,
)
from src.peft.lora import AdapterLinear, LoraConfig, LoraLinear, PissaConfig, PissaLinear
from src.peft.summary import format_peft_table, peft_summary

__all__ = [
    "BoneConfig", "LoraConfig", "PissaConfig", "apply_peft", "merge_peft", "adapter_state_dict", "save_adapter",
    "load_adapter", "read_adapter", "check_base", "base_fingerprint", "parse_parts", "resolve_targets",
    "config_from_dict", "get_peft_state", "PeftState", "DEFAULT_TARGETS", "peft_summary", "format_peft_table",
    "AdapterLinear", "BoneLinear", "LoraLinear", "PissaLinear",
]
