"""Parameter-efficient fine-tuning for RWKV6 (and any nn.Module with nn.Linear layers): Bone, LoRA, PiSSA, MiSS.

    from src.peft import BoneConfig, apply_peft, merge_peft, save_adapter, load_adapter
    names = apply_peft(model, BoneConfig(b=64), targets=None, train_parts=parse_parts("time,ln"))

Layout (one concern per file; imports run down this list, never up):
    base         the adapter contract (AdapterConfig, AdapterLinear) and the helpers every method shares
    bone, lora   the methods: Bone; LoRA and PiSSA
    miss         the method MiSS (HF peft's MissConfig forms default and mini)
    registry     method name -> (config class, adapter class): the one list of methods
    targets      which modules get adapters, which other parameters train
    fingerprint  which base model an adapter belongs to
    formats      RWKV-PEFT and HF peft adapter files, read into and written from the adapter payload
    inject       adapters into a model and back out (apply_peft, inject_adapters, merge_peft)
    adapter_io   adapter files (save_adapter, load_adapter, ...)
    summary      parameter counts and the adapter table
    config       the config of a train.py run from its flags
    merged       an adapter folded into its base checkpoint (for serving and src.merge)
    state        state tuning: a trained initial WKV state per layer (not a Linear adapter) and its files
"""
from src.peft.adapter_io import adapter_state_dict, check_base, load_adapter, read_adapter, save_adapter
from src.peft.base import AdapterConfig, AdapterLinear
from src.peft.bone import BoneConfig, BoneLinear
from src.peft.config import field_default, peft_config_from_flags
from src.peft.fingerprint import base_fingerprint, fingerprint_weights
from src.peft.formats import export_adapter
from src.peft.inject import (
    PeftState,
    adapter_modules,
    apply_peft,
    get_peft_state,
    inject_adapters,
    make_adapter,
    merge_peft,
)
from src.peft.lora import LoraConfig, LoraLinear, PissaConfig, PissaLinear
from src.peft.miss import MissConfig, MissLinear
from src.peft.registry import METHODS, config_from_dict
from src.peft.state import (
    StateConfig,
    apply_state_tuning,
    initial_state_for,
    load_state_for,
    read_state_file,
    save_state,
    time_states,
    to_model_state,
)
from src.peft.summary import format_peft_table, peft_summary
from src.peft.targets import DEFAULT_TARGETS, parse_parts, resolve_targets

__all__ = [
    "BoneConfig", "LoraConfig", "PissaConfig", "apply_peft", "inject_adapters", "merge_peft", "adapter_state_dict",
    "save_adapter", "load_adapter", "read_adapter", "check_base", "base_fingerprint", "fingerprint_weights",
    "parse_parts", "resolve_targets", "config_from_dict", "get_peft_state", "PeftState", "DEFAULT_TARGETS",
    "peft_summary", "format_peft_table", "AdapterConfig", "AdapterLinear", "BoneLinear", "LoraLinear",
    "PissaLinear", "METHODS", "make_adapter", "adapter_modules", "peft_config_from_flags", "field_default",
    "MissConfig", "MissLinear", "export_adapter", "StateConfig", "apply_state_tuning", "initial_state_for",
    "load_state_for", "read_state_file", "save_state", "time_states", "to_model_state",
]
