"""Training/inference sequences over the token layout: understanding (LLaVA-style conversations with images),
generation (text or modality prompt -> image) and interleaved documents; loss masks and collation.

Chat format: the base model's own chat template when its tokenizer has one (an instruct base: ChatML for SmolLM2,
rendered by ``apply_chat_template`` exactly as vLLM's chat route renders it, with each ``<image>`` replaced by the
image block); otherwise, for bases without one (what `vllm_plugin/chat_template.jinja` produces)::

    <s>USER: <image block>\\n{question} ASSISTANT: {answer}</s>USER: ... ASSISTANT: ...</s>
    <s>USER: {prompt} ASSISTANT:<boi><img_h_h><img_w_w> codes... <eoi></s>          (generation)

With a template, a generation sequence is the rendered user turn (prompt) + the assistant's start, then the image
block and the end-of-turn token; the answer of an understanding turn is learnt with the template's end-of-turn text.

Labels are -100 on everything the model is given (system/user turns, the generation prompt and its size header);
condition dropout replaces the generation prompt by the empty string, which is the unconditional prompt of CFG.

In the compact layout (version 2) an image block holds one ``<img_pos>`` id per position; the sequence carries the
positions' sub-codes beside the ids (``Sequence.image_codes`` [n, 8], in order) and `collate` stacks them. A learnt
``<img_pos>`` label means "learn this position's 8 sub-codes" (the depth head's loss, :mod:`meditok.ar.compact`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meditok.ar.layout import TokenLayout, codes_to_token_ids, position_codes

IGNORE_INDEX = -100
USER = "USER: "
ASSISTANT = " ASSISTANT:"
IMAGE_PLACEHOLDER = "<image>"


@dataclass
class Sequence:
    input_ids: list[int]
    labels: list[int]
    kind: str = "text"
    meta: dict[str, Any] = field(default_factory=dict)
    image_codes: np.ndarray | None = None  # compact layout: [n <img_pos>, 8] sub-codes in sequence order


class SequenceBuilder:
    def __init__(self, layout: TokenLayout, text_tokenizer: Any) -> None:
        self.layout = layout
        self.tok = text_tokenizer
        if text_tokenizer.bos_token_id is None or text_tokenizer.eos_token_id is None:
            raise ValueError("the text tokenizer needs bos and eos tokens")
        self.bos, self.eos = text_tokenizer.bos_token_id, text_tokenizer.eos_token_id
        pad = text_tokenizer.pad_token_id
        self.pad = pad if pad is not None else self.eos
        # An instruct base's own chat format (ChatML, Llama-3, ...) wins; "USER: ... ASSISTANT:" only without one.
        self.templated = bool(getattr(text_tokenizer, "chat_template", None))

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _prompt(self, value: str, images: list[Any]) -> list[int]:
        """One user turn (with ``<image>`` placeholders) up to where the assistant's reply starts."""
        if self.templated:
            return self._user_content(self._render([{"role": "user", "content": value}], True), images)
        return [self.bos] + self.text(USER) + self._user_content(value, images) + self.text(ASSISTANT)

    def text(self, s: str) -> list[int]:
        if not s:
            return []
        ids = self.tok(s, add_special_tokens=False)["input_ids"]
        bad = [t for t in ids if t >= self.layout.text_vocab_size]
        if bad:  # e.g. a literal "<boi>" typed by a user: never let text forge image-layout tokens
            raise ValueError(f"text {s[:60]!r} contains layout tokens {bad[:5]}; use the image arguments instead")
        return ids

    def image(self, codes: Any, grid: tuple[int, int] | None = None) -> list[int]:
        return codes_to_token_ids(codes, self.layout, grid)

    def image_codes(self, images: list[Any]) -> np.ndarray | None:
        """Compact layout: the sub-codes of ``images`` (codes or (codes, grid), in sequence order) as [n, 8] rows,
        one per ``<img_pos>``; None for the flat layout, whose ids hold the codes."""
        if not self.layout.compact:
            return None
        rows = [position_codes(c, self.layout, g) for c, g in map(_codes_grid, images)]
        return np.concatenate(rows) if rows else np.zeros((0, self.layout.num_codebooks), dtype=np.int64)

    def _with_codes(self, sequence: Sequence, images: list[Any]) -> Sequence:
        sequence.image_codes = self.image_codes(images)
        return sequence

    def _user_content(self, value: str, images: list[Any]) -> list[int]:
        parts = value.split(IMAGE_PLACEHOLDER)
        if len(parts) - 1 > len(images):
            raise ValueError(f"{len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders but only {len(images)} images left")
        ids: list[int] = []
        for i, part in enumerate(parts):
            ids += self.text(part)
            if i < len(parts) - 1:
                ids += self.image(*_codes_grid(images.pop(0)))
        return ids

    # ---- understanding
    def conversation(self, conversations: list[dict[str, str]], images: list[Any] = ()) -> Sequence:
        """LLaVA JSON turns ({"from": "human"|"gpt", "value": ...}); ``images``: codes or (codes, grid) in
        placeholder order. Loss on the assistant answers and their </s> only."""
        images = list(images)
        all_images = list(images)  # placeholder order is sequence order; the builders below consume `images`
        n_placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conversations if t["from"] == "human")
        if n_placeholders != len(images):
            raise ValueError(
                f"conversation has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders, got {len(images)} images"
            )
        if self.templated:
            return self._with_codes(self._templated_conversation(conversations, images), all_images)
        ids, labels = [self.bos], [IGNORE_INDEX]
        for turn in conversations:
            if turn["from"] in ("human", "user"):
                part = self.text(USER) + self._user_content(turn["value"], images) + self.text(ASSISTANT)
                ids += part
                labels += [IGNORE_INDEX] * len(part)
            elif turn["from"] in ("gpt", "assistant"):
                part = self.text(" " + turn["value"].strip()) + [self.eos]
                ids += part
                labels += part
            else:
                raise ValueError(f"unknown conversation role {turn['from']!r}")
        return self._with_codes(Sequence(ids, labels, "understanding"), all_images)

    def _templated_conversation(self, conversations: list[dict[str, str]], images: list[Any]) -> Sequence:
        # Render the conversation turn by turn with the model's template: each new piece of text is what that turn
        # adds (the same text vLLM renders), user pieces (with the generation prompt) unlearnt, answers learnt.
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
        messages: list[dict[str, str]] = []
        ids: list[int] = []
        labels: list[int] = []
        rendered = ""
        for turn in conversations:
            if turn["from"] not in roles:
                raise ValueError(f"unknown conversation role {turn['from']!r}")
            role = roles[turn["from"]]
            value = turn["value"] if role == "user" else turn["value"].strip()
            messages.append({"role": role, "content": value})
            text = self._render(messages, add_generation_prompt=role == "user")
            if not text.startswith(rendered):
                raise ValueError("the chat template renders earlier turns differently as the conversation grows")
            piece, rendered = text[len(rendered) :], text
            if role == "user":
                part = self._user_content(piece, images)
                labels += [IGNORE_INDEX] * len(part)
            else:
                part = self.text(piece)
                labels += part
            ids += part
        return Sequence(ids, labels, "understanding")

    def question_prompt(self, codes: Any, question: str, grid: tuple[int, int] | None = None) -> list[int]:
        value = question if IMAGE_PLACEHOLDER in question else IMAGE_PLACEHOLDER + "\n" + question
        return self._prompt(value, [(codes, grid)])

    def text_prompt(self, question: str) -> list[int]:
        """A text-only user turn, up to where the assistant's reply starts."""
        return self._prompt(question, [])

    # ---- generation
    def generation_prompt(self, prompt: str, grid: tuple[int, int]) -> list[int]:
        h, w = grid
        header = [self.layout.boi_token_id, self.layout.height_token(h), self.layout.width_token(w)]
        if self.templated:
            return self.text(self._render([{"role": "user", "content": prompt.strip()}], True)) + header
        return [self.bos] + self.text(USER + prompt.strip()) + self.text(ASSISTANT) + header

    def generation(
        self, prompt: str, codes: Any, grid: tuple[int, int] | None = None, drop_condition: bool = False
    ) -> Sequence:
        block = self.image(codes, grid)
        h = block[1] - self.layout.height_token_base + 1
        w = block[2] - self.layout.width_token_base + 1
        head = self.generation_prompt("" if drop_condition else prompt, (h, w))
        body = block[3:] + [self.eos]
        sequence = Sequence(head + body, [IGNORE_INDEX] * len(head) + body, "generation", {"grid": (h, w)})
        return self._with_codes(sequence, [(codes, grid)])

    # ---- interleaved documents
    def document(self, segments: list[Any]) -> Sequence:
        """Report text with images: segments are str or codes / (codes, grid). Loss on everything but <s>."""
        ids = [self.bos]
        for seg in segments:
            ids += self.text(seg) if isinstance(seg, str) else self.image(*_codes_grid(seg))
        ids.append(self.eos)
        images = [seg for seg in segments if not isinstance(seg, str)]
        return self._with_codes(Sequence(ids, [IGNORE_INDEX] + ids[1:], "interleaved"), images)


