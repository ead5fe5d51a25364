"""Loading (and, for tests and dry runs, saving) the frozen pretrained parts: vision teacher, text tower, LPIPS
network and the discriminator backbone. Everything comes from a user-given local path; nothing touches a hub.

A missing or mismatched file raises `AuxModelError` naming the file and the config key, at start-up.

Formats
* ``meditok``: a directory written by `save_aux` (config.json + model.safetensors), built by the same code.
* ``open_clip`` (vision teacher): BiomedCLIP's ``open_clip_pytorch_model.bin``; the timm trunk
  (``visual.trunk.*``, ViT-B/16-224) loads into `nets.ViT`.
* ``timm`` (vision teacher): ``timm.create_model(teacher.name, pretrained=False, num_classes=0,
  **teacher.model_kwargs)`` + a local state dict (``.safetensors`` / ``.pth`` / ``.bin``, or a directory holding
  ``model.safetensors`` / ``pytorch_model.bin``), read with ``weights_only``; classifier-head tensors are dropped. The
  embedding is timm's pooled pre-logits feature (``model(x)`` with ``num_classes=0``: the CLS token for ViTs, global
  average pooling for CNNs, as the model's ``global_pool`` says). Size, mean and std from timm's data config for the
  model unless the teacher config sets them. Needs ``timm`` (not in the ``train`` extra: it imports torchvision).
* ``transformers`` (vision teacher): a local Hugging Face folder (``config.json`` + weights), loaded with
  ``AutoModel.from_pretrained(path, local_files_only=True)`` (or the ``*WithProjection`` class named in
  config.json's ``architectures``, which AutoModel would load without its projection). See `load_vision_teacher`
  for the embedding each ``teacher.pooling`` takes. Size from the model config, mean/std from the folder's
  ``preprocessor_config.json``, unless the teacher config sets them.
* ``dinov2`` (discriminator): ``dinov2_vits14_pretrain.pth`` (ViT-S/14 with LayerScale).
* ``hf_bert`` (text tower): a local Hugging Face BERT folder (``config.json`` + tokenizer files, e.g.
  BiomedNLP-BiomedBERT-base-uncased-abstract) plus BiomedCLIP's ``open_clip_pytorch_model.bin``, whose
  ``text.transformer.*`` (the PubMedBERT weights) and ``text.proj.*`` (the MLP projection to 512-d) load over it.
  Needs ``transformers`` (the ``train`` extra).
* LPIPS: a ``.pth``/``.safetensors`` state dict in the lpips layout (UniTok's ``lpips_with_vgg.pth``) or a
  ``meditok`` directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_atomic
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


# --------------------------------------------------------------------------------- timm / transformers teachers

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _weights_in(p: Path, what: str) -> Path:
    if p.is_file():
        return p
    for name in _WEIGHT_FILES:
        if (p / name).is_file():
            return p / name
    raise AuxModelError(f"{what}: {p} is a directory without {' / '.join(_WEIGHT_FILES)}")


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


def load_text_tower(
    path: str | None,
    fmt: str = "meditok",
    what: str = "teacher.path",
    checkpoint: str | None = None,
    context_length: int = 256,
) -> nn.Module:
    """A frozen text tower with `.config.output_dim` and `.encode_text(texts, device) -> [B, output_dim]`."""
    p = _require(path, what)
    if fmt == "meditok":
        return _load_meditok_dir(p, "text", what).eval().requires_grad_(False)
    if fmt == "hf_bert":
        return load_hf_text_tower(p, checkpoint, context_length, what).eval().requires_grad_(False)
    raise AuxModelError(f"{what}: unknown text tower format {fmt!r} (meditok | hf_bert)")


# ---------------------------------------------------------------------------------- BiomedCLIP's text tower

OPEN_CLIP_FILE = "open_clip_pytorch_model.bin"
_TEXT_PREFIX = "text."


@dataclass
class HFTextConfig:
    width: int
    output_dim: int
    context_length: int
    proj: str  # linear | mlp


class HFTextTower(nn.Module):
    """open_clip's `HFTextEncoder` as BiomedCLIP configures it: `pooler_type: cls_last_hidden_state_pooler`,
    `proj_type: mlp`. The input ids are padded/truncated to `context_length`; the attention mask is
    `ids != pad_token_id`; the output is `proj(last_hidden_state[:, 0])` with `proj` = Linear(d, (d+out)//2, no bias)
    -> GELU -> Linear(.., out, no bias) ("mlp") or Linear(d, out, no bias) ("linear")."""

    def __init__(self, transformer: nn.Module, tokenizer: Any, proj: nn.Module, config: HFTextConfig):
        super().__init__()
        self.transformer = transformer
        self.proj = proj
        self.config = config
        self.tokenizer = tokenizer
        self.pad_token_id = transformer.config.pad_token_id if transformer.config.pad_token_id is not None else 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_token_id).long()
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.proj(hidden[:, 0])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            list(texts),
            return_tensors="pt",
            max_length=self.config.context_length,
            padding="max_length",
            truncation=True,
        ).input_ids

    def encode_text(self, texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return self(self.tokenize(texts).to(device))


def _projection_from_state(state: dict[str, torch.Tensor], source: str, what: str) -> tuple[nn.Module, str]:
    if "proj.0.weight" in state and "proj.2.weight" in state:
        hidden, d_model = state["proj.0.weight"].shape
        out, hidden2 = state["proj.2.weight"].shape
        if hidden2 != hidden:
            raise AuxModelError(f"{what}: {source}: text.proj.0 / text.proj.2 shapes do not chain")
        proj = nn.Sequential(nn.Linear(d_model, hidden, bias=False), nn.GELU(), nn.Linear(hidden, out, bias=False))
        proj.load_state_dict({"0.weight": state["proj.0.weight"], "2.weight": state["proj.2.weight"]})
        return proj, "mlp"
    if "proj.weight" in state and state["proj.weight"].ndim == 2:
        out, d_model = state["proj.weight"].shape
        proj = nn.Linear(d_model, out, bias=False)
        proj.load_state_dict({"weight": state["proj.weight"]})
        return proj, "linear"
    raise AuxModelError(
        f"{what}: {source} has no text projection (text.proj.0.weight + text.proj.2.weight, or text.proj.weight); "
        f"is it BiomedCLIP's {OPEN_CLIP_FILE}?"
    )


def load_hf_text_tower(
    folder: Path, checkpoint: str | None = None, context_length: int = 256, what: str = "teacher.path"
) -> HFTextTower:
    """BiomedCLIP's text tower from local files only (no hub): `folder` is a Hugging Face BERT folder (config.json +
    tokenizer files; its weights are used only when `checkpoint` has no `text.transformer.*`), `checkpoint` is
    BiomedCLIP's open_clip_pytorch_model.bin (default: `folder/open_clip_pytorch_model.bin`)."""
    try:
        import transformers
    except ImportError:
        raise AuxModelError(
            f"{what}: format 'hf_bert' needs transformers (pip install 'meditok-tokenizer[train]')"
        ) from None
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise AuxModelError(
            f"{what}: {folder} is not a Hugging Face model folder (no config.json); format 'hf_bert' expects e.g. a "
            "local copy of BiomedNLP-BiomedBERT-base-uncased-abstract (config.json + vocab.txt/tokenizer.json)"
        )
    ckpt_what = "teacher.checkpoint"
    if checkpoint is None and (folder / OPEN_CLIP_FILE).is_file():
        checkpoint = str(folder / OPEN_CLIP_FILE)
    if checkpoint is None:
        raise AuxModelError(
            f"{ckpt_what}: not set and {folder / OPEN_CLIP_FILE} does not exist; the text projection comes from "
            f"BiomedCLIP's {OPEN_CLIP_FILE}"
        )
    ckpt = _require(checkpoint, ckpt_what)
    full = _read_state(ckpt)
    text = {k[len(_TEXT_PREFIX) :]: v for k, v in full.items() if k.startswith(_TEXT_PREFIX)}
    proj, proj_kind = _projection_from_state(text, str(ckpt), ckpt_what)

    hf_logging = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # from_pretrained's "newly initialized" notes: we check keys ourselves
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse error of a user file becomes a start-up error naming it
        raise AuxModelError(f"{what}: cannot read the config/tokenizer in {folder}: {exc}") from None
    finally:
        transformers.logging.set_verbosity(hf_logging)
    width = getattr(config, "hidden_size", None)
    if width is None:
        raise AuxModelError(f"{what}: {folder}/config.json has no hidden_size (model_type {config.model_type!r})")
    max_positions = getattr(config, "max_position_embeddings", context_length)
    if context_length > max_positions:
        raise AuxModelError(
            f"teacher.context_length {context_length} exceeds max_position_embeddings {max_positions} of {folder}"
        )
    # open_clip builds the tower with add_pooling_layer=False for the CLS-last-hidden-state pooler.
    model = transformers.AutoModel.from_config(config, add_pooling_layer=False)
    bert = {k[len("transformer.") :]: v for k, v in text.items() if k.startswith("transformer.")}
    if bert:
        source = str(ckpt)
    else:
        weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
        if not weights:
            raise AuxModelError(
                f"{what}: {ckpt} has no text.transformer.* tensors and {folder} has no model.safetensors / "
                "pytorch_model.bin"
            )
        source = str(weights[0])
        bert = _read_state(weights[0])
        prefix = f"{config.model_type}."  # e.g. BertForMaskedLM's "bert.*"
        if not any(k in model.state_dict() for k in bert) and any(k.startswith(prefix) for k in bert):
            bert = {k[len(prefix) :]: v for k, v in bert.items() if k.startswith(prefix)}
    expected = model.state_dict()
    # Tensors this tower does not use: buffers older checkpoints saved (position_ids), the pooler, MLM heads.
    unused = ("pooler.", "cls.", "embeddings.position_ids", "embeddings.token_type_ids")
    bert = {k: v for k, v in bert.items() if k in expected or not k.startswith(unused)}
    _load_strict(model, bert, source, what)
    linear_in = proj[0] if isinstance(proj, nn.Sequential) else proj
    if linear_in.in_features != width:
        raise AuxModelError(
            f"{ckpt_what}: the text projection in {ckpt} expects width {linear_in.in_features}, "
            f"but the BERT in {folder} has hidden_size {width}"
        )
    out_dim = (proj[2] if isinstance(proj, nn.Sequential) else proj).out_features
    cfg = HFTextConfig(width=width, output_dim=out_dim, context_length=context_length, proj=proj_kind)
    return HFTextTower(model, tokenizer, proj, cfg)


