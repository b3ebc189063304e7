"""What both RWKV generations do when they read a checkpoint's layout: a required key, the layer count, and the
key-by-key comparison of a state dict with a model of the shape its tensors imply."""
import re

import torch


def require(state_dict: dict, key: str, generation: str):
    """state_dict[key], or a ValueError saying that every checkpoint of `generation` has it."""
    if key not in state_dict:
        raise ValueError(f"checkpoint is missing '{key}', which every {generation} checkpoint has: the file is "
                         f"incomplete or not an official {generation} model")
    return state_dict[key]


def listing(what: str, items: list, separator: str = ", ") -> str:
    """'what (n): a, b, ...' with at most eight items."""
    return f"{what} ({len(items)}): {separator.join(items[:8])}{' ...' if len(items) > 8 else ''}"


def layer_count(state_dict: dict, generation: str) -> int:
    """The number of blocks.N layers, refusing a file with none or with a gap."""
    layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layer_ids:
        raise ValueError(f"checkpoint has no 'blocks.N.*' tensors: it is not an {generation} model")
    n_layer = max(layer_ids) + 1
    missing_layers = sorted(set(range(n_layer)) - layer_ids)
    if missing_layers:
        raise ValueError(f"checkpoint has blocks up to {n_layer - 1} but none for layers {missing_layers}: "
                         f"the file is incomplete")
    return n_layer


def check_dimensions(config, names: tuple, generation: str) -> None:
    """Every named size of `config` positive, and n_embd a whole number of heads."""
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be positive, got {getattr(config, name)}")
    if config.n_embd % config.head_size:
        raise ValueError(
            f"n_embd={config.n_embd} is not a multiple of head_size={config.head_size}: {generation} splits the "
            f"embedding into heads of head_size channels; choose n_embd as a multiple of {config.head_size}"
        )


def load_strictly(build_model, state_dict: dict, dtype=None, device=None):
    """The model `build_model()` makes, built on the meta device and given the state dict's tensors strictly
    (every key, every shape), then moved to `dtype`/`device` where given."""
    with torch.device("meta"):
        model = build_model()
    model.load_state_dict(state_dict, strict=True, assign=True)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model


def check_layout(state_dict: dict, build_model, generation: str, shape: str) -> None:
    """Raise a ValueError listing missing keys, unexpected keys and wrong shapes of `state_dict` against the model
    `build_model()` makes on the meta device; `shape` describes that model in the message."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model().state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k}: file {tuple(state_dict[k].shape)}, expected {size}" for k, size in expected.items()
             if k in state_dict and tuple(state_dict[k].shape) != size]
    problems = [listing(what, items, separator) for what, items, separator in
                (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
                 ("inconsistent shapes", wrong, "; ")) if items]
    if problems:
        raise ValueError(
            f"checkpoint does not match an {generation} model of the shape its tensors imply ({shape}): "
            + " | ".join(problems)
            + f". The file is damaged, or it is not an official-layout {generation} checkpoint (merge adapters "
            f"with `python -m src.merge` before loading)."
        )
