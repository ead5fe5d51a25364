"""Safe reading of MedITok checkpoints and the key-mapping adapter for the reference's formats.

Accepted inputs (spec §3):
  * the published `meditok_simple_v1.pth`: a bare `torch.save` of the core state dict;
  * the published `meditok_ckpt_v1.pth`: `{'args', 'epoch', 'iter', 'trainer': {'model': {'core.<key>': ...,
    'text_*': ...}, ...}}` (also with DDP `module.` prefixes, or `model`/`state_dict` wrappers);
  * a `.safetensors` file or a directory written by `save_pretrained` (`config.json` + `model.safetensors`).

Pickle files are opened with `torch.load(weights_only=True)` and the explicit allow-list `ALLOWED_GLOBALS`; nothing
in a checkpoint can run code. Files in the zip format are memory-mapped, so loading holds one copy of the weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .atomic import write_atomic  # noqa: F401 - its former home; save_pretrained imports it from here
from .config import CONFIGS, MedITokConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A file that is not a usable MedITok checkpoint; the message names the file and the problem."""


def _allowed_globals() -> list:
    allowed: list = [collections.OrderedDict, argparse.Namespace, torch.Size, torch.device]
    try:  # training checkpoints often carry numpy scalars (epoch, loss values)
        import numpy as np

        allowed += [np.dtype, np.ndarray, type(np.dtype(np.float64)), type(np.dtype(np.int64))]
        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray.scalar, core.multiarray._reconstruct]
    except (ImportError, AttributeError):
        pass
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], MedITokConfig | None]:
    """Read any accepted format; returns (core state dict, config if the file records one)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        return _read_directory(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path), None
    return extract_core_state_dict(_torch_load(path), path), None


def _read_directory(path: Path) -> tuple[dict[str, torch.Tensor], MedITokConfig]:
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    missing = [p.name for p in (config_file, weights_file) if not p.is_file()]
    if missing:
        raise CheckpointError(f"{path}: a MedITok directory needs {CONFIG_NAME} and {WEIGHTS_NAME}; missing {missing}")
    try:
        config = MedITokConfig.from_dict(json.loads(config_file.read_text())["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: not a MedITok config ({exc})") from None
    return _read_safetensors(weights_file), config


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _torch_load(path: Path) -> object:
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        header = f.read(2)
    if not is_zip and header[:1] != b"\x80":  # every torch.save output is a zip archive or a protocol-2+ pickle
        kind = (
            "a safetensors file? (use the .safetensors suffix)"
            if header[:1] in (b"\x08", b"\x00")
            else f"header {header!r}"
        )
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch zip archive nor a pickle; {kind})")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "weights only load failed" not in message.lower():
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (corrupt pickle: {message.splitlines()[0]})"
            ) from None
        details = [
            line
            for line in message.splitlines()[1:]
            if line.strip() and not any(n in line for n in ("documentation", "Please file", "Re-running"))
        ]
        reason = f" ({details[0].strip()})" if details else ""
        raise CheckpointError(
            f"{path}: refused to load: the pickle holds objects or instructions outside the allow-list of tensors "
            f"and plain containers{reason}. Loading it could execute code. If you trust the file, convert it "
            f"yourself with torch.load(weights_only=False) and save the state dict with safetensors."
        ) from None
    except Exception as exc:  # torch raises many types for corrupt files (RuntimeError, EOFError, KeyError, ...)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def extract_core_state_dict(obj: object, source: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the MedITok core state dict inside a bare state dict or a reference training checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict or a checkpoint dict, found {type(obj).__name__}")
    if isinstance(obj.get("trainer"), Mapping) and isinstance(obj["trainer"].get("model"), Mapping):
        obj = obj["trainer"]["model"]
    else:
        for wrapper in ("model", "state_dict", "module"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: holds no tensors (top-level keys: {sorted(map(str, obj))[:10]})")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    if any(k.startswith("core.") for k in tensors):
        # A TokenizerWrapper state dict: keep the core; the text tower and its adapters are training-only.
        tensors = {k[len("core.") :]: v for k, v in tensors.items() if k.startswith("core.")}
    return tensors


def infer_config(state_dict: Mapping[str, torch.Tensor], source: str | Path = "<checkpoint>") -> MedITokConfig:
    """Recover the architecture from tensor shapes, so that bare state dicts need no side file."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(f"{source}: cannot infer the architecture: key {key!r} is missing")
        return tuple(state_dict[key].shape)

    def count(pattern: str) -> int:
        regex = re.compile(pattern)
        return len({m.group(1) for k in state_dict if (m := regex.match(k))})

    prefix = "encoder.patch_embed.backbone."
    width = shape("encoder.norm.weight")[0]
    head_dim = 64  # every published and preset config uses 64-d attention heads
    num_codebooks = count(r"quantizer\.codebooks\.(\d+)\.")
    codebook_size, code_dim = shape("quantizer.codebooks.0.codebook.weight")
    config = MedITokConfig(
        name="inferred",
        stem_width=shape(prefix + "stem.conv1.weight")[0],
        stage_widths=(
            shape(prefix + "stages.0.0.conv3_1x1.weight")[0],
            shape(prefix + "stages.1.0.conv3_1x1.weight")[0],
        ),
        stage_depths=(
            count(r"encoder\.patch_embed\.backbone\.stages\.0\.(\d+)\."),
            count(r"encoder\.patch_embed\.backbone\.stages\.1\.(\d+)\."),
        ),
        conv_expand_ratio=shape(prefix + "stages.0.0.conv1_1x1.weight")[0]
        / shape(prefix + "stages.0.0.conv3_1x1.weight")[0],
        width=width,
        encoder_depth=count(r"encoder\.blocks\.(\d+)\."),
        decoder_depth=count(r"decoder\.blocks\.(\d+)\."),
        num_heads=max(1, width // head_dim),
        mlp_ratio=shape("encoder.blocks.0.mlp.w0.weight")[0] / width,
        decoder_conv_depths=(count(r"decoder\.up_conv2\.(\d+)\."), count(r"decoder\.up_conv3\.(\d+)\.")),
        latent_dim=num_codebooks * code_dim,
        num_codebooks=num_codebooks,
        codebook_size=codebook_size,
        embed_dim=shape("projection.weight")[0],
    )
    for preset in CONFIGS.values():
        if {**preset.to_dict(), "name": "inferred"} == config.to_dict():
            return preset
    return config


def compare_keys(
    expected: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor], source: str | Path
) -> None:
    """Raise one error that lists every missing, unexpected and mis-shaped key."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointError(f"{source}: does not match the MedITok architecture: " + "; ".join(parts))
