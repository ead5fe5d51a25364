"""Sampling on the transformers path: a layout-enforcing logits processor, KV-cached decoding, classifier-free
guidance (a second, unconditional KV cache), temperature / top-k / top-p, seeded."""

from __future__ import annotations

from typing import Any

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


class _Stream:
    """A left-padded batch of prompts with its own KV cache."""

    def __init__(self, llm: Any, prompts: list[list[int]], pad_id: int) -> None:
        longest = max(len(p) for p in prompts)
        self.llm = llm
        ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
        self.mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p) :] = torch.tensor(p)
            self.mask[i, longest - len(p) :] = 1
        self.cache = None
        self.logits = self._forward(ids)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = (self.mask.cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1] :]
        out = self.llm(input_ids=ids, attention_mask=self.mask, position_ids=positions, past_key_values=self.cache,
                       use_cache=True)  # fmt: skip
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def feed(self, tokens: torch.Tensor) -> None:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.logits = self._forward(tokens[:, None])


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
        logits = cond.logits[:, lo:hi]
        if uncond is not None:
            logits = logits + (cfg_scale - 1.0) * (logits - uncond.logits[:, lo:hi])
        token = lo + sample_from(logits, temperature, top_k, top_p, generator)
        out.append(token)
        if step + 1 < constraint.length:
            cond.feed(token)
            if uncond is not None:
                uncond.feed(token)
    header = [layout.boi_token_id, layout.height_token(grid[0]), layout.width_token(grid[1])]
    tokens = torch.stack(out, dim=1).tolist()
    return [header + row for row in tokens]


@torch.no_grad()
def generate_text(model: Any, prompt: list[int], *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, seed: int | None = None) -> list[int]:  # fmt: skip
    """Text continuation (only text ids allowed) until </s> or ``max_new_tokens``; returns the new ids without </s>."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    model.llm.eval()
    stream = _Stream(model.llm, [prompt], model.builder.pad)
    eos, out = model.builder.eos, []
    for _ in range(max_new_tokens):
        token = sample_from(stream.logits[:, : model.layout.text_vocab_size], temperature, top_k, top_p, generator)
        if int(token) == eos:
            break
        out.append(int(token))
        stream.feed(token)
    return out
