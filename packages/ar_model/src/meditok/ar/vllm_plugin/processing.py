"""vLLM multimodal processor: an image in a chat / prompt becomes its MedITok image block.

The MedITok tokenizer (weights from ``config.json`` ``meditok_ar.image_tokenizer``, a path relative to the model folder)
runs in the API-server process, once per image; the ``<image>`` placeholder token is replaced by
``<boi> <img_h_h> <img_w_w> codes... <eoi>`` (real vocabulary ids, so ``prompt_token_ids`` and prefix caching mean
what they say) and the model embeds those ids with its own embedding table.

A compact-layout folder (layout version 2) gets ``<boi> <img_h_h> <img_w_w> <img_pos>×hw <eoi>`` instead: the prompt
ids hold one ``<img_pos>`` per image position (what ``builder.question_prompt`` builds), the processor hands the
image's sub-codes [h*w, 8] to the model as this item's data, and only the ``<img_pos>`` positions take multimodal
embeddings (``PromptUpdateDetails.select_token_id``): the model's input adapter makes them from the codes
(:mod:`meditok.ar.vllm_plugin.model`), the other four ids use the text table. vLLM keys prefix caching and its encoder
cache on the image's hash, so two images of one size (equal ids) never share cached states.

Images go through the image-input contract with the settings the model was trained with (``config.json``
``meditok_ar.image_input``, copied from the image tokenizer; the reference's LANCZOS squash to 256 for older folders):
DICOM, NIfTI and 16-bit images are read by the plugin's loader (`media.py`) exactly as `meditok`'s CLI and
`MedITokAR.encode_image` read a file (HU windows, percentiles, no 8-bit round trip), so the prompt ids equal the
transformers path's. The side can be overridden with ``--image-size`` /
``MEDITOK_VLLM_IMAGE_SIZE`` (or the older ``meditok_ar.serve_image_size``); the resize policy must give a fixed size
(squash, crop, pad), since vLLM reserves a fixed number of prompt tokens per image (2052 at 256x256)."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meditok.ar.layout import CONFIG_KEY, TokenLayout, codes_to_token_ids, image_tokenizer_path, position_codes

IMAGE_SIZE_ENV = "MEDITOK_VLLM_IMAGE_SIZE"
PLACEHOLDER = "<image>"
FIELD = "image_token_ids"  # flat layout: an image's whole block of ids
CODES_FIELD = "image_codes"  # compact layout: an image's sub-codes, int64 [h*w, 8] (row i: the i-th <img_pos>)

_TOKENIZERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def layout_of(hf_config: Any) -> TokenLayout:
    data = getattr(hf_config, CONFIG_KEY, None)
    if data is None:
        raise ValueError(f"config.json has no '{CONFIG_KEY}' block: not a MedITok-AR model folder")
    return TokenLayout.from_config(dict(data))


def image_input_of(hf_config: Any, model_dir: str) -> Any:
    """The served model's `ImageInput` (recorded settings, then the size overrides); fixed-size policies only.

    Folders made before the settings were recorded use their image tokenizer's, as `MedITokAR.image_input` does."""
    from meditok.tokenizer.api import read_image_input
    from meditok.tokenizer.preprocessing import ImageInput

    block = dict(getattr(hf_config, CONFIG_KEY, {}) or {})
    if block.get("image_input") is not None:
        spec = ImageInput.from_dict(block["image_input"], where=f"config.json {CONFIG_KEY}.image_input")
    else:
        spec = read_image_input(image_tokenizer_path(model_dir, layout_of(hf_config)))
    override = os.environ.get(IMAGE_SIZE_ENV) or block.get("serve_image_size")
    if override:
        spec = spec.with_overrides(size=int(override))
    if spec.output_size is None:
        raise ValueError(
            f"serving needs a fixed image size: {CONFIG_KEY}.image_input.resize is {spec.resize!r}; use squash, crop or "
            "pad (vLLM reserves a fixed number of prompt tokens per image)"
        )
    return spec


def load_image_tokenizer(path: Path) -> Any:
    """One MedITok per path and process (the processor is called from several threads)."""
    key = str(path.resolve())
    with _LOCK:
        if key not in _TOKENIZERS:
            from meditok.tokenizer import MedITok

            _TOKENIZERS[key] = MedITok.from_pretrained(key).eval()
        return _TOKENIZERS[key]