def make_hf_text_standin(directory: str | os.PathLike, seed: int = 0, vocab_words: list[str] | None = None) -> dict:
    """A tiny randomly initialised BERT + WordPiece tokenizer folder and an open_clip-style checkpoint with its
    `text.transformer.*` and MLP `text.proj.*`: the same files `format: hf_bert` reads for BiomedCLIP (tests)."""
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = (
        vocab_words
        or (
            "a an the of image scan slice chest x ray xray ct mri brain lung liver knee fundus skin lesion "
            "pathology ultrasound endoscopy dermoscopy other normal axial view with and"
        ).split()
    )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for w in words for c in w} | set(".,-;:()/'"))
    vocab = specials + sorted(set(words) - set(chars)) + chars + [f"##{c}" for c in chars]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    # The first argument is `vocab_file` in transformers 4 and `vocab` (a path or a dict) in 5.
    tokenizer = transformers.BertTokenizerFast(str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    gen = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        config = transformers.BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
        bert = transformers.BertModel(config, add_pooling_layer=False)
        config.save_pretrained(str(directory))
        proj = nn.Sequential(nn.Linear(32, 40, bias=False), nn.GELU(), nn.Linear(40, 48, bias=False))
    finally:
        torch.random.set_rng_state(gen)
    state = {f"text.transformer.{k}": v.clone() for k, v in bert.state_dict().items()}
    state.update({f"text.proj.{k}": v.clone() for k, v in proj.state_dict().items()})
    state["visual.trunk.cls_token"] = torch.zeros(1, 1, 8)  # a BiomedCLIP checkpoint also holds the image tower
    torch.save(state, directory / OPEN_CLIP_FILE)
    return {"folder": str(directory), "checkpoint": str(directory / OPEN_CLIP_FILE), "output_dim": 48}


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
