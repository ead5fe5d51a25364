"""The MedITok paper's class-conditional generator: LlamaGen GPT-B with a depth head over MedITok's 8 sub-codes.

This is an independent implementation of the model the paper trained on MedMNIST classes and published as
`llamagen_meditok` (reference: `evaluation/generation/autoregressive/models/gpt_c2i.py` and `generate.py` in
github.com/Masaaki-75/meditok, MIT). It reads that checkpoint format (same key names and shapes, so
`C2IGPT.from_checkpoint("meditok_c2i_gptb.pt")` loads the published file) and computes the same logits; the tests
compare against outputs of the reference code on seeded weights (tests/data/README.md).

The model, one position per image position (16x16 = 256 positions for a 256x256 image):

    position 0:  class embedding (row `num_classes` is the null class of classifier-free guidance)
    position i:  sum over k of tok_embeddings.codebooks[k](code k of image position i-1)
    backbone:    n_layer pre-norm Llama blocks (RMSNorm, SwiGLU, no biases), 2-D RoPE over the image grid
    depth head:  from the backbone's hidden state at position i, `output` predicts the 8 sub-codes of image
                 position i one after another: step 0 reads the hidden state, step k reads
                 output.codebooks[k-1](sub-code k-1); n_output_layer blocks without RoPE, causal over the 8 steps.

Sampling follows the reference step for step (logits / temperature, top-k, top-p, softmax, one multinomial draw per
sub-code), so with `seed=s` it draws exactly what the reference draws after `torch.manual_seed(s)` on the CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The reference's class list (sample_c2i.py MODALITY_MAPPING): the MedMNIST subsets of the paper's c2i experiment,
# named by modality (bloodmnist is label 0, "microscopy").
MEDMNIST_CLASSES = ("microscopy", "ultrasound", "x-ray", "dermoscopy", "histopathology", "fundus-photography")

# Heads of the reference's GPT presets (GPT_models) by width: attention heads do not show in any weight shape, and
# the widths of the presets differ, so the width names the preset.
HEADS_BY_DIM = {768: 12, 1024: 16, 1280: 20, 1536: 24, 2560: 40, 2048: 32, 3200: 32, 4096: 32}


class C2ICheckpointError(ValueError):
    """A c2i checkpoint that cannot be loaded safely or does not fit the model; the message names the file."""


@dataclass(frozen=True)
class C2IConfig:
    """Defaults: the published GPT-B (sample_c2i.sh: GPT-B, 6 classes, 8 x 4096 codes, 16x16 grid, 1 head layer)."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: as many as n_head
    n_output_layer: int = 1
    multiple_of: int = 256  # SwiGLU width rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    num_codebooks: int = 8
    codebook_size: int = 4096  # per sub-codebook (the reference's vocab_size is num_codebooks * codebook_size)
    num_classes: int = 6
    grid_size: int = 16  # image positions per side (block_size = grid_size**2; the reference hard-codes 16)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ffn_dim(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @property
    def num_positions(self) -> int:
        return self.grid_size**2

    def __post_init__(self) -> None:
        if self.dim % self.n_head or self.n_head % self.kv_heads or self.head_dim % 4:
            raise ValueError(f"dim {self.dim} / n_head {self.n_head} / n_kv_head {self.n_kv_head}: no valid head split")

    @classmethod
    def from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], n_head: int | None = None, grid_size: int = 16
    ) -> C2IConfig:
        """The architecture a state dict's shapes imply. Head counts do not show in shapes: `n_head`, else the
        reference preset of that width, else heads of 64 channels (as in the class-conditional presets)."""
        try:
            codebook_size, dim = state_dict["tok_embeddings.codebooks.0.weight"].shape
            num_codebooks = 1 + max(
                int(m[1]) for k in state_dict if (m := re.match(r"tok_embeddings\.codebooks\.(\d+)\.", k))
            )
            n_layer = 1 + max(int(m[1]) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k)))
            n_output_layer = 1 + max(int(m[1]) for k in state_dict if (m := re.match(r"output\.layers\.(\d+)\.", k)))
            num_classes = state_dict["cls_embedding.embedding_table.weight"].shape[0] - 1  # minus the null class
            qkv_rows = state_dict["layers.0.attention.wqkv.weight"].shape[0]
        except (KeyError, ValueError) as error:  # ValueError: max() of nothing (no layers)
            raise ValueError(f"not a c2i GPT state dict ({error})") from None
        if n_head is None:
            if dim not in HEADS_BY_DIM and dim % 64:
                raise ValueError(f"width {dim} is none of the reference presets; pass n_head")
            n_head = HEADS_BY_DIM.get(dim, dim // 64)
        head_dim = dim // n_head
        kv = (qkv_rows // head_dim - n_head) // 2
        # The SwiGLU width follows from dim (multiple_of 256 as in every reference preset); another width fails the
        # strict load with the key named.
        return cls(dim=dim, n_layer=n_layer, n_head=n_head, n_kv_head=None if kv == n_head else kv,
                   n_output_layer=n_output_layer, num_codebooks=num_codebooks, codebook_size=codebook_size,
                   num_classes=num_classes, grid_size=grid_size)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # normalise in float32 even for bf16 weights, as the reference does
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_table(config: C2IConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """[1 + grid_size**2, head_dim/2, 2] (cos, sin). Row 0 (the class token) is all zeros, as in the reference: the
    class token's queries and keys are zeroed by it, so every query gives the class key a score of exactly 0 (and the
    class query attends uniformly); the trained weights depend on this. Row 1+p is image position p = (y, x) in
    raster order: the first half of the rotary pairs turns with y, the second half with x."""
    half = config.head_dim // 2
    freqs = 1.0 / (config.rope_base ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(config.grid_size, device=device).float(), freqs)  # [grid, half/2]
    g = config.grid_size
    grid = torch.cat([angles[:, None, :].expand(-1, g, -1), angles[None, :, :].expand(g, -1, -1)], dim=-1)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)  # [g*g, half, 2]
    return torch.cat([torch.zeros(1, half, 2, device=device), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D]; table [S, D/2, 2]. Rotates consecutive pairs (x0, x1) of each head."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(3).type_as(x)


class KVCache:
    """Keys and values of one attention layer, grown by one step at a time ([B, H_kv, S, D])."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, config: C2IConfig):
        super().__init__()
        self.config = config
        c = config
        self.wqkv = nn.Linear(c.dim, (c.n_head + 2 * c.kv_heads) * c.head_dim, bias=False)
        self.wo = nn.Linear(c.dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        """x [B, S, dim]. Without a cache: causal over the S positions. With one: x holds the newest positions,
        which attend to everything cached before them (decoding adds one position per call)."""
        c, (b, s, _) = self.config, x.shape
        kv = c.kv_heads * c.head_dim
        q, k, v = self.wqkv(x).split([c.dim, kv, kv], dim=-1)
        q = q.view(b, s, c.n_head, c.head_dim)
        k = k.view(b, s, c.kv_heads, c.head_dim)
        v = v.view(b, s, c.kv_heads, c.head_dim)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.append(k, v)
        repeat = c.n_head // c.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        causal = s > 1 and (cache is None or k.shape[2] == s)  # a prefill of several positions is causal too
        if s > 1 and not causal:
            raise ValueError("several new positions after cached ones: decode one position per call")
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.wo(out.transpose(1, 2).reshape(b, s, c.dim))


class FeedForward(nn.Module):
    def __init__(self, config: C2IConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: C2IConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class ClassEmbedding(nn.Module):
    def __init__(self, config: C2IConfig):
        super().__init__()
        self.embedding_table = nn.Embedding(config.num_classes + 1, config.dim)  # + the null class for CFG


class CodeEmbedding(nn.Module):
    """One table per sub-codebook; a position's embedding is the sum of its 8 sub-code rows."""

    def __init__(self, config: C2IConfig):
        super().__init__()
        self.codebooks = nn.ModuleList(
            nn.Embedding(config.codebook_size, config.dim) for _ in range(config.num_codebooks)
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # [B, K, L] -> [B, L, dim]
        return sum(table(codes[:, k]) for k, table in enumerate(self.codebooks))


class DepthHead(nn.Module):
    """Predicts the sub-codes of one image position in order, from the backbone's hidden state (step 0) and the
    embeddings of the sub-codes chosen so far (steps 1..K-1), with a causal transformer over the K steps."""

    def __init__(self, config: C2IConfig):
        super().__init__()
        self.codebooks = nn.ModuleList(
            nn.Embedding(config.codebook_size, config.dim) for _ in range(config.num_codebooks - 1)
        )
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_output_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.linear_head = nn.Linear(config.dim, config.codebook_size)

    def forward(self, x: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, None, None if caches is None else caches[i])
        return self.linear_head(self.norm(x))

    def teacher_forced(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, dim], codes [B, K, L] -> logits [B, K, L, codebook_size] for every sub-code at once."""
        b, length, dim = hidden.shape
        steps = [hidden.reshape(b * length, 1, dim)]
        steps += [table(codes[:, k].reshape(b * length, 1)) for k, table in enumerate(self.codebooks)]
        logits = self.forward(torch.cat(steps, dim=1))  # [B*L, K, V]
        return logits.reshape(b, length, len(steps), -1).permute(0, 2, 1, 3)


class C2IGPT(nn.Module):
    def __init__(self, config: C2IConfig | None = None):
        super().__init__()
        self.config = config = config or C2IConfig()
        self.cls_embedding = ClassEmbedding(config)
        self.tok_embeddings = CodeEmbedding(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = DepthHead(config)
        self._rope: dict[torch.device, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        config: C2IConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        grid_size: int = 16,
    ) -> C2IGPT:
        """The reference's checkpoint (a training dict with "model", "module" or "state_dict", or a bare state dict;
        `.pt` / `.pth` read with weights_only=True) or a `.safetensors` file. Strict: every key and shape must match
        the config (default: the one the shapes imply, heads from the width). The grid does not show in the weights
        (RoPE is computed): `grid_size` positions per side, 16 as the reference trains and samples."""
        state_dict = read_c2i_checkpoint(path)
        if config is None:
            try:
                config = C2IConfig.from_state_dict(state_dict, grid_size=grid_size)
            except ValueError as error:
                raise C2ICheckpointError(f"{path}: {error}") from None
        return cls.from_state_dict(state_dict, config, device, dtype, source=path)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        config: C2IConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str | os.PathLike = "<state dict>",
    ) -> C2IGPT:
        config = config or C2IConfig.from_state_dict(state_dict)
        with torch.device("meta"):  # no second copy of the weights: the loaded tensors are assigned as they are
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        shapes = [f"{k} {tuple(state_dict[k].shape)} (expected {s})" for k, s in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != s]  # fmt: skip
        problems = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]  # fmt: skip
        if problems:
            raise C2ICheckpointError(f"{source}: not a c2i GPT of this config ({'; '.join(problems)})")
        model.load_state_dict({k: state_dict[k] for k in expected}, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval()

    # ------------------------------------------------------------------------------------------------- forward

    def rope(self, device: torch.device) -> torch.Tensor:
        if device not in self._rope:
            self._rope[device] = rope_table(self.config, device)
        return self._rope[device]

    def backbone(self, x: torch.Tensor, start: int, caches: list[KVCache] | None = None) -> torch.Tensor:
        """x [B, S, dim] at sequence positions start..start+S-1 (0 = the class token) -> normed hidden states."""
        rope = self.rope(x.device)[start : start + x.shape[1]].to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, None if caches is None else caches[i])
        return self.norm(x)

    def forward(self, labels: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (the reference's training forward): labels [B] (num_classes = the null class),
        codes [B, K, L] -> logits [B, K, L, codebook_size]; logits[:, k, p] predict codes[:, k, p] from the class,
        the codes of positions < p and the sub-codes < k of position p."""
        x = torch.cat([self.class_embedding(labels), self.tok_embeddings(codes[:, :, :-1])], dim=1)
        return self.output.teacher_forced(self.backbone(x, 0), codes)

    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        return self.cls_embedding.embedding_table(labels)[:, None]

    # ---------------------------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(
        self,
        labels: torch.Tensor | list[int],
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        positions: int | None = None,
    ) -> torch.Tensor:
        """Class labels [B] -> codes int64 [B, K, grid_size**2] (raster order), KV-cached in backbone and head.

        cfg_scale > 1: a null-class branch runs beside each image and every sub-code is drawn from
        uncond + cfg_scale * (cond - uncond); 1 is plain sampling. temperature 0: greedy (argmax). seed: a private
        generator (None: torch's global one; seed=s draws what the reference draws after torch.manual_seed(s)).
        positions: stop after the first n image positions (a prefix of the full run; previews and tests)."""
        c = self.config
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device).reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= c.num_classes:
            raise ValueError(f"class labels must lie in [0, {c.num_classes - 1}], got {labels.tolist()}")
        if not math.isfinite(cfg_scale) or cfg_scale < 1.0:
            # The reference guides only when cfg_scale > 1 and ignores smaller values; refuse rather than differ.
            raise ValueError(f"cfg_scale must be a finite number >= 1 (1: no guidance), got {cfg_scale}")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0 (got {temperature}, {top_p}, {top_k})")
        generator = None
        if seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        guided = cfg_scale > 1.0
        rows = torch.cat([labels, torch.full_like(labels, c.num_classes)]) if guided else labels

        caches = [KVCache() for _ in self.layers]
        x = self.class_embedding(rows)
        out = []
        positions = c.num_positions if positions is None else positions
        if not 0 < positions <= c.num_positions:
            raise ValueError(f"positions must lie in [1, {c.num_positions}], got {positions}")
        for position in range(positions):
            hidden = self.backbone(x, position, caches)  # position 0: the class token; p: image position p-1
            codes = self._sample_position(hidden, guided, cfg_scale, temperature, top_k, top_p, generator)  # [B, K]
            out.append(codes)
            step = torch.cat([codes, codes]) if guided else codes
            x = self.tok_embeddings(step[:, :, None])
        return torch.stack(out, dim=-1)

    def _sample_position(self, hidden, guided, cfg_scale, temperature, top_k, top_p, generator) -> torch.Tensor:
        """The K sub-codes of one image position from the backbone's hidden state [rows, 1, dim] -> [B, K]."""
        caches = [KVCache() for _ in self.output.layers]
        x, chosen = hidden, []
        for k in range(self.config.num_codebooks):
            logits = self.output(x, caches)[:, -1].float()
            if guided:  # rows: B conditional, then B null-class
                cond, uncond = logits.chunk(2)
                logits = uncond + (cond - uncond) * cfg_scale
            code = sample(logits, temperature, top_k, top_p, generator)  # [B]
            chosen.append(code)
            if k + 1 < self.config.num_codebooks:  # both branches continue with the guided choice
                step = torch.cat([code, code]) if guided else code
                x = self.output.codebooks[k](step[:, None])
        return torch.stack(chosen, dim=1)

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device


def sample(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """logits [B, V] -> ids [B]. The reference's steps in its order (its draws, for equal generator states)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses top_p, and always the first
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


# ------------------------------------------------------------------------------------------------------- checkpoint


def read_c2i_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a c2i checkpoint. Pickles are read with torch.load(weights_only=True),
    which builds only tensors and plain containers; the one class allowed besides is argparse.Namespace, the "args"
    the reference's trainer stores in every checkpoint (an attribute bag: unpickling it sets attributes, runs no code).
    Anything else is refused with one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (c2i checkpoint)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:  # noqa: BLE001 - any reader failure is one line about this file
            raise C2ICheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as error:  # noqa: BLE001 - UnpicklingError (a forbidden global), RuntimeError (not a torch file)
        text = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        reason = (f"it holds {found.group(1)}, which weights_only loading does not allow (it could run code)" if found
                  else f"not a readable torch file ({type(error).__name__}: {text.splitlines()[0] if text else ''})")  # fmt: skip
        raise C2ICheckpointError(f"{path}: refused to load: {reason}") from None
    if not isinstance(data, dict):
        raise C2ICheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict or training checkpoint")
    for key in ("model", "module", "state_dict"):  # the reference sampler's order (DDP, DeepSpeed, generic)
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise C2ICheckpointError(f"{path}: not a state dict (non-tensor entries: {', '.join(map(str, bad[:4]))})")
    return data


def class_index(name: str | int, num_classes: int = len(MEDMNIST_CLASSES)) -> int:
    """A class name of MEDMNIST_CLASSES (case-insensitive) or an index as a number or a string of digits."""
    text = str(name).strip().lower()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < num_classes:
            return index
        raise ValueError(f"class index {index} outside [0, {num_classes - 1}]")
    names = MEDMNIST_CLASSES[:num_classes] if num_classes <= len(MEDMNIST_CLASSES) else ()
    if text in names:
        return names.index(text)
    known = ", ".join(f"{i}={n}" for i, n in enumerate(names)) or f"indices 0..{num_classes - 1}"
    raise ValueError(f"unknown class {name!r}; the checkpoint's classes are {known}")


def generate_c2i_images(
    checkpoint: str | os.PathLike,
    classes: list[str | int],
    tokenizer: str | os.PathLike = "massaki75/meditok",
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    size: tuple[int, int] | None = None,
):
    """Class names / indices -> PIL images, decoded by the MedITok tokenizer (weights path or Hub name). ``size``:
    square (H, W) in pixels, 16 per grid position; default 256x256, the grid the published GPT-B was trained on."""
    from meditok.tokenizer import MedITok
    from meditok.tokenizer.preprocessing import to_pil

    height, width = size or (256, 256)
    if height != width or height <= 0 or height % 16:
        raise ValueError(f"size {height}x{width}: the c2i GPT writes square images with sides a multiple of 16")
    model = C2IGPT.from_checkpoint(checkpoint, device=device, grid_size=height // 16)
    labels = [class_index(c, model.config.num_classes) for c in classes]
    tok = MedITok.from_pretrained(tokenizer, device=device)
    books, book_size = tok.config.num_codebooks, tok.config.codebook_size
    if (books, book_size) != (model.config.num_codebooks, model.config.codebook_size):
        raise ValueError(f"{tokenizer}: {books} x {book_size} codes, but {checkpoint} writes "
                         f"{model.config.num_codebooks} x {model.config.codebook_size}")  # fmt: skip
    codes = model.generate(labels, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    grid = (model.config.grid_size, model.config.grid_size)
    return to_pil(tok.decode(codes, grid).float().clamp(-1, 1))
