"""The chat template a saved MedITok-AR folder carries, so that any server (plain ``vllm serve``) renders chat
requests exactly as :class:`meditok.ar.sequences.SequenceBuilder` does.

A base with its own template (an instruct model: ChatML for SmolLM2) keeps it; the builder renders with it. A base
without one gets the legacy ``<s>USER: ... ASSISTANT:`` format, written into the saved ``tokenizer_config.json``
(``vllm_plugin/chat_template.jinja``, the same text). When such a folder is loaded again its tokenizer *has* a
template, but it is ours: :func:`sequence_builder` keeps the builder on its legacy path (text tokenised piece by
piece, as every model trained before templates were written saw it) instead of treating it as a base's template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meditok.ar.layout import TokenLayout

LEGACY_TEMPLATE_FILE = Path(__file__).parent / "vllm_plugin" / "chat_template.jinja"


def legacy_chat_template() -> str:
    return LEGACY_TEMPLATE_FILE.read_text()


def is_legacy_template(template: Any) -> bool:
    return isinstance(template, str) and template.strip() == legacy_chat_template().strip()


def sequence_builder(layout: TokenLayout, text_tokenizer: Any) -> Any:
    """The :class:`SequenceBuilder` for a tokenizer: the base's own template, or the legacy format."""
    from meditok.ar.sequences import SequenceBuilder

    builder = SequenceBuilder(layout, text_tokenizer)
    if is_legacy_template(getattr(text_tokenizer, "chat_template", None)):
        builder.templated = False
    return builder


def write_chat_template(directory: str | Path, text_tokenizer: Any) -> str:
    """After ``text_tokenizer.save_pretrained(directory)``: give the folder the legacy template if the tokenizer has
    none (the saved files only; the tokenizer object is unchanged). Returns the template the folder now serves."""
    template = getattr(text_tokenizer, "chat_template", None)
    if template:
        return template
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config["chat_template"] = legacy_chat_template()
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return config["chat_template"]
