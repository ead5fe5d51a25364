"""Per-request image layout in vLLM: the logits processor that makes a request emit exactly one image block.

Asked for with ``vllm_xargs`` (OpenAI API) or ``SamplingParams(extra_args=...)``: ``{"image_height": H,
"image_width": W}`` in pixels (multiples of 16) or ``{"image_size": S}`` for a square. Without these keys it does
nothing, so it is safe as an always-loaded entry point (``vllm.logits_processors``). Step ``s`` of the output may only
be the id range :class:`meditok.ar.layout.ImageConstraint` allows; when the prompt already ends with ``<boi> <h> <w>``
of that grid (the transformers path's generation prompt) the model writes the codes and ``<eoi>``, otherwise it also
writes the header. After ``<eoi>`` the end-of-sequence token is forced, so the request stops on its own: ask for
``max_tokens >= 8*h*w + 5``.

Classifier-free guidance is refused (HTTP 400): see the README section "CFG and vLLM"."""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from meditok.ar.layout import CONFIG_KEY, DEFAULT_MAX_GRID, ImageConstraint, TokenLayout

KEYS = ("image_size", "image_height", "image_width")
CFG_KEYS = ("cfg_scale", "guidance_scale", "cfg")


def requested_size(extra_args: dict[str, Any] | None) -> tuple[int, int] | None:
    """(H, W) in pixels asked for by a request's extra args, None if it asks for no image; ValueError if malformed."""
    extra = extra_args or {}
    for key in CFG_KEYS:
        if key in extra:
            raise ValueError(
                f"vllm_xargs.{key}: classifier-free guidance is not available in vLLM (a logits processor cannot make "
                "a conditional and an unconditional request sample the same token); use the transformers path: "
                "meditok-ar generate-image MODEL --cfg-scale S"
            )
    if not any(k in extra for k in KEYS):
        return None
    if "image_size" in extra:
        height = width = extra["image_size"]
    else:
        height, width = extra.get("image_height"), extra.get("image_width")
    out = []
    for name, value in (("image_height", height), ("image_width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 16:
            raise ValueError(f"vllm_xargs.{name} must be a positive multiple of 16 pixels, got {value!r}")
        if value // 16 > DEFAULT_MAX_GRID:
            raise ValueError(f"vllm_xargs.{name}={value} exceeds {DEFAULT_MAX_GRID * 16} pixels")
        out.append(value)
    return out[0], out[1]


class ImageLayoutLogitsProcessor(AdapterLogitsProcessor):
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        hf_config = vllm_config.model_config.hf_config
        data = getattr(hf_config, CONFIG_KEY, None)
        self.layout = TokenLayout.from_config(dict(data)) if data else None
        eos = getattr(hf_config, "eos_token_id", None)
        self.eos = eos[0] if isinstance(eos, (list, tuple)) else eos

    @classmethod
    def validate_params(cls, params: Any) -> None:
        requested_size(params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: Any) -> Any:
        if self.layout is None:
            return None
        size = requested_size(params.extra_args)
        if size is None:
            return None
        layout, eos = self.layout, self.eos
        grid = (size[0] // 16, size[1] // 16)
        if max(grid) > layout.max_grid:  # validate_params cannot see the layout; never raise inside the engine
            return _force(eos)
        header = [layout.boi_token_id, layout.height_token(grid[0]), layout.width_token(grid[1])]
        state: dict[str, ImageConstraint] = {}

        def apply(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            constraint = state.get("c")
            if constraint is None:
                constraint = state["c"] = ImageConstraint(layout, grid, list(prompt_ids[-3:]) != header)
            step = len(output_ids)
            if constraint.done(step):
                lo, hi = (eos, eos + 1) if eos is not None else (0, logits.shape[-1])
            else:
                lo, hi = constraint.allowed(step)
            masked = torch.full_like(logits, float("-inf"))
            masked[..., lo:hi] = logits[..., lo:hi]
            return masked

        return apply


def _force(token: int | None) -> Any:
    """A request this model cannot serve (grid beyond its max_grid): end it at once with empty output."""

    def apply(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if token is None:
            return logits
        masked = torch.full_like(logits, float("-inf"))
        masked[..., token] = logits[..., token]
        return masked

    return apply
