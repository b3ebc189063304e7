r"""Adapter files of other tools, read into this package's adapter payload and written from it.

Read (the format is told by the content, never by the file name):

    RWKV-PEFT flat .pth     {"blocks.N.att.key.bone": tensor, ..., "blocks.N.att.time_maa_x": tensor, ...}
        a 3-D `.bone`/`.disha` tensor (in/b, b, b) is Bone-row (RWKV-PEFT's first Bone, later "Bat"); a 2-D one
        (r, out) is MiSS default (RWKV-PEFT's later "bone", DiSHA mode bone); every other tensor is a trained
        base tensor (their train_parts), loaded over the base.
    HF peft directory       adapter_config.json + adapter_model.safetensors (or .bin), or that safetensors file
        keys base_model.model.<module>.miss_block / .bone_block (peft_type MISS / BONE; init_weights true -> MiSS
        default, "mini" -> MiSS mini, "bat" -> Bone-col) or .lora_A.weight / .lora_B.weight (LORA, scale
        lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora).

A foreign file becomes a payload shaped like save_adapter's (method, config, targets, adapted, tensors under this
package's names), with `source` naming the format, the adapted modules as exact targets, the trained base tensors
listed in `train_names`, and no base fingerprint or base shapes (those files store none; the shapes are checked
against the base when loading).

Write (`export_adapter`): "rwkv-peft" (Bone-row and MiSS default, plus train_parts tensors, as RWKV-PEFT's merge
reads them) and "peft" (an HF peft directory for the forms HF peft has: MiSS default and mini, Bone-col as
init_weights "bat", LoRA). Forms the other tool lacks, or would read with another meaning, are refused with why.
"""

import json
import math
from pathlib import Path

import torch

from src.checkpoint.files import save_atomic
from src.checkpoint.tensorfiles import (
    is_safetensors_file,
    read_safetensors,
    write_json_atomic,
    write_safetensors_atomic,
)
from src.peft.bone import BoneConfig
from src.peft.lora import LoraConfig
from src.peft.miss import MissConfig

RWKV_PEFT = "rwkv-peft"
HF_PEFT = "peft"
EXPORT_FORMATS = (RWKV_PEFT, HF_PEFT)
RWKV_PEFT_KEYS = ("bone", "disha")  # the adapter tensor's name in RWKV-PEFT files: Oct 2024 and later
HF_PREFIX = "base_model.model."
HF_CONFIG = "adapter_config.json"
HF_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
HF_BLOCK_KEYS = {"MISS": "miss_block", "BONE": "bone_block"}
ACCEPTED = (
    "accepted: an adapter file written by train.py / save_adapter; an RWKV-PEFT flat .pth (blocks.N.<module>.bone "
    "or .disha tensors, 3-D (in/b, b, b) Bone-row or 2-D (r, out) MiSS); an HF peft MiSS/Bone/LoRA directory "
    "(adapter_config.json + adapter_model.safetensors) or its safetensors file"
)


def describe_content(content) -> str:
    """What a loaded file holds, for refusals: its type, top-level keys and a few tensor names with shapes."""
    if not isinstance(content, dict):
        return f"a {type(content).__name__}"
    keys = list(content)
    tensors = [(k, v) for k, v in content.items() if isinstance(v, torch.Tensor)]
    shown = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors[:4])
    others = [k for k in keys if not isinstance(content[k], torch.Tensor)]
    text = f"a dict of {len(keys)} entries ({len(tensors)} tensors"
    text += f", e.g. {shown}" if shown else ""
    text += f"; other keys {[str(k) for k in others[:6]]}" if others else ""
    return text + ")"


def foreign_payload(source: str, config, modules: list, tensors: dict, train_names=()) -> dict:
    """A payload shaped like save_adapter's for an adapter read from another tool's file."""
    return {
        "source": source, "method": config.method, "config": config.to_dict(), "targets": list(modules),
        "train_parts": [], "train_names": list(train_names), "adapted": list(modules), "base_shapes": {},
        "base_fingerprint": None, "tensors": tensors, "extra": {},
    }


def _single(values: set, what: str, path) -> int:
    if len(values) != 1:
        raise ValueError(f"{path}: its adapter tensors have different {what} {sorted(values)}; one adapter file "
                         f"holds one size here")
    return values.pop()


