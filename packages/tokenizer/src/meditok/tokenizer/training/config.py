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

from ..config import MedITokConfig
from ..typed_config import load_typed_config


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
    # A step whose loss or gradients are NaN/inf is skipped (nothing applied, counted in log.jsonl "nonfinite_steps");
    # this many in a row stop the run with an error. Checkpoints and exports never hold non-finite weights.
    max_nonfinite_steps: int = 10


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
        if self.run.max_nonfinite_steps < 1:
            problems.append(f"run.max_nonfinite_steps must be at least 1, got {self.run.max_nonfinite_steps}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        return self


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (or start from the defaults) and apply `section.key=value` overrides (YAML-typed values)."""
    return load_typed_config(TrainConfig, path, overrides).validate()


def steps_from_fraction(fraction: float, total: int) -> int:
    return int(math.ceil(fraction * total)) if fraction > 0 else 0