def _codes_grid(item: Any) -> tuple[Any, tuple[int, int] | None]:
    if isinstance(item, tuple) and len(item) == 2:
        return item[0], (tuple(item[1]) if item[1] is not None else None)
    return item, None


def collate(sequences: list[Sequence], pad_id: int, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, labels (-100 on padding), attention_mask; with compact-layout sequences also
    image_codes [n, 8] (the <img_pos> positions' sub-codes, row-major over the batch like boolean indexing)."""
    if not sequences:
        raise ValueError("empty batch")
    longest = max(len(s.input_ids) for s in sequences)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a {sequences[0].kind} sequence has {longest} tokens > max_length {max_length} "
                         f"(truncating would cut an image block); raise max_length or use smaller images")  # fmt: skip
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        mask[i, :n] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if any(s.image_codes is not None for s in sequences):  # the model checks that there is one row per <img_pos>
        rows = [torch.as_tensor(s.image_codes, dtype=torch.long) for s in sequences if s.image_codes is not None]
        batch["image_codes"] = torch.cat(rows) if rows else torch.zeros((0, 8), dtype=torch.long)
    return batch


class RecordSampler:
    """Turns records into sequences each time they are drawn (fresh condition dropout per draw).

    Records: {"type": "generation", "prompt", "codes", "grid"} | {"type": "understanding", "conversations",
    "images": [(codes, grid)]} | {"type": "interleaved", "segments": [...]}."""

    def __init__(self, builder: SequenceBuilder, records: list[dict[str, Any]], cond_dropout: float = 0.1,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        if not records:
            raise ValueError("no training records")
        self.builder, self.cond_dropout = builder, cond_dropout
        self.records = records[rank::world_size] or records
        self.rng = random.Random(seed + 1000 * rank)
        self.position = 0
        # Each pass visits every record once in a fresh seeded order: records files are often grouped (by task,
        # by modality), and a fixed order would train on one group at a time.
        self.order: list[int] = []

    def build(self, record: dict[str, Any]) -> Sequence:
        kind = record["type"]
        if kind == "generation":
            drop = self.rng.random() < self.cond_dropout
            return self.builder.generation(record["prompt"], record["codes"], record.get("grid"), drop_condition=drop)
        if kind == "understanding":
            return self.builder.conversation(record["conversations"], record.get("images", []))
        if kind == "interleaved":
            return self.builder.document(record["segments"])
        raise ValueError(f"unknown record type {kind!r}")

    def next_batch(self, batch_size: int) -> list[Sequence]:
        out = []
        for _ in range(batch_size):
            if self.position % len(self.records) == 0:
                self.order = list(range(len(self.records)))
                self.rng.shuffle(self.order)
            out.append(self.build(self.records[self.order[self.position % len(self.records)]]))
            self.position += 1
        return out
