"""``MedITokARForCausalLM`` for vLLM 0.32: a multimodal wrapper around vLLM's own class of the folder's base (Llama,
whose class also loads Mistral checkpoints, or Qwen2), built as ``language_model`` the way vLLM's multimodal models
build theirs, so ``image_url`` parts become MedITok image blocks (see :mod:`meditok.ar.vllm_plugin.processing`) that
the model embeds with the base's own token embedding table.

The merged folder keeps the base's plain HF weight names (``model.*``, ``lm_head.*``): ``hf_to_vllm_mapper`` moves
them under ``language_model.``, and the base class then loads them as it loads a plain checkpoint: it fuses q/k/v and
gate/up itself, and a tied ``lm_head`` (SmolLM2's) is one parameter with the embedding table, loaded once.

A compact-layout folder (layout version 2) also holds its input adapter and depth head
(:class:`meditok.ar.compact.CompactImageModules`, ``compact_image.safetensors``): the model builds them as a submodule
(``compact_image``) and loads that file as a second weight source (``secondary_weights``, vLLM's mechanism for a head
shipped in its own file); ``embed_multimodal`` then turns each image's sub-codes into its ``<img_pos>`` embeddings
with the adapter, and vLLM's ordinary merge (``SupportsMultiModal.embed_input_ids``) puts them in place. The depth
head is loaded (the file is checked whole) but vLLM's engine cannot run it: vLLM generates one token per step (README,
"Compact models in vLLM"), so the engine serves a compact model's understanding and the images endpoint generates its
images with the transformers path (:mod:`meditok.ar.vllm_plugin.endpoint`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
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
LANGUAGE_MODEL = "language_model"  # the base model's submodule

# base_architecture -> the vLLM class built as language_model. Llama and Mistral share vLLM's Llama class (same HF
# weight names); Qwen2 (q/k/v biases) has its own.
VLLM_CLASS = {
    "LlamaForCausalLM": "LlamaForCausalLM",
    "MistralForCausalLM": "LlamaForCausalLM",
    "Qwen2ForCausalLM": "Qwen2ForCausalLM",
}
SUPPORTED_BASES = set(VLLM_CLASS)


def _base_of(vllm_config: Any) -> str:
    block = getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None) or {}
    base = dict(block).get("base_architecture", "LlamaForCausalLM")
    if base not in SUPPORTED_BASES:
        raise ValueError(
            f"MedITok-AR vLLM plugin: base_architecture {base!r} is not supported (only {sorted(SUPPORTED_BASES)}); "
            "serve this model with the transformers path"
        )
    return base


@MULTIMODAL_REGISTRY.register_processor(
    MedITokMultiModalProcessor, info=MedITokProcessingInfo, dummy_inputs=MedITokDummyInputsBuilder
)
class MedITokARForCausalLM(nn.Module, SupportsMultiModal):
    """The architecture every merged MedITok-AR folder names (one registered name, so folders need no per-base
    architecture string); ``language_model`` is vLLM's class for ``meditok_ar.base_architecture``. Flat image blocks
    arrive as token ids and use the base's embedding table; compact ones as sub-codes that the input adapter
    embeds."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.": f"{LANGUAGE_MODEL}.model.", "lm_head.": f"{LANGUAGE_MODEL}.lm_head."}
    )
    # Read from the class by vLLM's quantization set-up (fused layers) before any instance exists; both bases fuse
    # the same projections.
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__()
        base = _base_of(vllm_config)
        model_config = vllm_config.model_config
        hf_config = model_config.hf_config
        with self._mark_language_model(vllm_config):
            # through vLLM's registry rather than the class itself, so that vLLM still adapts the base to the
            # runner it serves (as it does for its own multimodal models)
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                prefix=maybe_prefix(prefix, LANGUAGE_MODEL),
                architectures=[VLLM_CLASS[base]],
            )
        layout = layout_of(hf_config) if getattr(hf_config, CONFIG_KEY, None) else None
        self.compact_image: CompactImageModules | None = None
        if layout is not None and layout.compact:
            settings = CompactConfig.from_dict(layout.extra.get("compact"))
            self.compact_image = CompactImageModules.for_llm(settings, hf_config, layout)
            from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

            # vLLM's loader reads these two attributes from the model it loads, i.e. this wrapper.
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

    # SupportsMultiModal.embed_input_ids embeds the text through this before it scatters the image rows in
    def get_language_model(self) -> nn.Module:
        return self.language_model

    def embed_multimodal(self, **kwargs: Any) -> list[torch.Tensor]:
        table = self.language_model.model.embed_tokens
        if self.compact_image is not None:
            codes = kwargs.get(CODES_FIELD)
            if codes is None:
                return []
            rows = list(codes) if not isinstance(codes, torch.Tensor) else list(codes.unbind(0))
            adapter, dtype, device = self.compact_image.adapter, table.weight.dtype, table.weight.device
            return [adapter(row.to(device=device, dtype=torch.long)).to(dtype) for row in rows]  # [h*w, dim] each
        ids = kwargs.get(FIELD)
        if ids is None:
            return []
        rows = list(ids) if not isinstance(ids, torch.Tensor) else list(ids.unbind(0))
        return [table(row.to(device=table.weight.device, dtype=torch.long).reshape(-1)) for row in rows]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> Any:
        # the images are already in inputs_embeds (embed_multimodal, then embed_input_ids): kwargs holds nothing used
        return self.language_model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.compact_image is not None:
            own = self.is_unused_checkpoint_weight
            # the compact file's unprefixed names, should the primary source still yield them (the shard filter keeps
            # every file when none is unused)
            weights = ((name, tensor) for name, tensor in weights if not own(name))
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
