"""``MedITokARForCausalLM`` for vLLM 0.32: vLLM's class of the folder's base (Llama, whose class also loads Mistral
checkpoints, or Qwen2; the extension keeps the HF weight names) plus the multimodal interface, so ``image_url`` parts become MedITok image blocks
(see :mod:`meditok.ar.vllm_plugin.processing`) that the model embeds with its own token embedding table."""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.multimodal import MULTIMODAL_REGISTRY

from meditok.ar.layout import CONFIG_KEY
from meditok.ar.vllm_plugin.processing import (
    FIELD,
    PLACEHOLDER,
    MedITokDummyInputsBuilder,
    MedITokMultiModalProcessor,
    MedITokProcessingInfo,
)

# Llama and Mistral share vLLM's Llama class (same HF weight names); Qwen2 (q/k/v biases) has its own.
LLAMA_BASES = {"LlamaForCausalLM", "MistralForCausalLM"}
SUPPORTED_BASES = LLAMA_BASES | {"Qwen2ForCausalLM"}


def _base_of(vllm_config: Any) -> str:
    block = getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None) or {}
    base = dict(block).get("base_architecture", "LlamaForCausalLM")
    if base not in SUPPORTED_BASES:
        raise ValueError(
            f"MedITok-AR vLLM plugin: base_architecture {base!r} is not supported (only {sorted(SUPPORTED_BASES)}); "
            "serve this model with the transformers path"
        )
    return base


class _ImageBlocks:
    """The multimodal part shared by every base: image blocks arrive as token ids and use the text embedding table."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return PLACEHOLDER
        raise ValueError(f"MedITok-AR accepts images only, not {modality!r}")

    def get_language_model(self) -> torch.nn.Module:
        return self.model

    def embed_multimodal(self, **kwargs: Any) -> list[torch.Tensor]:
        ids = kwargs.get(FIELD)
        if ids is None:
            return []
        rows = list(ids) if not isinstance(ids, torch.Tensor) else list(ids.unbind(0))
        embed = self.model.embed_tokens
        return [embed(row.to(device=embed.weight.device, dtype=torch.long).reshape(-1)) for row in rows]

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings: Any = None, *,
                        is_multimodal: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        # the bases' one-argument version would come first otherwise; the multimodal one scatters the image rows
        return SupportsMultiModal.embed_input_ids(self, input_ids, multimodal_embeddings, is_multimodal=is_multimodal)


@MULTIMODAL_REGISTRY.register_processor(
    MedITokMultiModalProcessor, info=MedITokProcessingInfo, dummy_inputs=MedITokDummyInputsBuilder
)
class MedITokARQwen2ForCausalLM(_ImageBlocks, Qwen2ForCausalLM, SupportsMultiModal):
    """What :class:`MedITokARForCausalLM` builds for a Qwen2 base."""


@MULTIMODAL_REGISTRY.register_processor(
    MedITokMultiModalProcessor, info=MedITokProcessingInfo, dummy_inputs=MedITokDummyInputsBuilder
)
class MedITokARForCausalLM(_ImageBlocks, LlamaForCausalLM, SupportsMultiModal):
    """The architecture every merged MedITok-AR folder names; vLLM's class for ``meditok_ar.base_architecture`` does
    the work (one registered name, so folders need no per-base architecture string)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        if cls is MedITokARForCausalLM and vllm_config is not None and _base_of(vllm_config) not in LLAMA_BASES:
            return MedITokARQwen2ForCausalLM(*args, **kwargs)  # not an instance of cls: Python skips cls.__init__
        return super().__new__(cls)

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        _base_of(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
