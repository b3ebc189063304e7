"""The PEFT config of a train.py run, from its flags and its RWKV-PEFT style JSON flags (--bone_config, ...).

    config = peft_config_from_flags(cfg)     # cfg: a TrainConfig, or anything with the same flag attributes

For --peft METHOD the config's fields come from the flags named by its `flag_names` (a flag left at None keeps the
field's default), then from --METHOD_config JSON (RWKV-PEFT's key spellings mapped by `json_aliases`), which wins.
Every value is checked by the config itself (`__post_init__`), and nowhere else. This module reads flags as plain
attributes and imports nothing of src.train.
"""

import json
from dataclasses import MISSING, fields
from typing import Optional

from src.peft.base import AdapterConfig
from src.peft.registry import METHODS
from src.peft.state import StateConfig

# RWKV-PEFT's keys naming files to start from: accepted only when empty (this trainer never reads them).
RWKV_PEFT_FILE_KEYS = ("bone_load", "lora_load", "pissa_load", "pissa_init")


def field_default(config_class: type, name: str):
    """The default of one field of a config dataclass (train.py's flag defaults are read from here)."""
    for item in fields(config_class):
        if item.name == name:
            if item.default is MISSING:
                raise ValueError(f"{config_class.__name__}.{name} has no default")
            return item.default
    raise ValueError(f"{config_class.__name__} has no field {name!r}")


def parse_json_flag(name: str, text: Optional[str]) -> dict:
    """The JSON object of flag --NAME ({} when not given)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--{name} is not valid JSON ({error.msg} at position {error.pos}): {text!r}; write it like "
                         f"'{{\"b\": 64}}' with double quotes") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{name} must be a JSON object such as '{{\"b\": 64}}', got {text!r}")
    return value


def normalise_json(method: str, data: dict) -> dict:
    """--METHOD_config keys in this package's field names (RWKV-PEFT's aliases mapped, empty file keys dropped)."""
    aliases = METHODS[method].config.json_aliases
    out = {}
    for key, value in data.items():
        if key in RWKV_PEFT_FILE_KEYS:
            if value:
                raise ValueError(f"--{method}_config key {key!r} is not supported: to continue a run use --resume "
                                 f"with the same --proj_dir; to start from a saved adapter merge it first "
                                 f"(python -m src.merge) and pass the merged model as --load_model")
            continue
        if key == "parts":
            raise ValueError(f"--{method}_config key 'parts' is spelled --peft_targets here (e.g. att,ffn)")
        out[aliases.get(key, key)] = value
    return out


def peft_config_from_flags(flags) -> Optional[AdapterConfig]:
    """The config of --peft (None for 'none', StateConfig for 'state', else a METHODS key: TrainConfig checks the
    choice); --METHOD_config
    JSON overrides the method's flags.

    Every --METHOD_config given is parsed, so bad JSON is reported even for a method the run does not use."""
    given = {method: parse_json_flag(f"{method}_config", getattr(flags, f"{method}_config", None))
             for method in METHODS}
    if flags.peft == "none":
        return None
    if flags.peft == StateConfig.method:  # no settings: the trainer refuses other adapters' flags with it
        return StateConfig()
    config_class = METHODS[flags.peft].config
    values = config_class.flag_values(flags)
    values.update(normalise_json(flags.peft, given[flags.peft]))
    return config_class.from_dict(values, source=f"--{flags.peft}_config")
