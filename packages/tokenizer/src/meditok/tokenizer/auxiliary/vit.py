"""`ViT`: a plain pre-norm ViT whose parameter names follow timm / DINOv2 (`patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}`, `norm`), so a timm
ViT-B/16 trunk or a DINOv2 ViT-S/14 state dict loads into it; small random ones are the test stand-ins."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model import SelfAttention


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    layer_scale: bool = False  # DINOv2 uses LayerScale (ls1/ls2)
    eps: float = 1e-6

    def to_dict(self) -> dict:
        return asdict(self)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, layer_scale: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = _LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = _PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, cfg.width) * 0.02)
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.blocks = nn.ModuleList(
            _Block(cfg.width, cfg.num_heads, hidden, cfg.layer_scale, cfg.eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def _pos(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.pos_embed
        n = pos.shape[1] - 1
        side = int(round(math.sqrt(n)))
        if side * side == grid_h * grid_w and grid_h == grid_w:
            return pos
        patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patch.flatten(2).transpose(1, 2).to(pos.dtype)], dim=1)

    def tokens(self, x: torch.Tensor, layers: tuple[int, ...] | None = None) -> list[torch.Tensor] | torch.Tensor:
        """All tokens after the final norm, or the un-normed outputs of the given blocks (DINOv2 norm=False)."""
        gh, gw = x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size
        h = self.patch_embed(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self._pos(gh, gw)
        outs = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if layers is not None and i in layers:
                outs.append(h)
        return outs if layers is not None else self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS feature [B, width] (timm `num_classes=0` pooling='token')."""
        return self.tokens(x)[:, 0]
