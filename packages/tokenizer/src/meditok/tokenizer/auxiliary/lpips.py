"""LPIPS: `VGG16LPIPS` (VGG16 features + 5 linear heads in the `lpips` package's key layout) and `load_lpips`, which
reads UniTok's ``lpips_with_vgg.pth`` (or any state dict in that layout) or a `meditok` directory."""

from __future__ import annotations

import torch
from torch import nn

from .common import AuxModelError, _load_meditok_dir, _load_strict, _read_state, _require

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
