"""The whole MedITok network in one file (spec §1), plain torch + einops.

    image [B,3,H,W] in [-1,1]
      -> encoder: conv stem + 2 MBConv stages + strided-conv pool (/16), then 31 ViT blocks, no positional embedding
      -> quant_proj: causal AttnProjection 1024 -> 64
      -> quantizer: 8 sub-codebooks x 4096 codes x 8 dims, cosine lookup        => codes [B, 8, L]
      -> post_quant_proj: causal AttnProjection 64 -> 1024
      -> decoder: 31 ViT blocks, then a conv upsampler (x16)                    => image [B,3,H,W]
    semantic head: mean of post_quant_proj tokens -> fc_norm -> projection      => embedding [B,768]

Module names and registration order reproduce the published state dict (`meditok_state_dict_keys.txt`), so the
published weights load with strict=True. Two details that the names do not reveal and that the weights depend on:
both AttnProjections attend causally over the raster order, and every ViT block applies LayerNorm twice before its
GeGLU MLP (`norm2`, then `mlp.norm`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import MedITokConfig
from .quantizer import MultiCodebookQuantizer

# ---------------------------------------------------------------------------------------------------------- layers


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, optionally followed by exact GELU."""

    def __init__(self, channels: int, eps: float = 1e-6, gelu: bool = False):
        super().__init__(channels, eps=eps)
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return F.gelu(x) if self.gelu else x


