"""The compact image layout's model (layout version 2): one backbone step per image position.

The whole model, for an image of h x w positions inside a text sequence (layout: :mod:`meditok.ar.layout`)::

    ids:      ... <boi> <img_h_h> <img_w_w> <img_pos> x (h*w) <eoi> ...
    input:    a text id -> the LLM's own embedding row; the i-th <img_pos> -> InputAdapter(its 8 sub-codes)
                  "sum":     sum of 8 sub-codebook embedding tables (the paper's GPT-B)
                  "project": the MedITok code vectors (8 x code_dim, frozen) concatenated -> Linear (UniTok style)
    backbone: the LLM (LoRA-tuned), one step per position
    output:   text ids from the LLM head; the 8 sub-codes of image position i from DepthHead(hidden state at i-1):
              a small causal transformer over 8 steps (step 0 reads the hidden state, step k the embedding of the
              sub-code chosen at step k-1), its own KV cache while sampling, one output projection per sub-codebook
    loss:     cross-entropy of the text targets + of the 8 sub-codes of every learnt image position, averaged over
              all of them: one term per sub-code, as the flat layout weighs its 8 code tokens

The depth head's blocks are the c2i GPT's (:mod:`meditok.ar.c2i`: RMSNorm, pre-norm SwiGLU blocks without RoPE, its
KV cache), so there is one implementation of them. Adapter and head are saved beside the LLM weights in
``compact_image.safetensors``; their settings live in config.json under ``meditok_ar.compact``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.ar.c2i import Block, C2IConfig, KVCache, RMSNorm
from meditok.ar.layout import LayoutError, TokenLayout
from meditok.ar.sequences import IGNORE_INDEX

COMPACT_WEIGHTS = "compact_image.safetensors"
INPUT_ADAPTERS = ("sum", "project")


@dataclass
class CompactConfig:
    """Settings of the compact layout's input adapter and depth head (config.json ``meditok_ar.compact``)."""

    input_adapter: str = "sum"  # "sum" | "project"; sum until the real-LLM recipe has measured both
    head_layers: int = 1  # depth-head transformer blocks (GPT-B's n_output_layer)
    head_heads: int | None = None  # attention heads of the head; None: the backbone's
    code_dim: int = 8  # MedITok's code vector size (the "project" adapter's input is num_codebooks * code_dim)

    def validate(self) -> CompactConfig:
        if self.input_adapter not in INPUT_ADAPTERS:
            raise ValueError(f"compact.input_adapter must be one of {INPUT_ADAPTERS}, not {self.input_adapter!r}")
        if self.head_layers < 1:
            raise ValueError(f"compact.head_layers must be >= 1, got {self.head_layers}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CompactConfig:
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise LayoutError(f"unknown compact settings {sorted(unknown)}")
        return cls(**data).validate()


class InputAdapter(nn.Module):
    """A position's 8 sub-codes [..., K] -> one backbone embedding [..., dim]."""

    def __init__(self, kind: str, dim: int, num_codebooks: int, codebook_size: int, code_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "sum":
            self.tables = nn.ModuleList(nn.Embedding(codebook_size, dim) for _ in range(num_codebooks))
        elif kind == "project":
            # The image tokenizer's unit code vectors, frozen: what the codes mean is the tokenizer's, only the
            # projection into the LLM's space learns.
            self.register_buffer("code_vectors", torch.zeros(num_codebooks, codebook_size, code_dim))
            self.projection = nn.Linear(num_codebooks * code_dim, dim)
        else:
            raise ValueError(f"input adapter must be one of {INPUT_ADAPTERS}, not {kind!r}")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if self.kind == "sum":
            return sum(table(codes[..., k]) for k, table in enumerate(self.tables))
        vectors = [self.code_vectors[k][codes[..., k]] for k in range(self.code_vectors.shape[0])]
        return self.projection(torch.cat(vectors, dim=-1))

    @torch.no_grad()
    def initialise(self, codebooks: list[torch.Tensor], mean: torch.Tensor, std: float, seed: int = 0) -> None:
        """Both choices start as the same map: mean + std*sqrt(dim/K) * P @ concat_k(v_k), with P the flat layout's
        fixed orthonormal projection (`code_projection`) and v_k the unit code vectors, so a position's embedding
        keeps the codes' cosine geometry at the text rows' scale (norm like one text row, whatever K)."""
        from meditok.ar.model import code_projection

        k_books, code_dim = len(codebooks), codebooks[0].shape[1]
        dim = mean.shape[0]
        proj = code_projection(dim, k_books, code_dim, seed)  # [dim, K*code_dim]
        scale = std * math.sqrt(dim) / math.sqrt(k_books)
        if self.kind == "project":
            self.code_vectors.copy_(torch.stack([book.float() for book in codebooks]))
            self.projection.weight.copy_(scale * proj)
            self.projection.bias.copy_(mean)
            return
        for k, (table, book) in enumerate(zip(self.tables, codebooks)):
            block = proj[:, k * code_dim : (k + 1) * code_dim]
            table.weight.copy_(mean / k_books + scale * book.float() @ block.T)


class DepthHead(nn.Module):
    """The 8 sub-codes of one image position, one after another, from the backbone's hidden state."""

    def __init__(self, dim: int, heads: int, layers: int, num_codebooks: int, codebook_size: int,
                 norm_eps: float = 1e-5) -> None:  # fmt: skip
        super().__init__()
        self.num_codebooks = num_codebooks
        blocks = C2IConfig(dim=dim, n_layer=0, n_head=heads, n_output_layer=layers, num_codebooks=num_codebooks,
                           codebook_size=codebook_size, norm_eps=norm_eps)  # fmt: skip
        # Step k >= 1 reads the sub-code chosen at step k-1 through its own table (7 tables for 8 sub-codes).
        self.code_embeddings = nn.ModuleList(nn.Embedding(codebook_size, dim) for _ in range(num_codebooks - 1))
        self.layers = nn.ModuleList(Block(blocks) for _ in range(layers))
        self.norm = RMSNorm(dim, norm_eps)
        # One projection per sub-codebook: the 8 codebooks are different vocabularies.
        self.projections = nn.Parameter(torch.empty(num_codebooks, codebook_size, dim))
        self.biases = nn.Parameter(torch.zeros(num_codebooks, codebook_size))
        with torch.no_grad():
            nn.init.normal_(self.projections, std=0.02)  # near-uniform first predictions (loss ~ ln 4096)
            for table in self.code_embeddings:
                nn.init.normal_(table.weight, std=0.02)

    def _run(self, x: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, None, None if caches is None else caches[i])
        return self.norm(x)

    def teacher_forced(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """hidden [N, dim] (the state before each position), codes [N, K] -> logits [N, K, codebook_size]."""
        steps = [hidden[:, None]] + [table(codes[:, k])[:, None] for k, table in enumerate(self.code_embeddings)]
        x = self._run(torch.cat(steps, dim=1).to(self.projections.dtype))
        return torch.einsum("nkd,kvd->nkv", x, self.projections) + self.biases

    def sample(self, hidden: torch.Tensor, pick: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """hidden [N, dim] -> codes [N, K]. ``pick(k, logits [N, V]) -> codes [N]`` chooses sub-code k (guidance and
        sampling live with the caller); the head's KV cache holds the earlier steps."""
        caches = [KVCache() for _ in self.layers]
        x, out = hidden[:, None].to(self.projections.dtype), []
        for k in range(self.num_codebooks):
            state = self._run(x, caches)[:, 0]
            code = pick(k, state @ self.projections[k].T + self.biases[k])
            out.append(code)
            if k + 1 < self.num_codebooks:
                x = self.code_embeddings[k](code)[:, None]
        return torch.stack(out, dim=1)


class CompactImageModules(nn.Module):
    """Input adapter + depth head of one compact model."""

    def __init__(self, config: CompactConfig, dim: int, heads: int, layout: TokenLayout, norm_eps: float = 1e-5):
        super().__init__()
        self.config = config.validate()
        k, v = layout.num_codebooks, layout.codebook_size
        self.adapter = InputAdapter(config.input_adapter, dim, k, v, config.code_dim)
        self.head = DepthHead(dim, config.head_heads or heads, config.head_layers, k, v, norm_eps)

    @classmethod
    def for_llm(cls, config: CompactConfig, llm_config: Any, layout: TokenLayout) -> CompactImageModules:
        """Sized to a transformers config (hidden size, heads, RMSNorm eps)."""
        return cls(config, llm_config.hidden_size, llm_config.num_attention_heads, layout,
                   getattr(llm_config, "rms_norm_eps", 1e-5))  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / COMPACT_WEIGHTS
        save_file({name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}, str(path))
        return path

    def load(self, directory: str | Path) -> CompactImageModules:
        from safetensors.torch import load_file

        path = Path(directory) / COMPACT_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"{path}: a compact-layout model keeps its input adapter and depth head here")
        state = load_file(str(path))
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise LayoutError(f"{path} does not fit compact settings {self.config.to_dict()}: {first}") from None
        return self


# ---------------------------------------------------------------------------------------------------------- forward


def embed_inputs(llm: Any, modules: CompactImageModules, layout: TokenLayout, input_ids: torch.Tensor,
                 image_codes: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """ids [B, L] -> embeddings [B, L, dim]; ``image_codes`` [N, K] are the sub-codes of the N ``<img_pos>`` ids in
    row-major order (what `collate` gives)."""
    embeds = llm.get_input_embeddings()(input_ids)
    is_image = input_ids == layout.image_position_token_id
    count = int(is_image.sum())
    if count == 0:
        return embeds
    if image_codes is None or image_codes.shape[0] != count:
        got = "none" if image_codes is None else image_codes.shape[0]
        raise LayoutError(f"{count} <img_pos> tokens but codes for {got} image positions")
    embeds = embeds.clone()
    embeds[is_image] = modules.adapter(image_codes.to(input_ids.device)).to(embeds.dtype)
    return embeds


@dataclass
class CompactLoss:
    loss: torch.Tensor
    text_loss: float  # mean over text targets (nan without any)
    code_loss: float  # mean over sub-codes (nan without learnt image positions)
    text_targets: int
    code_targets: int


def compact_loss(llm: Any, modules: CompactImageModules, layout: TokenLayout, input_ids: torch.Tensor,
                 labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 image_codes: torch.Tensor | None = None) -> CompactLoss:  # fmt: skip
    """Teacher-forced loss of a collated batch (labels: -100 = not learnt; ``<img_pos>`` = a learnt image position)."""
    img = layout.image_position_token_id
    embeds = embed_inputs(llm, modules, layout, input_ids, image_codes)
    out = llm(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # after the backbone's final norm, what the LLM head reads
    targets = labels[:, 1:]
    learnt_image = targets == img  # position t+1 is a learnt image position: the head reads the state at t
    text_targets = targets.masked_fill(learnt_image, IGNORE_INDEX)
    logits = out.logits[:, :-1]
    text_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), text_targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")  # fmt: skip
    n_text = int((text_targets != IGNORE_INDEX).sum())
    n_codes, code_sum = 0, logits.new_zeros(())
    if bool(learnt_image.any()):
        is_image = input_ids == img
        codes = image_codes.to(input_ids.device)[(labels == img)[is_image]]  # the learnt positions', in order
        code_logits = modules.head.teacher_forced(hidden[:, :-1][learnt_image], codes)
        code_sum = F.cross_entropy(code_logits.reshape(-1, code_logits.shape[-1]).float(), codes.reshape(-1),
                                   reduction="sum")  # fmt: skip
        n_codes = codes.numel()
    loss = (text_sum + code_sum) / max(1, n_text + n_codes)
    text_value, code_value = float(text_sum.detach()), float(code_sum.detach())
    return CompactLoss(loss, text_value / n_text if n_text else math.nan, code_value / n_codes if n_codes else math.nan,
                       n_text, n_codes)  # fmt: skip


class CompactCausalLM(nn.Module):
    """LLM + adapter + head as one trainable module (what the optimiser and DeepSpeed see): ``forward(**batch)``
    returns the loss like a transformers model given labels."""

    def __init__(self, llm: Any, modules: CompactImageModules, layout: TokenLayout) -> None:
        super().__init__()
        self.llm = llm
        self.image_modules = modules
        self.layout = layout

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                image_codes: torch.Tensor | None = None) -> CompactLoss:  # fmt: skip
        return compact_loss(self.llm, self.image_modules, self.layout, input_ids, labels, attention_mask, image_codes)
