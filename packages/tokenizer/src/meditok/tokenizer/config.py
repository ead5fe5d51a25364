"""Model configurations as typed dataclasses.

`meditok-l` is the published model (696,648,388 parameters; spec §1). `small` and `tiny` keep the same code layout
(8 sub-codebooks x 4096 codes x 8 dims) so that codes, files and the AR token layout are interchangeable, and only
shrink the networks, so tests and CPU experiments run in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

# Bounds every MedITokConfig is checked against before anything is built (a hostile or mistyped config.json fails in
# milliseconds with the key named, instead of building for minutes): `meditok-l` is far inside them.
MAX_WIDTH = 8192  # stem_width, stage_widths, width, latent_dim, embed_dim
MAX_DEPTH = 128  # encoder_depth, decoder_depth
MAX_CONV_DEPTH = 64  # each of stage_depths, decoder_conv_depths
MAX_RATIO = 16.0  # conv_expand_ratio, mlp_ratio: finite, > 0
MAX_CODEBOOKS = 64
MAX_CODEBOOK_SIZE = 1 << 20
INT_FIELDS = {
    "stem_width": MAX_WIDTH,
    "width": MAX_WIDTH,
    "encoder_depth": MAX_DEPTH,
    "decoder_depth": MAX_DEPTH,
    "num_heads": MAX_WIDTH,
    "latent_dim": MAX_WIDTH,
    "num_codebooks": MAX_CODEBOOKS,
    "codebook_size": MAX_CODEBOOK_SIZE,
    "embed_dim": MAX_WIDTH,
}
PAIR_FIELDS = {"stage_widths": MAX_WIDTH, "stage_depths": MAX_CONV_DEPTH, "decoder_conv_depths": MAX_CONV_DEPTH}
RATIO_FIELDS = ("conv_expand_ratio", "mlp_ratio")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds_problems(config: object) -> list[str]:
    """Type, sign, bound and length problems of each field, each naming its key."""
    problems = []
    if not isinstance(config.name, str):
        problems.append(f"name must be a string, got {config.name!r}")
    for key, top in INT_FIELDS.items():
        value = getattr(config, key)
        if not _is_int(value):
            problems.append(f"{key} must be an integer, got {value!r}")
        elif not 1 <= value <= top:
            problems.append(f"{key} must be between 1 and {top}, got {value}")
    for key, top in PAIR_FIELDS.items():
        value = getattr(config, key)
        if not isinstance(value, tuple) or len(value) != 2:
            problems.append(f"{key} must be a list of 2 integers, got {value!r}")
        elif not all(_is_int(v) and 1 <= v <= top for v in value):
            problems.append(f"{key} must hold 2 integers between 1 and {top}, got {list(value)}")
    for key in RATIO_FIELDS:
        value = getattr(config, key)
        if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_RATIO):
            problems.append(f"{key} must be a finite number in (0, {MAX_RATIO:g}], got {value!r}")
    beta = config.commitment_beta
    if not (isinstance(beta, int | float) and not isinstance(beta, bool) and 0 <= beta <= 1e3):
        problems.append(f"commitment_beta must be a finite number in [0, 1000], got {beta!r}")
    return problems


def _round_to_multiple(value: float, divisor: int = 8) -> int:
    """Channel rounding of the reference's MBConv expansion (timm `make_divisible`)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class MedITokConfig:
    name: str = "meditok-l"
    # Convolutional stem + two MBConv stages (ViTamin-L). The stages halve the resolution three times and the
    # strided-conv pool once more: one token per 16x16 pixels.
    stem_width: int = 160
    stage_widths: tuple[int, int] = (160, 320)
    stage_depths: tuple[int, int] = (2, 4)
    conv_expand_ratio: float = 4.0
    # Transformer trunk (shared shape for encoder and decoder).
    width: int = 1024
    encoder_depth: int = 31
    decoder_depth: int = 31
    num_heads: int = 16
    mlp_ratio: float = 2.0
    # Decoder conv upsampler: blocks per stage (the first block of each stage upsamples x2).
    decoder_conv_depths: tuple[int, int] = (4, 2)
    # Multi-codebook quantizer: `num_codebooks` sub-codebooks of `codebook_size` codes, each `latent_dim //
    # num_codebooks` wide.
    latent_dim: int = 64
    num_codebooks: int = 8
    codebook_size: int = 4096
    commitment_beta: float = 0.25
    # Semantic head: the CLIP-style embedding of the whole image.
    embed_dim: int = 768
    patch_size: int = field(default=16, init=False)

    def __post_init__(self) -> None:
        problems = _bounds_problems(self)  # NaN fails every comparison above, so it is refused there
        if problems:  # the divisibility checks below need valid integers
            raise ValueError(f"invalid MedITokConfig {self.name!r}: " + "; ".join(problems))
        if self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.width % self.latent_dim:
            problems.append(f"width {self.width} is not divisible by latent_dim {self.latent_dim}")
        if self.latent_dim % self.num_codebooks:
            problems.append(f"latent_dim {self.latent_dim} is not divisible by num_codebooks {self.num_codebooks}")
        if self.num_heads > self.width:
            problems.append(f"num_heads {self.num_heads} is more than width {self.width}")
        if problems:
            raise ValueError(f"invalid MedITokConfig {self.name!r}: " + "; ".join(problems))

    @property
    def code_dim(self) -> int:
        return self.latent_dim // self.num_codebooks

    @property
    def projection_heads(self) -> int:
        # The reference ties the AttnProjection head count to width // latent_dim so that head_dim == latent_dim.
        return self.width // self.latent_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    def expanded(self, channels: int) -> int:
        return _round_to_multiple(channels * self.conv_expand_ratio)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("patch_size")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> MedITokConfig:
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MedITokConfig fields {unknown}; known fields are {sorted(known)}")
        if not isinstance(data, dict):
            raise ValueError(f"a MedITokConfig is a mapping of fields, got {type(data).__name__}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


CONFIGS: dict[str, MedITokConfig] = {
    "meditok-l": MedITokConfig(),
    "small": MedITokConfig(
        name="small",
        stem_width=32,
        stage_widths=(32, 64),
        stage_depths=(1, 2),
        width=256,
        encoder_depth=4,
        decoder_depth=4,
        num_heads=4,
        decoder_conv_depths=(2, 1),
        embed_dim=256,
    ),
    "tiny": MedITokConfig(
        name="tiny",
        stem_width=16,
        stage_widths=(16, 32),
        stage_depths=(1, 1),
        width=128,
        encoder_depth=2,
        decoder_depth=2,
        num_heads=2,
        decoder_conv_depths=(1, 1),
        embed_dim=64,
    ),
}


def get_config(name_or_config: str | MedITokConfig) -> MedITokConfig:
    if isinstance(name_or_config, MedITokConfig):
        return name_or_config
    try:
        return CONFIGS[name_or_config]
    except KeyError:
        raise ValueError(f"unknown MedITok config {name_or_config!r}; choose one of {sorted(CONFIGS)}") from None