def read_rwkv_peft(path, content: dict):
    """The payload of an RWKV-PEFT flat .pth (a dict of tensors), or None when it holds no .bone/.disha tensor."""
    adapter = {k: v for k, v in content.items() if k.rpartition(".")[2] in RWKV_PEFT_KEYS}
    lora = [k for k in content if k.endswith((".lora_A", ".lora_B"))]
    if lora:
        raise ValueError(f"{path} is an RWKV-PEFT LoRA file ({lora[0]}, ...): those store no lora_alpha (RWKV-PEFT's "
                         f"merge takes it on its command line), so their scale is unknown; merge it with RWKV-PEFT's "
                         f"merge_lora.py, or export an HF peft LoRA (it stores lora_alpha)")
    if not adapter:
        return None
    dims = {v.dim() for v in adapter.values()}
    if dims - {2, 3} or len(dims) > 1:
        found = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(adapter.items())[:4])
        raise ValueError(f"{path}: ambiguous RWKV-PEFT file: its .bone/.disha tensors must be all 3-D (in/b, b, b), "
                         f"Bone-row, or all 2-D (r, out), MiSS default; found {found}")
    modules = [k.rpartition(".")[0] for k in adapter]
    if dims == {3}:
        bad = [f"{k} {tuple(v.shape)}" for k, v in adapter.items() if v.shape[1] != v.shape[2]]
        if bad:
            raise ValueError(f"{path}: Bone-row tensors are stacks of b×b blocks (in/b, b, b); found {bad[:3]}")
        config = BoneConfig(b=_single({v.shape[-1] for v in adapter.values()}, "block sizes b", path))
        local = "bone"
    else:
        config = MissConfig(r=_single({v.shape[0] for v in adapter.values()}, "shard widths r", path))
        local = "miss"
    tensors = {f"{m}.{local}": v for m, v in zip(modules, adapter.values())}
    base = {k: v for k, v in content.items() if k not in adapter}
    tensors.update(base)
    return foreign_payload(RWKV_PEFT, config, modules, tensors, train_names=list(base))


def hf_files(path: Path):
    """(adapter_config.json path, weights path) of an HF peft directory or weights file (None when not one)."""
    folder = path if path.is_dir() else path.parent
    config = folder / HF_CONFIG
    if path.is_dir():
        weights = next((folder / n for n in HF_WEIGHTS if (folder / n).is_file()), None)
        if not config.is_file() or weights is None:
            raise ValueError(f"{path} is a directory but not an HF peft adapter: it needs {HF_CONFIG} and one of "
                             f"{', '.join(HF_WEIGHTS)}; {ACCEPTED}")
        return config, weights
    is_weights = path.name in HF_WEIGHTS or is_safetensors_file(path)
    return (config, path) if config.is_file() and is_weights else None


def _hf_modules(path, tensors: dict, endings: tuple) -> dict:
    """{module name: {ending: tensor}} with the HF prefix stripped; unexpected keys are refused."""
    modules = {}
    for key, tensor in tensors.items():
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        ending = next((e for e in endings if name.endswith("." + e)), None)
        if ending is None:
            raise ValueError(f"{path}: unexpected key {key} {tuple(tensor.shape)} for this adapter type (expected "
                             f"<module>.{' / .'.join(endings)}); modules_to_save and other extras are not supported")
        modules.setdefault(name[: -len(ending) - 1], {})[ending] = tensor
    partial = [f"{m} has only {sorted(t)}" for m, t in modules.items() if len(t) != len(endings)]
    if partial:
        raise ValueError(f"{path}: partial adapter: {partial[:3]} (each module needs {list(endings)})")
    if not modules:
        raise ValueError(f"{path}: no adapter tensors (<module>.{' / .'.join(endings)}) found")
    return modules