def image_to_codes(image: Any, tokenizer: Any, spec: Any) -> tuple[Any, tuple[int, int]]:
    """One request image -> (codes int64 [8, h*w], (h, w)): what `MedITokAR.encode_image` gives for the same file."""
    import torch

    from meditok.tokenizer.preprocessing import preprocess

    # Medical files arrive as the plugin's loader made them (`media.py`: the contract's [0, 1] pixels, 32-bit float
    # where deeper than 8 bits); ordinary 8-bit pictures as vLLM's loader decoded them (RGB, equal to the file door).
    x = preprocess(getattr(image, "media", image), spec)
    with torch.no_grad():
        codes = tokenizer.encode(x.to(tokenizer.device))[0].cpu()
    return codes, (x.shape[-2] // 16, x.shape[-1] // 16)


def image_to_token_ids(image: Any, tokenizer: Any, layout: TokenLayout, spec: Any) -> list[int]:
    """One request image -> its full image block (the ids the transformers path builds from the same file)."""
    codes, grid = image_to_codes(image, tokenizer, spec)
    return codes_to_token_ids(codes, layout, grid)


def _build() -> tuple[type, type, type]:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import BatchFeature
    from vllm.multimodal.inputs import MultiModalFieldConfig
    from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataParser
    from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo
    from vllm.multimodal.processing.processor import PromptReplacement, PromptUpdateDetails

    class MedITokDataParser(MultiModalDataParser):
        """vLLM's parser makes every picture 8-bit RGB; the 32-bit float ("F") pictures the plugin's loader makes of
        DICOM / NIfTI / 16-bit files must reach the processor as they are (everything else is vLLM's own parsing)."""

        def _parse_image_data(self, data: Any) -> Any:
            items = data if isinstance(data, (list, tuple)) else [data]
            if items and all(isinstance(getattr(i, "media", i), Image.Image) for i in items):
                if any(getattr(i, "media", i).mode == "F" for i in items):
                    return ImageProcessorItems(list(items))
            return super()._parse_image_data(data)

    class MedITokProcessingInfo(BaseProcessingInfo):
        def get_data_parser(self) -> MultiModalDataParser:
            return MedITokDataParser(
                expected_hidden_size=self._get_expected_hidden_size(),
                allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
            )

        def get_supported_mm_limits(self) -> Mapping[str, int | None]:
            return {"image": None}

        def layout(self) -> TokenLayout:
            from meditok.ar.vllm_plugin.logits import note_served_layout

            layout = layout_of(self.get_hf_config())
            note_served_layout(layout)  # lets validate_params (same API-server process) refuse grids beyond max_grid
            return layout

        def image_input(self) -> Any:
            return image_input_of(self.get_hf_config(), self.model_id)

        def grid_shape(self) -> tuple[int, int]:
            height, width = self.image_input().output_size
            return height // 16, width // 16

        def block_length(self) -> int:
            return self.layout().block_length(self.grid_shape())

        def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
            return {"image": self.block_length()}

    class MedITokDummyInputsBuilder(BaseDummyInputsBuilder[MedITokProcessingInfo]):
        def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
            return PLACEHOLDER * mm_counts.get("image", 0)

        def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> Any:
            height, width = self.info.image_input().output_size
            return {"image": self._get_dummy_images(width=width, height=height, num_images=mm_counts.get("image", 0))}

    class MedITokMultiModalProcessor(BaseMultiModalProcessor[MedITokProcessingInfo]):
        def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
            images = hf_data.get("images") or []
            if not isinstance(images, (list, tuple)):
                images = [images]
            layout = self.info.layout()
            spec = self.info.image_input()
            tokenizer = load_image_tokenizer(image_tokenizer_path(self.info.model_id, layout))
            if layout.compact:
                rows = []
                for image in images:
                    codes, grid = image_to_codes(image, tokenizer, spec)
                    rows.append(position_codes(codes, layout, grid))
                h, w = self.info.grid_shape()
                codes = np.stack(rows) if rows else np.zeros((0, h * w, layout.num_codebooks), np.int64)
                return BatchFeature({CODES_FIELD: torch.from_numpy(codes)})
            rows = [image_to_token_ids(image, tokenizer, layout, spec) for image in images]
            return BatchFeature({FIELD: torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)})

        def _get_mm_fields_config(
            self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
        ) -> Mapping[str, Any]:
            return {(CODES_FIELD if self.info.layout().compact else FIELD): MultiModalFieldConfig.batched("image")}

        def _get_prompt_updates(
            self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: Any
        ) -> Sequence[Any]:
            layout = self.info.layout()
            length = self.info.block_length()
            grid = self.info.grid_shape()

            def replacement(item_idx: int) -> Any:
                items = out_mm_kwargs.get("image", []) if out_mm_kwargs is not None else []
                if layout.compact:
                    # the block depends on the grid only; its <img_pos> rows are embedded from this item's codes
                    ids = codes_to_token_ids(
                        np.zeros((layout.num_codebooks, grid[0] * grid[1]), np.int64), layout, grid
                    )
                    return PromptUpdateDetails.select_token_id(ids, layout.image_position_token_id)
                if item_idx < len(items):
                    ids = items[item_idx][FIELD].data.tolist()
                else:  # no data (profiling paths): right length, any ids
                    ids = [layout.boi_token_id] + [layout.image_token_base] * (length - 2) + [layout.eoi_token_id]
                return PromptUpdateDetails.from_seq(ids)

            return [PromptReplacement(modality="image", target=[layout.image_token_id], replacement=replacement)]

    return MedITokMultiModalProcessor, MedITokProcessingInfo, MedITokDummyInputsBuilder


MedITokMultiModalProcessor, MedITokProcessingInfo, MedITokDummyInputsBuilder = _build()
