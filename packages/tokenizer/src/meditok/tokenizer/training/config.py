"""Training configuration: typed dataclasses loaded from YAML with `key=value` overrides.

>>> cfg = load_config("configs/tiny-cpu-stage1.yaml", ["run.steps=20", "optim.lr=1e-3"])
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import MedITokConfig


@dataclass
class ModelConfig:
    config: str = "meditok-l"  # a name from meditok.tokenizer.config.CONFIGS
    init_from: str | None = None  # save_pretrained dir, .pth/.safetensors, or a training checkpoint directory
    seed: int = 0
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    source: str = ""  # manifest .jsonl / reference .csv / shard directory
    image_size: int = 256
    batch_size: int = 4  # per rank
    num_workers: int = 0
    ct_windowing: bool = True  # stage 1: random CT windows (reference ct_bias 1024); stage 2: off
    augment: bool = True
    seed: int = 0
    strict: bool = False  # false: unreadable images are skipped and counted (log.jsonl "skipped_images"); true: raise
    skip_log: str | None = None  # one line per skipped image


@dataclass
class LPIPSConfig:
    enabled: bool = True
    path: str | None = None  # state dict of VGG16 + 5 linear heads (UniTok's lpips_with_vgg.pth layout)
    width_divisor: int = 1  # 1 = real VGG16; >1 = a thinner stand-in with the same layout (tests / CPU)
    weight: float = 1.0


@dataclass
class TeacherConfig:
    kind: str = "none"  # none | vision | text
    # vision: meditok (a directory written by save_aux) | open_clip (BiomedCLIP's open_clip_pytorch_model.bin)
    #         | timm (`name` + a local state dict; needs the timm package)
    #         | transformers (a local save_pretrained folder; AutoModel, local files only)
    # text:   meditok | hf_bert (a local Hugging Face BERT folder + BiomedCLIP's checkpoint; needs transformers)
    format: str = "meditok"
    path: str | None = None
    checkpoint: str | None = None  # hf_bert: BiomedCLIP's open_clip_pytorch_model.bin (default: inside `path`)
    weight: float = 0.1  # lc: 0.1 in stage 1, 1.0 in stage 2
    context_length: int = 256
    # Vision teachers. name / model_kwargs: timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs).
    name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Input: nearest resize to image_size, then ((x + 1) / 2 - mean) / std. null = from the model: timm's data
    # config; transformers' config.json (size) and preprocessor_config.json (mean/std); meditok / open_clip: the
    # ViT's size and no normalisation (the reference feeds BiomedCLIP the [-1, 1] image as is).
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pooling: str = "auto"  # transformers: auto | pooler | cls (see meditok.tokenizer.auxiliary.load_vision_teacher)


@dataclass
class DiscConfig:
    enabled: bool = True
    path: str | None = None  # frozen DINO-style ViT backbone (directory written by save_backbone, or DINOv2 .pth)
    format: str = "meditok"  # meditok | dinov2
    weight: float = 0.4  # wg = warmup * weight * adaptive
    start: float = 0.0  # fraction of the run (MedITok 0; UniTok 0.375)
    warmup: float = 0.03  # fraction of the run over which wg ramps 0 -> 1
    adaptive_min: float = 0.015
    adaptive_max: float = 1e4
    bcr: float = 4.0
    bcr_cutout: float = 0.2
    cutout: float = 0.2
    head_channels: int = 0  # 0: the backbone's width


@dataclass
class LossConfig:
    l1: float = 0.2
    l2: float = 1.0
    vq: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    weight_decay: float = 0.02
    warmup: float = 0.01  # fraction of the run
    disc_lr: float = 2e-5
    disc_betas: tuple[float, float] = (0.5, 0.9)
    disc_weight_decay: float = 0.2
    disc_warmup: float = 0.03
    lr_end_ratio: float = 0.1
    grad_clip: float = 10.0
    freeze_logit_scale: bool = False


@dataclass
class RunConfig:
    output_dir: str = "runs/meditok"
    steps: int = 1000  # total optimiser steps of the schedule
    stop_after: int | None = None  # stop early at this step (the schedule still spans `steps`)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2
    zero_stage: int = 0
    precision: str = "fp32"  # fp32 | bf16
    tensorboard: bool = True
    progress: bool = True
    plots: bool = True  # rank 0, at the end: loss.png and reconstructions.png beside log.jsonl
    resume: str | None = None  # a checkpoint directory, or "auto" (latest in output_dir/checkpoints)


@dataclass
class TrainConfig:
    stage: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        problems = []
        if self.stage not in (1, 2):
            problems.append(f"stage must be 1 or 2, got {self.stage}")
        if self.teacher.kind not in ("none", "vision", "text"):
            problems.append(f"teacher.kind must be none, vision or text, got {self.teacher.kind!r}")
        t = self.teacher
        formats = {"vision": ("meditok", "open_clip", "timm", "transformers"), "text": ("meditok", "hf_bert")}.get(
            t.kind
        )
        if formats and t.format not in formats:
            problems.append(f"teacher.format for a {t.kind} teacher must be one of {list(formats)}, got {t.format!r}")
        if t.kind == "vision" and t.format == "timm" and not t.name:
            problems.append("teacher.name: format timm needs a timm model name (e.g. vit_base_patch16_224)")
        if (t.mean is None) != (t.std is None):
            problems.append("teacher.mean and teacher.std: set both or neither")
        if t.std is not None and any(v <= 0 for v in t.std):
            problems.append(f"teacher.std must be positive, got {list(t.std)}")
        if t.image_size is not None and t.image_size < 1:
            problems.append(f"teacher.image_size must be positive, got {t.image_size}")
        if t.pooling not in ("auto", "pooler", "cls"):
            problems.append(f"teacher.pooling must be auto, pooler or cls, got {t.pooling!r}")
        if self.run.precision not in ("fp32", "bf16"):
            problems.append(f"run.precision must be fp32 or bf16, got {self.run.precision!r}")
        if self.run.zero_stage not in (0, 1, 2):
            problems.append(
                f"run.zero_stage must be 0, 1 or 2 (export reads whole module states), got {self.run.zero_stage}"
            )
        patch = MedITokConfig().patch_size  # the same for every model config
        if self.data.image_size % patch:
            problems.append(f"data.image_size must be a multiple of {patch}, got {self.data.image_size}")
        if self.run.steps < 1:
            problems.append("run.steps must be at least 1")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        return self


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        if annotation is type(None) or type(None) in args:
            return None
        raise ValueError(f"{where}: null is not allowed")
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config keys {[f'{where}{k}' for k in unknown]}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _convert(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (or start from the defaults) and apply `section.key=value` overrides (YAML-typed values)."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), raw)
    return _build(TrainConfig, data, "").validate()


def steps_from_fraction(fraction: float, total: int) -> int:
    return int(math.ceil(fraction * total)) if fraction > 0 else 0