def read_hf_peft(path: Path, config_path: Path, weights_path: Path) -> dict:
    """The payload of an HF peft MiSS / Bone / LoRA adapter."""
    try:
        settings = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{config_path} is not readable JSON ({error})") from None
    peft_type = str(settings.get("peft_type", "")).upper()
    if peft_type not in ("MISS", "BONE", "LORA"):
        raise ValueError(f"{config_path}: peft_type {settings.get('peft_type')!r} is not supported; HF peft adapters "
                         f"of type MISS, BONE and LORA are read here")
    if isinstance(settings.get("r"), bool) or not isinstance(settings.get("r"), int) or settings["r"] < 1:
        raise ValueError(f"{config_path}: r must be a positive integer, got {settings.get('r')!r}")
    if is_safetensors_file(weights_path):
        tensors = read_safetensors(weights_path)
    else:
        tensors = torch.load(weights_path, map_location="cpu", weights_only=True)
    source = f"HF peft {peft_type}"
    if peft_type == "LORA":
        refused = [f"{k}={settings[k]!r}" for k in ("use_dora", "fan_in_fan_out") if settings.get(k)]
        refused += [f"{k}={settings[k]!r}" for k in ("rank_pattern", "alpha_pattern") if settings.get(k)]
        if settings.get("bias", "none") != "none":
            refused.append(f"bias={settings['bias']!r}")
        if refused:
            raise ValueError(f"{config_path}: LoRA settings {', '.join(refused)} have no equivalent here (plain LoRA, "
                             f"one r and alpha for every layer, no bias)")
        r, alpha = int(settings["r"]), float(settings.get("lora_alpha", 8))
        # rsLoRA scales by alpha / sqrt(r): the same scale is alpha * sqrt(r) / r
        config = LoraConfig(r=r, alpha=alpha * math.sqrt(r) if settings.get("use_rslora") else alpha,
                            dropout=float(settings.get("lora_dropout", 0.0)))
        modules = _hf_modules(path, tensors, ("lora_A.weight", "lora_B.weight"))
        ours = {}
        for name, pair in modules.items():
            ours[f"{name}.lora_A"], ours[f"{name}.lora_B"] = pair["lora_A.weight"], pair["lora_B.weight"]
        return foreign_payload(source, config, list(modules), ours)
    block = HF_BLOCK_KEYS[peft_type]
    modules = _hf_modules(path, tensors, (block,))
    r, init = int(settings["r"]), settings.get("init_weights", True)
    dropout = float(settings.get(f"{block.split('_')[0]}_dropout", 0.0))
    if init == "bat":
        config, local = BoneConfig(b=r, grouping="col"), "bone"
    elif init == "mini":
        config, local = MissConfig(r=r, form="mini", mini_r=int(settings.get("mini_r", 1)), dropout=dropout), "miss"
    elif isinstance(init, bool):  # false only chose a random start; the trained shard means the same
        config, local = MissConfig(r=r, dropout=dropout), "miss"
    else:
        raise ValueError(f"{config_path}: init_weights {init!r} is not one of HF peft's true, false, 'bat', 'mini'")
    expected_dim = 3 if local == "bone" else 2
    bad = [f"{m} {tuple(t[block].shape)}" for m, t in modules.items()
           if t[block].dim() != expected_dim or t[block].shape[-2 if local == "bone" else 0] != r
           or (config.method == "miss" and config.form == "mini" and t[block].shape[1] != config.mini_r)]
    if bad:
        raise ValueError(f"{path}: {block} shapes {bad[:3]} do not fit init_weights={init!r}, r={r} of {HF_CONFIG}")
    return foreign_payload(source, config, list(modules), {f"{m}.{local}": t[block] for m, t in modules.items()})


def read_foreign(path: Path, content) -> dict:
    """The payload of a file that is not save_adapter's: content is what torch.load gave (None for a directory
    or a safetensors file). ValueError naming what was found and the accepted formats when no format matches."""
    hf = hf_files(path)
    if hf is not None:
        return read_hf_peft(path, *hf)
    if content is None and is_safetensors_file(path):
        content = read_safetensors(path)
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        payload = read_rwkv_peft(path, content)
        if payload is not None:
            return payload
        if "emb.weight" in content and "head.weight" in content:
            raise ValueError(f"{path} is a model checkpoint (emb.weight, head.weight, ...), not an adapter file: "
                             f"pass it as --base / --model / --load_model")
    raise ValueError(f"{path} is not an adapter file of any accepted format: it holds {describe_content(content)}; "
                     f"{ACCEPTED}")


# ---- writing --------------------------------------------------------------------------------------------------

def _adapter_and_base_tensors(payload: dict) -> tuple:
    """({module: {local: tensor}}, {name: tensor} of the trained base tensors) of a payload."""
    adapted = payload["adapted"]
    per_module = {m: {} for m in adapted}
    base = {}
    for name, tensor in payload["tensors"].items():
        module, _, local = name.rpartition(".")
        if module in per_module and local not in ("weight", "bias"):
            per_module[module][local] = tensor
        else:
            base[name] = tensor
    return per_module, base


def _form_of(config: dict) -> str:
    method = config["method"]
    if method == "bone":
        return f"Bone-{config['grouping']}" + ("" if config["form"] == "affine" else f" ({config['form']})")
    if method == "miss":
        return f"MiSS {config['form']}"
    return method


