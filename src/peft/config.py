"""The PEFT config of a train.py run, from its flags and its RWKV-PEFT style JSON flags (--bone_config, ...).

    config = peft_config_from_flags(cfg)     # cfg: a TrainConfig, or anything with the same flag attributes

For --peft METHOD the config's fields come from the flags named by its `flag_names` (a flag left at None keeps the
field's default), then from --METHOD_config JSON (RWKV-PEFT's key spellings mapped by `json_aliases`). A setting
given both ways with different values, or a flag of another method, is refused by `check_given_settings` (train.py's
parse_args calls it: only it knows which flags were given).
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
                                 f"with the same --proj_dir; to start a new run from a saved adapter pass "
                                 f"--init_adapter {value}")
            continue
        if key == "parts":
            raise ValueError(f"--{method}_config key 'parts' is spelled --peft_targets here (e.g. att,ffn)")
        out[aliases.get(key, key)] = value
    return out


def peft_config_from_flags(flags) -> Optional[AdapterConfig]:
    """The config of --peft (None for 'none', StateConfig for 'state', else a METHODS key: TrainConfig checks the
    choice); --METHOD_config JSON sets what the method's flags leave at their defaults.

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


ADAPTER_FLAGS = ("peft_targets",)  # flags every adapter method reads, and a full fine-tune (--peft none) does not


def flag_owners() -> dict:
    """{train.py flag: the --peft methods that read it}: each method's `flag_names` and its --METHOD_config."""
    owners = {flag: list(METHODS) for flag in ADAPTER_FLAGS}
    for method, entry in METHODS.items():
        for flag in list(entry.config.flag_names.values()) + [f"{method}_config"]:
            owners.setdefault(flag, []).append(method)
    return owners


def check_given_settings(flags, command_line, given) -> None:
    """Refuse (ValueError) settings that the run would silently drop:

    - a flag of another method given on the command line (--bone_b with --peft lora, --lora_dropout with PiSSA,
      which trains without dropout, any adapter flag with --peft none). A --config file may hold the settings of
      several methods (one file for the Bone, LoRA and PiSSA runs of a comparison), so its keys are not checked;
    - one setting spelled twice with different values, by a flag and a --METHOD_config key (--bone_b 32 with
      --bone_config '{"r": 64}') or by two keys of that JSON ('{"b": 32, "bone_r": 64}'), from the command line
      or the --config file (where the same flag name is in both, the command line wins, as for every flag).

    command_line: the flag names given on the command line; given: those and the --config file's keys."""
    jsons = {method: parse_json_flag(f"{method}_config", getattr(flags, f"{method}_config", None))
             for method in METHODS if f"{method}_config" in given}
    owners = flag_owners()
    foreign = [flag for flag in sorted(command_line) if flag in owners and flags.peft not in owners[flag]]
    if foreign:
        listed = ", ".join(f"--{flag} (read by --peft {'/'.join(owners[flag])})" for flag in foreign)
        run = ("--peft none, a full fine-tune without adapters" if flags.peft == "none"
               else f"--peft {flags.peft}")
        raise ValueError(f"{listed}: this run is {run}, which would ignore {'it' if len(foreign) == 1 else 'them'}; "
                         f"drop {'it' if len(foreign) == 1 else 'them'}, or choose the --peft that reads "
                         f"{'it' if len(foreign) == 1 else 'them'}")
    if flags.peft not in METHODS:  # none, state: no settings to spell twice
        return
    config_class = METHODS[flags.peft].config
    spellings = {}  # field -> [(how it was given, value)]
    for name, flag in config_class.flag_names.items():
        if flag in given and getattr(flags, flag) is not None:
            spellings.setdefault(name, []).append((f"--{flag} {getattr(flags, flag)}", getattr(flags, flag)))
    for key, value in jsons.get(flags.peft, {}).items():
        name = config_class.json_aliases.get(key, key)
        spellings.setdefault(name, []).append((f"--{flags.peft}_config key {key!r}: {json.dumps(value)}", value))
    for name, spelled in spellings.items():
        if any(value != spelled[0][1] for _, value in spelled[1:]):
            raise ValueError(f"{config_class.__name__}.{name} is given {len(spelled)} times with different values "
                             f"({'; '.join(text for text, _ in spelled)}); keep one of them")
