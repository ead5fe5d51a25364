"""``MedITokARForCausalLM`` for vLLM 0.32: vLLM's Llama class (the extension keeps the HF weight names; Mistral
checkpoints load through it too) plus the multimodal interface, so ``image_url`` parts become MedITok image blocks
(see :mod:`meditok.ar.vllm_plugin.processing`) that the model embeds with its own token embedding table."""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.multimodal import MULTIMODAL_REGISTRY

from meditok.ar.layout import CONFIG_KEY
from meditok.ar.vllm_plugin.processing import (
    FIELD,
    PLACEHOLDER,
    MedITokDummyInputsBuilder,
    MedITokMultiModalProcessor,
    MedITokProcessingInfo,
)

# Same HF weight names and the same vLLM implementation (vLLM's Llama class also serves Mistral checkpoints).
# Qwen2 (q/k/v biases) needs its own vLLM class: not wired yet.
SUPPORTED_BASES = {"LlamaForCausalLM", "MistralForCausalLM"}


@MULTIMODAL_REGISTRY.register_processor(
    MedITokMultiModalProcessor, info=MedITokProcessingInfo, dummy_inputs=MedITokDummyInputsBuilder
)
class MedITokARForCausalLM(LlamaForCausalLM, SupportsMultiModal):
    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        block = getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None) or {}
        base = dict(block).get("base_architecture", "LlamaForCausalLM")
        if base not in SUPPORTED_BASES:
            raise ValueError(
                f"MedITok-AR vLLM plugin: base_architecture {base!r} is not supported yet (only {sorted(SUPPORTED_BASES)}); "
                "serve this model with the transformers path"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)

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
        # LlamaForCausalLM's one-argument version comes first in the MRO; the multimodal one scatters the image rows.
        return SupportsMultiModal.embed_input_ids(self, input_ids, multimodal_embeddings, is_multimodal=is_multimodal)
