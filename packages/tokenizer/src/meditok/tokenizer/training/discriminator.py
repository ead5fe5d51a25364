"""`DinoDiscriminator`: 5 trainable Conv1d heads on tokens of a frozen ViT backbone (kept outside the module's
parameters, so it is neither optimised nor checkpointed), and `load_disc_backbone` for that backbone."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..auxiliary.common import AuxModelError, _load_meditok_dir, _load_strict, _read_state, _require
from ..auxiliary.vit import ViT, ViTConfig


class _Head(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        groups = math.gcd(32, channels)
        self.inp = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.GroupNorm(groups, channels), nn.LeakyReLU(0.2))
        self.res = nn.Sequential(
            nn.Conv1d(channels, channels, 9, padding=4, padding_mode="circular"),
            nn.GroupNorm(groups, channels),
            nn.LeakyReLU(0.2),
        )
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = (x + self.res(x)) / math.sqrt(2)
        return self.out(x)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoDiscriminator(nn.Module):
    """Frozen ViT backbone (not a submodule) + one trainable head per selected block; logits [B, heads * L]."""

    def __init__(self, backbone: ViT, layers: tuple[int, ...] | None = None):
        super().__init__()
        depth = backbone.config.depth
        if layers is None:
            layers = (0, 2, 5, 8, 11) if depth >= 12 else tuple(range(depth))
        self.layers = tuple(layers)
        self._backbone = [backbone.eval().requires_grad_(False)]
        width = backbone.config.width
        self.heads = nn.ModuleList(_Head(width) for _ in self.layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None], persistent=False)
        self.reset_parameters()

    @property
    def backbone(self) -> ViT:
        return self._backbone[0]

    def reset_parameters(self) -> None:
        for m in self.heads.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.xavier_normal_(m.weight, gain=0.5)
                nn.init.zeros_(m.bias)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.backbone.config.patch_size
        side = (x.shape[-1] // patch) * patch
        if side == x.shape[-1]:
            return x
        if torch.rand(()) < 0.5:  # random crop or area resize to a multiple of the patch, p 0.5 each
            top = int(torch.randint(0, x.shape[-2] - side + 1, ()))
            left = int(torch.randint(0, x.shape[-1] - side + 1, ()))
            return x[..., top : top + side, left : left + side]
        return F.interpolate(x, size=(side, side), mode="area")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation and the random crop / area resize to a multiple of the patch (one draw per call,
        shared by the batch). `forward(torch.cat([prepare(a), prepare(b)]), prepared=True)` scores several batches
        in one backbone pass, with the same random draws as `forward(a)`, `forward(b)`."""
        return self._resize(((x + 1) / 2 - self.mean) / self.std)

    def forward(self, x: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        self.backbone.to(x.device)
        feats = self.backbone.tokens(x if prepared else self.prepare(x), self.layers)
        return torch.cat([head(f.transpose(1, 2)).flatten(1) for head, f in zip(self.heads, feats)], dim=1)


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
