"""Sampling on the transformers path: a layout-enforcing logits processor, KV-cached decoding, classifier-free
guidance (a second, unconditional KV cache), temperature / top-k / top-p, seeded.

Both layouts share the streams, the guidance and the sampler: the flat layout samples one code token per backbone
step; the compact layout (:mod:`meditok.ar.compact`) takes one backbone step per image position and lets the depth
head sample its 8 sub-codes (with its own KV cache), guiding the head's logits at every sub-step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from meditok.ar.layout import ImageConstraint, TokenLayout


class LayoutLogitsProcessor:
    """transformers-style ``(input_ids, scores) -> scores``: -inf outside the ids the layout allows at this step.

    ``prompt_length`` is the length of the (left-padded) prompt; the step is ``input_ids.shape[1] - prompt_length``.
    Usable with ``model.generate(logits_processor=LogitsProcessorList([...]))``."""

    def __init__(
        self, layout: TokenLayout, grid: tuple[int, int], prompt_length: int, include_header: bool = False
    ) -> None:
        self.constraint = ImageConstraint(layout, grid, include_header)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        if self.constraint.done(step):  # after <eoi>: only end of sequence makes sense; leave the scores alone
            return scores
        lo, hi = self.constraint.allowed(step)
        masked = torch.full_like(scores, float("-inf"))
        masked[:, lo:hi] = scores[:, lo:hi]
        return masked


def sample_from(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:  # fmt: skip
    """logits [B, n] -> indices [B] (greedy at temperature 0)."""
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0 (got {temperature}, {top_p}, {top_k})")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        remove = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def guided(cond: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float | None) -> torch.Tensor:
    """Classifier-free guidance: cond + (scale - 1) * (cond - uncond); the conditional logits without guidance."""
    if uncond is None or cfg_scale is None:
        return cond
    return cond + (cfg_scale - 1.0) * (cond - uncond)


class _Stream:
    """A left-padded batch of prompts with its own KV cache.

    ``embed`` (compact layout): ids [B, S] -> input embeddings, for prompts whose image positions need the input
    adapter; ``hidden`` then holds the last position's final hidden state (what the depth head reads)."""

    def __init__(self, llm: Any, prompts: list[list[int]], pad_id: int,
                 embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:  # fmt: skip
        longest = max(len(p) for p in prompts)
        self.embed = embed
        self.hidden: torch.Tensor | None = None
        self.llm = llm
        ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
        self.mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p) :] = torch.tensor(p)
            self.mask[i, longest - len(p) :] = 1
        self.cache = None
        self.logits = self._forward(ids)

    def _forward(self, ids: torch.Tensor | None, embeds: torch.Tensor | None = None) -> torch.Tensor:
        if embeds is None and self.embed is not None:
            embeds = self.embed(ids)
        new = (ids if embeds is None else embeds).shape[1]
        positions = (self.mask.cumsum(-1) - 1).clamp_min(0)[:, -new:]
        inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
        out = self.llm(**inputs, attention_mask=self.mask, position_ids=positions, past_key_values=self.cache,
                       use_cache=True, output_hidden_states=self.embed is not None)  # fmt: skip
        self.cache = out.past_key_values
        if self.embed is not None:
            self.hidden = out.hidden_states[-1][:, -1]
        return out.logits[:, -1, :]

    def feed(self, tokens: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> None:
        """One more position: token ids [B], or input embeddings [B, dim] (a compact image position)."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.logits = self._forward(None if tokens is None else tokens[:, None],
                                    None if embeds is None else embeds[:, None])  # fmt: skip


@torch.no_grad()
def generate_image_tokens(model: Any, prompts: list[str], grid: tuple[int, int], *, cfg_scale: float | None = None,
                          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                          seed: int | None = None) -> list[list[int]]:  # fmt: skip
    """One image block per prompt ([<boi> <h> <w> 8hw codes <eoi>]), layout enforced at every step."""
    layout, builder = model.layout, model.builder
    cond_prompts = [builder.generation_prompt(p, grid) for p in prompts]
    constraint = ImageConstraint(layout, grid)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    llm = model.llm
    llm.eval()
    cond = _Stream(llm, cond_prompts, builder.pad)
    uncond = (
        _Stream(llm, [builder.generation_prompt("", grid)] * len(prompts), builder.pad)
        if cfg_scale is not None
        else None
    )
    out = []
    for step in range(constraint.length):
        lo, hi = constraint.allowed(step)
        logits = guided(cond.logits[:, lo:hi], None if uncond is None else uncond.logits[:, lo:hi], cfg_scale)
        token = lo + sample_from(logits, temperature, top_k, top_p, generator)
        out.append(token)
        if step + 1 < constraint.length:
            cond.feed(token)
            if uncond is not None:
                uncond.feed(token)
    header = [layout.boi_token_id, layout.height_token(grid[0]), layout.width_token(grid[1])]
    tokens = torch.stack(out, dim=1).tolist()
    return [header + row for row in tokens]


def _compact_embedder(model: Any, image_codes: Any = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids -> embeddings for a compact model's streams: text rows from the LLM, ``<img_pos>`` rows from the adapter
    (``image_codes`` [n, 8]: the prompt's image positions in row-major order; later calls feed text only)."""
    from meditok.ar.compact import embed_inputs

    codes = None if image_codes is None else torch.as_tensor(np.asarray(image_codes), dtype=torch.long)
    return lambda ids: embed_inputs(model.llm, model.compact_modules, model.layout, ids, codes)


@torch.no_grad()
def generate_image_codes(model: Any, prompts: list[str], grid: tuple[int, int], *, cfg_scale: float | None = None,
                         temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         seed: int | None = None) -> list[np.ndarray]:  # fmt: skip
    """A compact model's images: codes int64 [8, h*w] per prompt. One backbone step per image position (both CFG
    streams), then the depth head samples the position's 8 sub-codes for the cond and uncond states together,
    guiding the logits of every sub-step; the chosen sub-codes feed both halves and, through the adapter, both
    streams."""
    layout, builder, modules = model.layout, model.builder, model.compact_modules
    h, w = grid
    layout.height_token(h), layout.width_token(w)  # LayoutError for a grid outside the layout
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    model.llm.eval()
    modules.eval()
    embed = _compact_embedder(model)
    cond = _Stream(model.llm, [builder.generation_prompt(p, grid) for p in prompts], builder.pad, embed)
    uncond = (
        _Stream(model.llm, [builder.generation_prompt("", grid)] * len(prompts), builder.pad, embed)
        if cfg_scale is not None
        else None
    )
    batch = len(prompts)

    def pick(k: int, logits: torch.Tensor) -> torch.Tensor:  # logits [B or 2B, V]: cond rows, then uncond rows
        code = sample_from(guided(logits[:batch], None if uncond is None else logits[batch:], cfg_scale),
                           temperature, top_k, top_p, generator)  # fmt: skip
        return code if uncond is None else torch.cat([code, code])

    out = []
    for position in range(h * w):
        hidden = cond.hidden if uncond is None else torch.cat([cond.hidden, uncond.hidden])
        codes = modules.head.sample(hidden, pick)[:batch]  # [B, 8]
        out.append(codes)
        if position + 1 < h * w:
            embeds = modules.adapter(codes).to(hidden.dtype)
            cond.feed(embeds=embeds)
            if uncond is not None:
                uncond.feed(embeds=embeds)
    return [row.T.contiguous().numpy() for row in torch.stack(out, dim=1).cpu()]  # [B, hw, 8] -> [8, hw] each


@torch.no_grad()
def generate_text(model: Any, prompt: list[int], *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, seed: int | None = None, image_codes: Any = None) -> list[int]:  # fmt: skip
    """Text continuation (only text ids allowed) until </s> or ``max_new_tokens``; returns the new ids without </s>.
    ``image_codes`` [n, 8]: a compact model's sub-codes of the prompt's image positions."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    model.llm.eval()
    embed = _compact_embedder(model, image_codes) if model.layout.compact else None
    stream = _Stream(model.llm, [prompt], model.builder.pad, embed)
    eos, out = model.builder.eos, []
    for _ in range(max_new_tokens):
        token = sample_from(stream.logits[:, : model.layout.text_vocab_size], temperature, top_k, top_p, generator)
        if int(token) == eos:
            break
        out.append(int(token))
        stream.feed(token)
    return out
