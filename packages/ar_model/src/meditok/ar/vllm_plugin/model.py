"""``MedITokARForCausalLM`` for vLLM 0.32: vLLM's class of the folder's base (Llama, whose class also loads Mistral
checkpoints, or Qwen2; the extension keeps the HF weight names) plus the multimodal interface, so ``image_url`` parts become MedITok image blocks
(see :mod:`meditok.ar.vllm_plugin.processing`) that the model embeds with its own token embedding table.

A compact-layout folder (layout version 2) also holds its input adapter and depth head
(:class:`meditok.ar.compact.CompactImageModules`, ``compact_image.safetensors``): the model builds them as a submodule
(``compact_image``) and loads that file as a second weight source (``secondary_weights``, vLLM's mechanism for a head
shipped in its own file); ``embed_multimodal`` then turns each image's sub-codes into its ``<img_pos>`` embeddings
with the adapter, and vLLM's ordinary merge (``SupportsMultiModal.embed_input_ids``) puts them in place. The depth
head is loaded (the file is checked whole) but vLLM cannot run it: vLLM generates one token per step (README,
"Compact models in vLLM"), so a compact model is served for understanding only."""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.multimodal import MULTIMODAL_REGISTRY

from meditok.ar.compact import COMPACT_WEIGHTS, CompactConfig, CompactImageModules
from meditok.ar.layout import CONFIG_KEY
from meditok.ar.vllm_plugin.processing import (
    CODES_FIELD,
    FIELD,
    PLACEHOLDER,
    MedITokDummyInputsBuilder,
    MedITokMultiModalProcessor,
    MedITokProcessingInfo,
    layout_of,
)

COMPACT_MODULE = "compact_image"  # the compact modules' submodule, and the prefix of their weights

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
    """The multimodal part shared by every base: flat image blocks arrive as token ids and use the text embedding
    table; compact ones as sub-codes that the input adapter embeds."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        model_config = vllm_config.model_config
        hf_config = model_config.hf_config
        layout = layout_of(hf_config) if getattr(hf_config, CONFIG_KEY, None) else None
        self.compact_image: CompactImageModules | None = None
        if layout is not None and layout.compact:
            settings = CompactConfig.from_dict(layout.extra.get("compact"))
            self.compact_image = CompactImageModules.for_llm(settings, hf_config, layout)
            from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

            self.secondary_weights = [
                DefaultModelLoader.Source(
                    model_config.model,
                    model_config.revision,
                    prefix=f"{COMPACT_MODULE}.",
                    allow_patterns_overrides=[COMPACT_WEIGHTS],
                )
            ]
            # vLLM's primary source reads every *.safetensors of an unsharded folder: skip the compact file there
            # (it arrives, prefixed, through the secondary source).
            own = frozenset(self.compact_image.state_dict())
            self.is_unused_checkpoint_weight = own.__contains__

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return PLACEHOLDER
        raise ValueError(f"MedITok-AR accepts images only, not {modality!r}")

    def get_language_model(self) -> torch.nn.Module:
        return self.model

    def embed_multimodal(self, **kwargs: Any) -> list[torch.Tensor]:
        if self.compact_image is not None:
            codes = kwargs.get(CODES_FIELD)
            if codes is None:
                return []
            rows = list(codes) if not isinstance(codes, torch.Tensor) else list(codes.unbind(0))
            adapter, dtype = self.compact_image.adapter, self.model.embed_tokens.weight.dtype
            device = self.model.embed_tokens.weight.device
            return [adapter(row.to(device=device, dtype=torch.long)).to(dtype) for row in rows]  # [h*w, dim] each
        ids = kwargs.get(FIELD)
        if ids is None:
            return []
        rows = list(ids) if not isinstance(ids, torch.Tensor) else list(ids.unbind(0))
        embed = self.model.embed_tokens
        return [embed(row.to(device=embed.weight.device, dtype=torch.long).reshape(-1)) for row in rows]

    def load_weights(self, weights: Any) -> set[str]:
        if self.compact_image is None:
            return super().load_weights(weights)
        own = self.is_unused_checkpoint_weight
        # the compact file's unprefixed names, should the primary source still yield them (the shard filter keeps
        # every file when none is unused)
        return super().load_weights((name, tensor) for name, tensor in weights if not own(name))

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
