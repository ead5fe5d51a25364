"""Auxiliary networks for training, written here (no timm / torchvision / open_clip at run time).

* `ViT`: a plain pre-norm ViT whose parameter names follow timm / DINOv2 (`patch_embed.proj`, `cls_token`,
  `pos_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}`, `norm`), so a
  timm ViT-B/16 trunk or a DINOv2 ViT-S/14 state dict loads into it; small random ones are the test stand-ins.
* `TextTower`: a small byte-level transformer text encoder (stand-in for BiomedCLIP's PubMedBERT; CLS pooling).
* `VGG16LPIPS`: VGG16 features + 5 linear heads in the `lpips` package's key layout.
* `DinoDiscriminator`: 5 trainable Conv1d heads on tokens of a frozen ViT backbone (kept outside the module's
  parameters, so it is neither optimised nor checkpointed).
"""

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


@dataclass
class TextConfig:
    vocab_size: int = 259  # bytes + [CLS]=256, [PAD]=257, [EOS]=258
    context_length: int = 64
    width: int = 64
    depth: int = 2
    num_heads: int = 2
    output_dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class ByteTokenizer:
    CLS, PAD, EOS = 256, 257, 258

    def __init__(self, context_length: int):
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.CLS, *list(text.encode("utf-8"))[: self.context_length - 2], self.EOS]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class TextTower(nn.Module):
    """Byte-level transformer; CLS token -> LN -> Linear(width, output_dim) (like BiomedCLIP's text projection)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(
            _Block(cfg.width, cfg.num_heads, cfg.width * 4, False, 1e-5) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.output_dim)
        self.tokenizer = ByteTokenizer(cfg.context_length)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.proj(self.norm(h[:, 0]))

    def encode_text(self, texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return self(self.tokenizer(texts).to(device))


# ------------------------------------------------------------------------------------------------------- LPIPS

VGG16_LAYOUT = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class _ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _NetLin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class _VGGFeatures(nn.Module):
    """torchvision vgg16().features split in 5 slices with the original layer indices as names."""

    def __init__(self, divisor: int):
        super().__init__()
        index, in_ch = 0, 3
        for s, stage in enumerate(VGG16_LAYOUT):
            layers: dict[str, nn.Module] = {}
            if s > 0:
                layers[str(index)] = nn.MaxPool2d(2, 2)
                index += 1
            for ch in stage:
                ch = max(1, ch // divisor)
                layers[str(index)] = nn.Conv2d(in_ch, ch, 3, padding=1)
                layers[str(index + 1)] = nn.ReLU(inplace=False)
                index += 2
                in_ch = ch
            setattr(self, f"slice{s + 1}", nn.Sequential(__import__("collections").OrderedDict(layers)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for s in range(5):
            x = getattr(self, f"slice{s + 1}")(x)
            outs.append(x)
        return outs


class VGG16LPIPS(nn.Module):
    """LPIPS(x, y) for images in [-1,1]: mean over the 5 stages of spatially averaged, head-weighted squared
    differences of channel-normalised VGG16 features. Keys: `net.sliceK.N.*`, `linK.model.1.weight`,
    `scaling_layer.{shift,scale}`."""

    def __init__(self, width_divisor: int = 1):
        super().__init__()
        self.width_divisor = width_divisor
        self.scaling_layer = _ScalingLayer()
        self.net = _VGGFeatures(width_divisor)
        for s, stage in enumerate(VGG16_LAYOUT):
            setattr(self, f"lin{s}", _NetLin(max(1, stage[-1] // width_divisor)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        total = 0.0
        for s, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            head = getattr(self, f"lin{s}").model[1]
            total = total + head((a - b) ** 2).mean(dim=(2, 3))
        return total.mean()


# ------------------------------------------------------------------------------------------------ discriminator


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