class GeGluMlp(nn.Module):
    """w2(GELU_tanh(w0(LN(x))) * w1(LN(x))) with its own LayerNorm (eps 1e-6)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.w0 = nn.Linear(dim, hidden)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.w2(F.gelu(self.w0(x), approximate="tanh") * self.w1(x))


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with fused SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = GeGluMlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CausalAttention(nn.Module):
    """Attention that changes width (1024 <-> 64) and attends causally over the token sequence.

    Keys carry no bias (`zero_k_bias` is a zero buffer). Narrowing (in > out) averages the heads, whose width equals
    `out`; widening (in < out) concatenates them.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        inner = max(in_dim, out_dim)
        self.num_heads = num_heads
        self.narrowing = in_dim > out_dim
        self.qkv = nn.Linear(in_dim, inner * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.register_buffer("zero_k_bias", torch.zeros(inner))
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x.mean(dim=1) if self.narrowing else rearrange(x, "b h n d -> b n (h d)")
        return self.proj(x)


class AttnProjection(nn.Module):
    """proj(norm3(x)) + attn(norm1(x)), then a residual GeGLU MLP at the output width (LayerNorm eps 1e-5)."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = CausalAttention(in_dim, out_dim, num_heads)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm3 = nn.LayerNorm(in_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = GeGluMlp(out_dim, out_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm3(x)) + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ------------------------------------------------------------------------------------------------- conv encoder


class ConvStem(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
        self.norm1 = LayerNorm2d(out_ch, gelu=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class AvgPoolDownsample(nn.Module):
    """Shortcut of a strided MBConv block: 3x3/2 average pool, then a 1x1 conv if the width changes."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.expand = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class MBConvBlock(nn.Module):
    """Pre-norm inverted bottleneck: 1x1 expand, GELU, depthwise 3x3 (carries the stride), GELU, 1x1 project."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, stride: int):
        super().__init__()
        if stride == 2:
            self.shortcut = AvgPoolDownsample(in_ch, out_ch)
        elif in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1)
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = LayerNorm2d(in_ch)
        self.conv1_1x1 = nn.Conv2d(in_ch, mid_ch, 1)
        self.conv2_kxk = nn.Conv2d(mid_ch, mid_ch, 3, stride=stride, padding=1, groups=mid_ch)
        self.conv3_1x1 = nn.Conv2d(mid_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1_1x1(self.pre_norm(x)))
        y = F.gelu(self.conv2_kxk(y))
        return self.conv3_1x1(y) + self.shortcut(x)


class StridedConvPool(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
        self.norm = LayerNorm2d(in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class ConvBackbone(nn.Module):
    """ViTamin stages 1-2: pixels -> [B, width, H/16, W/16]."""

    def __init__(self, cfg: MedITokConfig):
        super().__init__()
        self.stem = ConvStem(3, cfg.stem_width)
        stages, in_ch = [], cfg.stem_width
        for out_ch, depth in zip(cfg.stage_widths, cfg.stage_depths):
            blocks = [
                MBConvBlock(in_ch if i == 0 else out_ch, out_ch, cfg.expanded(out_ch), stride=2 if i == 0 else 1)
                for i in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.pool = StridedConvPool(in_ch, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.pool(x)


class PatchEmbed(nn.Module):
    """Holds the conv backbone under the reference's name (`patch_embed.backbone`) and flattens to raster tokens."""

    def __init__(self, cfg: MedITokConfig):
        super().__init__()
        self.backbone = ConvBackbone(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.backbone(x), "b c h w -> b (h w) c")


class Encoder(nn.Module):
    def __init__(self, cfg: MedITokConfig):
        super().__init__()
        # Always zero and frozen: the reference keeps the entry but has no positional embedding, which is what lets
        # any H, W divisible by 16 work.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, cfg.width), requires_grad=False)
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.Sequential(
            *[TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.encoder_depth)]
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        return self.norm(self.blocks(x))


# ------------------------------------------------------------------------------------------------- conv decoder


class Upsample2d(nn.Module):
    """Nearest x2 upsampling followed by a 3x3 conv.

    At inference the same function is computed as one stride-2 transposed conv of the low-resolution input, whose
    4x4 kernel sums the 3x3 taps that each output phase reads (4 instead of 9 multiply-adds per output pixel, and no
    upsampled map in memory). Along each axis, output 2m reads inputs {m-1, m} with taps {w0, w1+w2} and output 2m+1
    reads {m, m+1} with {w0+w1, w2}: the transposed kernel is [w2, w1+w2, w0+w1, w0]. Training keeps the literal form
    so that gradients and numerics follow the reference exactly.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self._fused: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return F.conv_transpose2d(x, self._transposed_kernel(), self.conv.bias, stride=2, padding=1)

    def _transposed_kernel(self) -> torch.Tensor:
        w = self.conv.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._fused is None or self._fused[0] != key:
            mix = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=w.dtype, device=w.device)
            kernel = torch.einsum("yi,xj,ocij->coyx", mix, mix, w)  # [in, out, 4, 4] as conv_transpose2d expects
            self._fused = (key, kernel.contiguous())
        return self._fused[1]


class InvMBConvBlock(nn.Module):
    """Decoder block: the MBConv mirror, upsampling (x2) between the expansion and the depthwise conv when strided."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, upsample: bool):
        super().__init__()
        if upsample:
            self.shortcut = Upsample2d(in_ch, out_ch)
        elif in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1)
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = LayerNorm2d(in_ch)
        self.conv1_1x1 = nn.Conv2d(in_ch, mid_ch, 1)
        self.up = Upsample2d(mid_ch, mid_ch) if upsample else nn.Identity()
        self.conv2_kxk = nn.Conv2d(mid_ch, mid_ch, 3, padding=1, groups=mid_ch)
        self.conv3_1x1 = nn.Conv2d(mid_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(F.gelu(self.conv1_1x1(self.pre_norm(x))))
        y = F.gelu(self.conv2_kxk(y))
        return self.conv3_1x1(y) + self.shortcut(x)


class InvStem(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = Upsample2d(in_ch, in_ch)
        self.norm1 = LayerNorm2d(in_ch, gelu=True)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: MedITokConfig):
        super().__init__()
        self.blocks = nn.Sequential(
            *[TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.decoder_depth)]
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        wide, narrow = cfg.stage_widths[1], cfg.stage_widths[0]
        self.up_conv1 = Upsample2d(cfg.width, wide)
        self.up_conv2 = nn.Sequential(
            *[
                InvMBConvBlock(wide, wide, cfg.expanded(wide), upsample=i == 0)
                for i in range(cfg.decoder_conv_depths[0])
            ]
        )
        self.up_conv3 = nn.Sequential(
            *[
                InvMBConvBlock(wide if i == 0 else narrow, narrow, cfg.expanded(narrow), upsample=i == 0)
                for i in range(cfg.decoder_conv_depths[1])
            ]
        )
        self.up_conv4 = InvStem(narrow, 3)

    def last_layer_weight(self) -> torch.Tensor:
        """The weight the adaptive GAN loss weight is computed against."""
        return self.up_conv4.conv2.weight

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.norm(self.blocks(tokens))
        x = rearrange(x, "b (h w) c -> b c h w", h=grid[0], w=grid[1])
        return self.up_conv4(self.up_conv3(self.up_conv2(self.up_conv1(x))))


# ---------------------------------------------------------------------------------------------------- the model


class MedITokModel(nn.Module):
    """The network itself: submodules, the training forward and the reference's inference paths.

    `meditok.tokenizer.MedITok` adds validation, loading and the user-facing API on top.
    """

    def __init__(self, cfg: MedITokConfig):
        super().__init__()
        self.config = cfg
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.encoder = Encoder(cfg)
        self.quant_proj = AttnProjection(cfg.width, cfg.latent_dim, cfg.projection_heads)
        self.quantizer = MultiCodebookQuantizer(
            cfg.num_codebooks, cfg.codebook_size, cfg.latent_dim, cfg.commitment_beta
        )
        self.post_quant_proj = AttnProjection(cfg.latent_dim, cfg.width, cfg.projection_heads)
        self.decoder = Decoder(cfg)
        self.fc_norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.projection = nn.Linear(cfg.width, cfg.embed_dim)

    # Numerics: the encoder and decoder may run in bf16/fp16; the projections and the quantizer always run in fp32
    # (as in the reference's training), so codes do not depend on the trunk's storage dtype more than necessary.
    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(x).float()
        return self.quant_proj(tokens)

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = tokens.mean(dim=1).to(self.projection.weight.dtype)
        return self.projection(self.fc_norm(pooled))

    def _decode_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.decoder(tokens.to(self.decoder.norm.weight.dtype), grid).float()

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.latents_to_codes(self._latents(x))

    def _quantized_latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes_to_latents(self.codes(x))

    def images(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        tokens = self.post_quant_proj(self.quantizer.codes_to_latents(codes))
        return self._decode_tokens(tokens, grid).clamp(-1, 1)

    def semantic_embedding(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.post_quant_proj(self._quantized_latents(x))
        return self._head(tokens)

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=1)

    def forward(self, x: torch.Tensor, decode_batch: int | None = None) -> dict[str, torch.Tensor]:
        """Training forward: reconstruction of the first `decode_batch` images, VQ loss, usage and the embedding."""
        grid = (x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size)
        z_q, vq_loss, usage = self.quantizer(self._latents(x))
        tokens = self.post_quant_proj(z_q)
        recon = self._decode_tokens(tokens[:decode_batch], grid)
        embedding = F.normalize(self._head(tokens), dim=-1)
        return {
            "reconstruction": recon,
            "vq_loss": vq_loss,
            "codebook_usage": usage,
            "embedding": embedding,
            "logit_scale": self.logit_scale.exp(),
        }

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> MedITokModel:
        """Fresh weights as in the reference's training (decoder/projections re-initialised, codebooks uniform)."""
        generator_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        for module in self.encoder.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for part in (self.decoder, self.quant_proj, self.post_quant_proj):
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Conv2d):
                    nn.init.xavier_normal_(module.weight, gain=0.5)
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.projection.weight, std=0.02)
        nn.init.zeros_(self.projection.bias)
        for codebook in self.quantizer.codebooks:
            codebook.init_uniform()
        self.logit_scale.fill_(math.log(1 / 0.07))
        if seed is not None:
            torch.random.set_rng_state(generator_state)
        return self
