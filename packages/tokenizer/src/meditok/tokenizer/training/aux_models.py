"""Loading (and, for tests and dry runs, saving) the frozen pretrained parts: vision teacher, text tower, LPIPS
network and the discriminator backbone. Everything comes from a user-given local path; nothing touches a hub.

A missing or mismatched file raises `AuxModelError` naming the file and the config key, at start-up.

Formats
* ``meditok``: a directory written by `save_aux` (config.json + model.safetensors), built by the same code.
* ``open_clip`` (vision teacher): BiomedCLIP's ``open_clip_pytorch_model.bin``; the timm trunk
  (``visual.trunk.*``, ViT-B/16-224) loads into `nets.ViT`.
* ``dinov2`` (discriminator): ``dinov2_vits14_pretrain.pth`` (ViT-S/14 with LayerScale).
* LPIPS: a ``.pth``/``.safetensors`` state dict in the lpips layout (UniTok's ``lpips_with_vgg.pth``) or a
  ``meditok`` directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .nets import VGG16LPIPS, TextConfig, TextTower, ViT, ViTConfig


class AuxModelError(ValueError):
    pass


def save_aux(module: nn.Module, directory: str | os.PathLike) -> Path:
    """Write a `meditok`-format directory for a ViT, TextTower or VGG16LPIPS (atomically)."""
    from safetensors.torch import save_file

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
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, directory / "model.safetensors")
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


def load_vision_teacher(path: str | None, fmt: str = "meditok", what: str = "teacher.path") -> ViT:
    p = _require(path, what)
    if fmt == "meditok":
        return _load_meditok_dir(p, "vit", what).eval().requires_grad_(False)
    if fmt == "open_clip":
        state = _read_state(p)
        prefix = "visual.trunk."
        trunk = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not trunk:
            raise AuxModelError(
                f"{what}: {p} has no '{prefix}*' tensors (is it BiomedCLIP's open_clip_pytorch_model.bin?)"
            )
        trunk = {k: v for k, v in trunk.items() if not k.startswith(("head.", "fc_norm."))}
        model = ViT(ViTConfig())  # timm vit_base_patch16_224
        _load_strict(model, trunk, str(p), what)
        return model.eval().requires_grad_(False)
    raise AuxModelError(f"{what}: unknown vision teacher format {fmt!r} (meditok | open_clip)")


def load_text_tower(path: str | None, fmt: str = "meditok", what: str = "teacher.path") -> TextTower:
    p = _require(path, what)
    if fmt == "meditok":
        return _load_meditok_dir(p, "text", what).eval().requires_grad_(False)
    raise AuxModelError(
        f"{what}: text tower format {fmt!r} is not implemented yet; only 'meditok' directories load "
        "(BiomedCLIP's PubMedBERT tower needs a BERT port)"
    )


def load_lpips(path: str | None, width_divisor: int = 1, what: str = "lpips.path") -> VGG16LPIPS:
    p = _require(path, what)
    if p.is_dir():
        model = _load_meditok_dir(p, "lpips", what)
        if model.width_divisor != width_divisor:
            raise AuxModelError(
                f"{what}: {p} was saved with width_divisor {model.width_divisor}, config says {width_divisor}"
            )
    else:
        model = VGG16LPIPS(width_divisor)
        _load_strict(model, _read_state(p), str(p), what, optional=("scaling_layer.",))
    return model.eval().requires_grad_(False)


def load_disc_backbone(path: str | None, fmt: str = "meditok", what: str = "disc.path") -> ViT:
    p = _require(path, what)
    if fmt == "meditok":
        return _load_meditok_dir(p, "vit", what).eval().requires_grad_(False)
    if fmt == "dinov2":
        state = {k: v for k, v in _read_state(p).items() if k != "mask_token"}
        model = ViT(ViTConfig(image_size=518, patch_size=14, width=384, depth=12, num_heads=6, layer_scale=True))
        _load_strict(model, state, str(p), what)
        return model.eval().requires_grad_(False)
    raise AuxModelError(f"{what}: unknown discriminator backbone format {fmt!r} (meditok | dinov2)")


def _nonnegative_heads(model: VGG16LPIPS) -> VGG16LPIPS:
    with torch.no_grad():  # real LPIPS heads are non-negative, so the distance is >= 0
        for s in range(5):
            getattr(model, f"lin{s}").model[1].weight.abs_()
    return model


def make_standins(directory: str | os.PathLike, seed: int = 0, lpips_divisor: int = 8) -> dict[str, str]:
    """Small randomly initialised stand-ins for every pretrained part (tests, CPU dry runs)."""
    directory = Path(directory)
    gen = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        paths = {
            "vision_teacher": save_aux(
                ViT(ViTConfig(image_size=64, patch_size=16, width=64, depth=2, num_heads=2)),
                directory / "vision_teacher",
            ),
            "text_tower": save_aux(TextTower(TextConfig()), directory / "text_tower"),
            "lpips": save_aux(_nonnegative_heads(VGG16LPIPS(lpips_divisor)), directory / "lpips"),
            "disc_backbone": save_aux(
                ViT(ViTConfig(image_size=56, patch_size=14, width=64, depth=4, num_heads=2, layer_scale=True)),
                directory / "disc_backbone",
            ),
        }
    finally:
        torch.random.set_rng_state(gen)
    return {k: str(v) for k, v in paths.items()}