def export_rwkv_peft(payload: dict, path, key: str = "bone") -> Path:
    """Write the flat .pth RWKV-PEFT's merge reads: {<module>.<key>: tensor} plus the train_parts tensors."""
    config = payload["config"]
    form = _form_of(config)
    if key not in RWKV_PEFT_KEYS:
        raise ValueError(f"--rwkv_peft_key must be one of {RWKV_PEFT_KEYS}, got {key!r}")
    if form == "Bone-col":
        raise ValueError("Bone-col has no RWKV-PEFT form: RWKV-PEFT's merge would apply its (out/b, b, b) tensor, "
                         "stored under the same key, as Bone-row (input blocks) and get other weights; export it "
                         "with --export peft (HF peft's init_weights 'bat' is Bone-col), or merge it here")
    if form not in ("Bone-row", "MiSS default"):
        raise ValueError(f"{form} has no RWKV-PEFT file form (RWKV-PEFT reads Bone-row, its 'bat', and MiSS "
                         f"default, its later 'bone'{'; its LoRA files carry no lora_alpha' if form == 'lora' else ''}"
                         f"); use --export peft where HF peft has the form, or merge it here (python -m src.merge)")
    per_module, base = _adapter_and_base_tensors(payload)
    local = "bone" if form == "Bone-row" else "miss"
    # clone: a tensor read from a memory-mapped file is a view of the whole file, which torch.save would write
    flat = {f"{m}.{key}": t[local].detach().cpu().clone() for m, t in per_module.items()}
    flat.update({k: v.detach().cpu().clone() for k, v in base.items()})
    return save_atomic(flat, path)


def export_hf_peft(payload: dict, folder) -> Path:
    """Write an HF peft adapter directory (adapter_config.json + adapter_model.safetensors)."""
    config = payload["config"]
    form = _form_of(config)
    per_module, base = _adapter_and_base_tensors(payload)
    if base:
        raise ValueError(f"HF peft adapters hold no trained base tensors, and this one trained {len(base)} (e.g. "
                         f"{next(iter(base))}, from --train_parts): use --export rwkv-peft, which keeps them, or merge "
                         f"it here (python -m src.merge)")
    common = {"target_modules": sorted(set(payload["targets"])), "bias": "none", "modules_to_save": None,
              "layers_to_transform": None, "layers_pattern": None, "base_model_name_or_path": None,
              "revision": None, "task_type": None, "inference_mode": True}
    if form in ("MiSS default", "MiSS mini", "Bone-col"):
        bat = form == "Bone-col"
        settings = {**common, "peft_type": "MISS", "r": config["b"] if bat else config["r"],
                    "mini_r": config.get("mini_r", 1), "miss_dropout": config.get("dropout", 0.0),
                    "init_weights": "bat" if bat else ("mini" if form == "MiSS mini" else True)}
        local = "bone" if bat else "miss"
        tensors = {f"{HF_PREFIX}{m}.miss_block": t[local] for m, t in per_module.items()}
    elif form == "lora":
        settings = {**common, "peft_type": "LORA", "r": config["r"], "lora_alpha": config["alpha"],
                    "lora_dropout": config["dropout"], "fan_in_fan_out": False, "use_rslora": False,
                    "use_dora": False, "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {}}
        tensors = {}
        for m, t in per_module.items():
            tensors[f"{HF_PREFIX}{m}.lora_A.weight"] = t["lora_A"]
            tensors[f"{HF_PREFIX}{m}.lora_B.weight"] = t["lora_B"]
    else:
        why = {"Bone-row": "HF peft's Bat (init_weights 'bat') is Bone-col, indexed by output block, and Bone-row "
                           "indexes input blocks; export it with --export rwkv-peft (RWKV-PEFT's Bone is Bone-row)",
               "pissa": "PiSSA's A and B apply to the residual W - B0·A0 of this base; merge it here instead"}
        raise ValueError(f"{form} has no HF peft form: {why.get(form, 'HF peft has no such form; merge it here')}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {folder} exists and is not a directory: --export peft writes a directory")
    write_safetensors_atomic(tensors, folder / HF_WEIGHTS[0], metadata={"format": "pt"})
    write_json_atomic(settings, folder / HF_CONFIG)
    return folder


def export_adapter(payload: dict, fmt: str, output, rwkv_peft_key: str = "bone") -> Path:
    """Write `payload` (as read_adapter returns it) in another tool's format: 'rwkv-peft' or 'peft'."""
    if fmt == RWKV_PEFT:
        return export_rwkv_peft(payload, output, key=rwkv_peft_key)
    if fmt == HF_PEFT:
        return export_hf_peft(payload, output)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
