"""What every auxiliary-network loader shares: the error, the `meditok` directory format (`save_aux`) and strict
state-dict loading that names the file and the config key."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import write_atomic


class AuxModelError(ValueError):
    pass


def save_aux(module: nn.Module, directory: str | os.PathLike) -> Path:
    """Write a `meditok`-format directory for a ViT, TextTower or VGG16LPIPS (atomically)."""
    from safetensors.torch import save_file

    from .lpips import VGG16LPIPS
    from .text_towers import TextTower
    from .vit import ViT

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(module, ViT):
        meta = {"kind": "vit", "config": module.config.to_dict()}
    elif isinstance(module, TextTower):
        meta = {"kind": "text", "config": module.config.to_dict()}
    elif isinstance(module, VGG16LPIPS):
        meta = {"kind": "lpips", "config": {"width_divisor": module.width_divisor}}
    else:
        raise TypeError(f"cannot save {type(module).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    write_atomic(directory, "model.safetensors", lambda p: save_file(tensors, p))
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise AuxModelError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str, optional=()) -> None:
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state and not any(k.startswith(o) for o in optional))
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing else "",
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}" if unexpected else "",
                f"shape mismatch {wrong[:5]}" if wrong else "",
            )
            if part
        )
        raise AuxModelError(f"{what}: {source} does not match the expected network: {detail}")
    module.load_state_dict({k: v for k, v in state.items()}, strict=False)


def _require(path: str | None, what: str) -> Path:
    if not path:
        raise AuxModelError(f"{what}: no path configured (set it, or switch this part off in the config)")
    p = Path(path).expanduser()
    if not p.exists():
        raise AuxModelError(f"{what}: file not found: {p}")
    return p


def _load_meditok_dir(path: Path, kind: str, what: str) -> nn.Module:
    config_file, weights = path / "config.json", path / "model.safetensors"
    for f in (config_file, weights):
        if not f.exists():
            raise AuxModelError(f"{what}: file not found: {f}")
    from .lpips import VGG16LPIPS
    from .text_towers import TextConfig, TextTower
    from .vit import ViT, ViTConfig

    meta = json.loads(config_file.read_text())
    if meta.get("kind") != kind:
        raise AuxModelError(f"{what}: {path} holds a {meta.get('kind')!r} network, expected {kind!r}")
    if kind == "vit":
        module: nn.Module = ViT(ViTConfig(**meta["config"]))
    elif kind == "text":
        module = TextTower(TextConfig(**meta["config"]))
    else:
        module = VGG16LPIPS(**meta["config"])
    _load_strict(module, _read_state(weights), str(weights), what)
    return module


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _weights_in(p: Path, what: str) -> Path:
    if p.is_file():
        return p
    for name in _WEIGHT_FILES:
        if (p / name).is_file():
            return p / name
    raise AuxModelError(f"{what}: {p} is a directory without {' / '.join(_WEIGHT_FILES)}")


@contextlib.contextmanager
def _quiet_transformers(transformers: Any):
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    bars = getattr(transformers.utils.logging, "is_progress_bar_enabled", lambda: True)()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
