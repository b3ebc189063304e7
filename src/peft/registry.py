"""Every PEFT method by name: method -> (config class, adapter class). Adding a method is one new file (see
src.peft.base for what it provides) plus one entry here; injection, adapter files, train.py's --peft choices and
its flag parsing all read this table."""

from typing import NamedTuple

from src.peft.base import AdapterConfig
from src.peft.bone import BoneConfig, BoneLinear
from src.peft.lora import LoraConfig, LoraLinear, PissaConfig, PissaLinear
from src.peft.miss import MissConfig, MissLinear


class Method(NamedTuple):
    config: type  # an AdapterConfig dataclass
    adapter: type  # its AdapterLinear, built as adapter(linear, config, initialise=...)


METHODS = {
    "bone": Method(BoneConfig, BoneLinear),
    "lora": Method(LoraConfig, LoraLinear),
    "pissa": Method(PissaConfig, PissaLinear),
    "miss": Method(MissConfig, MissLinear),
}


def method_of(config: AdapterConfig) -> Method:
    """The registry entry of a config object (ValueError for anything that is not a registered config)."""
    entry = METHODS.get(getattr(config, "method", None))
    if entry is None or not isinstance(config, entry.config):
        names = ", ".join(m.config.__name__ for m in METHODS.values())
        raise ValueError(f"config must be one of {names}, got {type(config).__name__}")
    return entry


def config_from_dict(data: dict) -> AdapterConfig:
    """The config of a dict carrying its `method` name (as `to_dict` writes it)."""
    method = data.get("method")
    if method not in METHODS:
        raise ValueError(f"adapter config needs 'method' in {sorted(METHODS)}, got {method!r}")
    return METHODS[method].config.from_dict(data)
