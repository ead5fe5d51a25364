"""Vision teachers (stage 1's feature-distillation target), frozen, from local files: `meditok`, `open_clip`
(BiomedCLIP's timm trunk in `ViT`), `timm` and `transformers` formats (see `meditok.tokenizer.auxiliary`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    AuxModelError,
    _load_meditok_dir,
    _load_strict,
    _quiet_transformers,
    _read_state,
    _require,
    _weights_in,
)
from .vit import ViT, ViTConfig


class VisionTeacher(nn.Module):
    """A frozen vision teacher: images in [-1, 1] -> nearest resize to `image_size` (the reference's resize) ->
    ``((x + 1) / 2 - mean) / std`` when a mean/std is given (the reference feeds BiomedCLIP the [-1, 1] image
    unnormalised) -> `embed(model, x)` -> float features [B, dim]. Always in eval mode, no parameter trains."""

    def __init__(
        self,
        model: nn.Module,
        embed: Any,
        image_size: tuple[int, int],
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        description: str = "",
    ):
        super().__init__()
        self.model = model
        self._embed = embed
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.description = description
        self.pooling = "model output"  # transformers: the output field `load_vision_teacher` chose
        self.normalise = mean is not None
        if mean is not None:
            if std is None or len(mean) != 3 or len(std) != 3:
                raise AuxModelError("teacher.mean / teacher.std: need 3 values each")
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()
        self.dim = 0

    def train(self, mode: bool = True) -> VisionTeacher:
        return super().train(False)  # frozen: dropout / batch-norm statistics never switch to training behaviour

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="nearest")
        if self.normalise:
            x = ((x + 1) / 2 - self.mean) / self.std
        param = next(self.model.parameters(), None)
        if param is not None:
            x = x.to(param.dtype)
        return self._embed(self.model, x).float()

    def probe(self, what: str, source: str) -> VisionTeacher:
        """One forward of a blank image: the output width, and a start-up error if the model cannot run."""
        try:
            with torch.no_grad():
                out = self(torch.zeros(1, 3, *self.image_size))
        except AuxModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a user's model becomes a start-up error
            raise AuxModelError(
                f"{what}: the vision teacher from {source} fails on a {self.image_size[0]}x{self.image_size[1]} "
                f"input: {type(exc).__name__}: {exc}"
            ) from None
        if out.ndim != 2:
            raise AuxModelError(
                f"{what}: the vision teacher from {source} returns shape {tuple(out.shape)}, expected [batch, dim]"
            )
        self.dim = int(out.shape[1])
        return self


def _call_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def load_vision_teacher(
    path: str | None,
    fmt: str = "meditok",
    what: str = "teacher.path",
    *,
    name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    image_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    pooling: str = "auto",
) -> VisionTeacher:
    """A frozen `VisionTeacher` (`.dim`, `.image_size`) from local files (the `teacher.*` config keys).

    * ``meditok`` / ``open_clip``: our timm-layout ViT; the embedding is the CLS token after the final norm (timm's
      ``num_classes=0`` output). No normalisation unless ``mean``/``std`` are given (the reference's behaviour).
    * ``timm``: ``name`` + ``model_kwargs``; the embedding is timm's pooled pre-logits output (``num_classes=0``).
    * ``transformers``: ``pooling`` ``auto`` takes, in this order, the projected image embedding of CLIP-like
      models (``get_image_features``, or ``image_embeds`` of ``*VisionModelWithProjection``), else
      ``pooler_output`` (CLIPVisionModel: the post-layernorm CLS token; ViTModel: its dense+tanh pooler;
      Dinov2Model: the normed CLS token) when the checkpoint holds the pooler's weights, else the CLS token
      ``last_hidden_state[:, 0]``. ``pooler`` / ``cls`` force one of the last two.
    """
    p = _require(path, what)
    size = (image_size, image_size) if image_size else None
    if fmt in ("meditok", "open_clip"):
        if fmt == "meditok":
            vit = _load_meditok_dir(p, "vit", what)
        else:
            state = _read_state(p)
            prefix = "visual.trunk."
            trunk = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not trunk:
                raise AuxModelError(
                    f"{what}: {p} has no '{prefix}*' tensors (is it BiomedCLIP's open_clip_pytorch_model.bin?)"
                )
            trunk = {k: v for k, v in trunk.items() if not k.startswith(("head.", "fc_norm."))}
            vit = ViT(ViTConfig())  # timm vit_base_patch16_224
            _load_strict(vit, trunk, str(p), what)
        side = vit.config.image_size
        teacher = VisionTeacher(vit, _call_model, size or (side, side), mean, std, f"{fmt} ViT from {p}")
        return teacher.probe(what, str(p))
    if fmt == "timm":
        return _load_timm_teacher(p, name, dict(model_kwargs or {}), size, mean, std, what).probe(what, str(p))
    if fmt == "transformers":
        return _load_hf_vision_teacher(p, pooling, size, mean, std, what)
    raise AuxModelError(f"{what}: unknown vision teacher format {fmt!r} (meditok | open_clip | timm | transformers)")


def _load_timm_teacher(
    p: Path,
    name: str | None,
    model_kwargs: dict[str, Any],
    size: tuple[int, int] | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    what: str,
) -> VisionTeacher:
    try:
        import timm
        from timm.data import resolve_data_config
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torchvision build that does not load beside torch
        raise AuxModelError(
            f"teacher.format 'timm' needs the timm package, which cannot be imported here ({type(exc).__name__}: "
            f"{exc}); install it with `pip install timm` (it also needs a torchvision built for your torch)"
        ) from None
    if not name:
        raise AuxModelError("teacher.name: format 'timm' needs a timm model name, e.g. vit_base_patch16_224")
    kwargs = {k: v for k, v in model_kwargs.items() if k not in ("pretrained", "num_classes")}
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        raise AuxModelError(
            f"teacher.name: timm {timm.__version__} has no model {name!r}" + (f" (similar: {close})" if close else "")
        )
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise AuxModelError(
            f"teacher.model_kwargs: timm.create_model({name!r}, num_classes=0, **{kwargs}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    weights = _weights_in(p, what)
    state = _read_state(weights)
    expected = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(tuple(f"{h}." for h in heads))}
    _load_strict(model, state, str(weights), what)
    img = kwargs.get("img_size")
    args: dict[str, Any] = {}
    if isinstance(img, int):
        args["img_size"] = img
    elif isinstance(img, list | tuple) and len(img) == 2:
        args["input_size"] = (3, int(img[0]), int(img[1]))
    data = resolve_data_config(args, model=model)
    side = size or tuple(data["input_size"][1:])
    if mean is None:
        mean, std = tuple(data["mean"]), tuple(data["std"])
    return VisionTeacher(model.eval(), _call_model, side, mean, std, f"timm {name} from {weights}")


def _hf_embed(mode: str) -> Any:
    def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if mode == "image_features":
            out = model.get_image_features(pixel_values=x)
            if isinstance(out, torch.Tensor):  # transformers 4
                return out
            return out.image_embeds if getattr(out, "image_embeds", None) is not None else out.pooler_output
        out = model(pixel_values=x)
        if mode == "image_embeds":
            return out.image_embeds
        if mode == "pooler":
            return out.pooler_output.flatten(1)
        return out.last_hidden_state[:, 0]

    return embed


def _load_hf_vision_teacher(
    p: Path,
    pooling: str,
    size: tuple[int, int] | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    what: str,
) -> VisionTeacher:
    try:
        import transformers
    except ImportError:
        raise AuxModelError(
            "teacher.format 'transformers' needs transformers (pip install 'meditok-tokenizer[train]')"
        ) from None
    if not p.is_dir() or not (p / "config.json").is_file():
        raise AuxModelError(
            f"{what}: {p} is not a Hugging Face model folder (no config.json); format 'transformers' expects a "
            "directory written by save_pretrained (config.json + model.safetensors, preprocessor_config.json)"
        )
    if pooling not in ("auto", "pooler", "cls"):
        raise AuxModelError(f"teacher.pooling must be auto, pooler or cls, got {pooling!r}")
    try:
        meta = json.loads((p / "config.json").read_text())
    except ValueError as exc:
        raise AuxModelError(f"{what}: {p / 'config.json'} is not valid JSON: {exc}") from None
    arch = (meta.get("architectures") or [""])[0]
    loader = getattr(transformers, arch, None) if arch.endswith("WithProjection") else None
    loader = loader or transformers.AutoModel
    try:
        with _quiet_transformers(transformers):
            model, info = loader.from_pretrained(str(p), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - a parse / shape error in a user file becomes a start-up error
        raise AuxModelError(f"{what}: cannot load a transformers model from {p}: {type(exc).__name__}: {exc}") from None
    model = model.float().eval()
    missing = sorted(info.get("missing_keys") or [])
    pooler_missing = any(k.split(".")[0] == "pooler" for k in missing)
    missing = [k for k in missing if k.split(".")[0] != "pooler"]
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        files = [f for f in ("model.safetensors", "pytorch_model.bin") if (p / f).is_file()]
        source = p / files[0] if files else p
        raise AuxModelError(
            f"{what}: {source} does not match {p / 'config.json'} ({type(model).__name__}): "
            + "; ".join(
                part
                for part in (
                    f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing else "",
                    f"shape mismatch {mismatched[:5]}" if mismatched else "",
                )
                if part
            )
        )
    config = model.config
    vision = getattr(config, "vision_config", None) or config
    pre: dict[str, Any] = {}
    if (p / "preprocessor_config.json").is_file():
        pre = json.loads((p / "preprocessor_config.json").read_text())
    if size is None:
        side = getattr(vision, "image_size", None)
        if isinstance(side, int):
            size = (side, side)
        elif isinstance(side, list | tuple) and len(side) == 2:
            size = (int(side[0]), int(side[1]))
        else:
            crop = pre.get("crop_size") or pre.get("size")
            if isinstance(crop, dict) and "height" in crop:
                size = (int(crop["height"]), int(crop["width"]))
            elif isinstance(crop, int):
                size = (crop, crop)
    if size is None:
        raise AuxModelError(f"teacher.image_size: {p} names no image size (config.json / preprocessor_config.json)")
    if mean is None:
        if "image_mean" not in pre or "image_std" not in pre:
            raise AuxModelError(
                f"teacher.mean / teacher.std: {p} has no preprocessor_config.json with image_mean / image_std; set "
                "teacher.mean and teacher.std (e.g. [0.5, 0.5, 0.5] twice feeds the [-1, 1] image unchanged)"
            )
        mean, std = tuple(pre["image_mean"]), tuple(pre["image_std"])

    def describe(mode: str) -> str:
        return f"transformers {type(model).__name__} ({mode}) from {p}"

    if pooling == "cls":
        mode = "cls"
    elif pooling == "pooler":
        if pooler_missing:
            raise AuxModelError(f"teacher.pooling: pooler, but {p} holds no pooler weights (use cls or auto)")
        mode = "pooler"
    elif hasattr(model, "get_image_features"):
        mode = "image_features"
    else:
        try:
            with torch.no_grad():
                out = model(pixel_values=torch.zeros(1, 3, *size))
        except Exception as exc:  # noqa: BLE001
            raise AuxModelError(
                f"{what}: the vision teacher from {p} fails on a {size[0]}x{size[1]} input: {type(exc).__name__}: {exc}"
            ) from None
        if getattr(out, "image_embeds", None) is not None:
            mode = "image_embeds"
        elif getattr(out, "pooler_output", None) is not None and not pooler_missing:
            mode = "pooler"
        else:
            mode = "cls"
    teacher = VisionTeacher(model, _hf_embed(mode), size, mean, std, describe(mode))
    teacher.pooling = mode
    return teacher.probe(what, str(p))
