"""Per-request image layout and classifier-free guidance in vLLM: two logits processors driven by ``vllm_xargs``.

**Layout** (:class:`ImageLayoutLogitsProcessor`). Asked for with ``vllm_xargs`` (OpenAI API) or
``SamplingParams(extra_args=...)``: ``{"image_height": H, "image_width": W}`` in pixels (multiples of 16) or
``{"image_size": S}`` for a square. Without these keys a MedITok model's request is answered in text (the image-layout
ids are masked, as in the transformers path's ``answer``); other models' requests are untouched, so it is safe as an
always-loaded entry point (``vllm.logits_processors``). Step ``s`` of the output may only be the id range :class:`meditok.ar.layout.ImageConstraint`
allows; when the prompt already ends with ``<boi> <h> <w>`` of that grid (the transformers path's generation prompt)
the model writes the codes and ``<eoi>``, otherwise it also writes the header. After ``<eoi>`` the end-of-sequence
token is forced, so the request stops on its own: ask for ``max_tokens >= 8*h*w + 5``.

**Guidance** (:class:`GuidancePairLogitsProcessor`). CFG needs the unconditional logits *after the same tokens* the
conditional branch sampled. Here the two branches are two requests of one *pair*: both carry the image size plus
``{"cfg_scale": s, "cfg_pair": KEY}`` (and optionally ``"cfg_role": "cond" | "uncond"``; without it the shorter prompt
is the unconditional one, which holds for :meth:`SequenceBuilder.generation_prompt` with an empty text), the same
seed (or temperature 0) and the same sampling settings. Whenever both rows are in the batch at the same output length
the processor writes ``c + (s-1)(c-u)`` (the transformers path's formula), masked by the layout, into *both* rows;
vLLM's CPU and GPU samplers draw per request from its own seeded generator, so two rows with equal logits and equal
seeds sample the same token and the pair stays in lockstep. Nothing in vLLM 0.32 guarantees that the scheduler admits
both requests in the same step or never preempts one of them, so lockstep is *checked*, not assumed: a member that is
alone in a step after it has produced tokens, or a pair whose outputs differ in length or last token, is ended at once
(end-of-sequence forced on both), which leaves a short output the caller sees and retries (the images endpoint and
``meditok-ar generate-image --server --cfg-scale`` do). A guided image is thus either exactly the guided sequence or
visibly incomplete, never silently unguided. Send a pair in one call so it reaches the engine together: one
``/v1/completions`` request whose ``prompt`` is ``[cond_ids, uncond_ids]`` (both get the same ``vllm_xargs`` and seed)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor, BatchUpdate, LogitsProcessor, MoveDirectionality
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as RunnerV2LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcRequestState

from meditok.ar.layout import CONFIG_KEY, DEFAULT_MAX_GRID, NUM_CODEBOOKS, PATCH_SIZE, ImageConstraint, TokenLayout

logger = logging.getLogger(__name__)

KEYS = ("image_size", "image_height", "image_width")
CFG_SCALE, CFG_PAIR, CFG_ROLE = "cfg_scale", "cfg_pair", "cfg_role"
ROLES = ("cond", "uncond")


_served_max_grid: int | None = None
_served_num_codebooks: int | None = None
_served_compact = False
COMPACT_GENERATION = (
    "this model uses the compact image layout (layout version 2), whose image positions need 8 sub-codes from its "
    "depth head per step, and vLLM 0.32 samples one token per request and step: it cannot generate images here; use "
    "the transformers path (MedITokAR.generate_image, or meditok-ar generate-image without --server)"
)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
SEED_RANGE = (-(2**63), 2**63 - 1)  # what vLLM's OpenAI protocol accepts and msgspec carries to the engine
TOP_K_MAX = 2**31 - 1  # vLLM keeps top_k in an int32 tensor (capped to the vocabulary there)
LOGIT_BOUND = 1e30  # allowed logits are clamped to +-LOGIT_BOUND: softmax of a row holding inf or NaN is all NaN


def note_served_layout(layout: TokenLayout) -> None:
    """Record the served model's ``max_grid`` in this process. vLLM builds the multimodal processor in the API-server
    process at start-up, before any request, so the logits processors' ``validate_params`` (which vLLM calls there
    without the model config) can answer HTTP 400 for a grid the model cannot write."""
    global _served_max_grid, _served_num_codebooks, _served_compact
    _served_max_grid, _served_num_codebooks, _served_compact = layout.max_grid, layout.num_codebooks, layout.compact


def requested_size(extra_args: dict[str, Any] | None) -> tuple[int, int] | None:
    """(H, W) in pixels asked for by a request's extra args, None if it asks for no image; ValueError if malformed."""
    extra = extra_args or {}
    if not any(k in extra for k in KEYS):
        if any(k in extra for k in (CFG_SCALE, CFG_PAIR, CFG_ROLE)):
            raise ValueError(
                "vllm_xargs.cfg_scale applies to image generation: also give image_size or image_height/width"
            )
        return None
    if "image_size" in extra:
        height = width = extra["image_size"]
    else:
        height, width = extra.get("image_height"), extra.get("image_width")
    out = []
    for name, value in (("image_height", height), ("image_width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % PATCH_SIZE:
            raise ValueError(f"vllm_xargs.{name} must be a positive multiple of {PATCH_SIZE} pixels, got {value!r}")
        limit = _served_max_grid or DEFAULT_MAX_GRID
        if value // PATCH_SIZE > limit:
            raise ValueError(f"vllm_xargs.{name}={value} exceeds this model's {limit * PATCH_SIZE} pixels")
        out.append(value)
    return out[0], out[1]


def _finite_float32(value: int | float) -> bool:
    """Finite in Python *and* in float32, the logits' dtype (1e39 is finite in Python, inf in float32)."""
    try:
        return math.isfinite(value) and abs(float(value)) <= FLOAT32_MAX
    except OverflowError:  # an int too large for a float
        return False


def _brief(value: int | float) -> str:
    """A number for a message: exact up to 30 digits, else in e-notation (no OverflowError for huge ints)."""
    text = str(value) if abs(value) < 10**30 else None
    if text is None:
        try:
            text = f"{value:.6g}"
        except OverflowError:
            text = "a number beyond float range"
    return text


def image_tokens_needed(size: tuple[int, int], num_codebooks: int) -> int:
    """Output tokens an image of ``size`` pixels needs at least: its codes and ``<eoi>`` (prompt ends with the header)."""
    return num_codebooks * (size[0] // PATCH_SIZE) * (size[1] // PATCH_SIZE) + 1


def check_sampling(params: Any) -> None:
    """Sampling settings the engine cannot carry (HTTP 400 at admission, not a 500 from deep inside vLLM): a seed or
    top_k beyond 64-bit integers (vLLM's messages between processes), and an image request whose ``max_tokens`` (after
    vLLM capped it to the context ``--max-model-len`` leaves) cannot hold the image."""
    seed = getattr(params, "seed", None)
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ValueError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {_brief(seed)}")
    top_k = getattr(params, "top_k", 0)
    if top_k is not None and not -1 <= top_k <= TOP_K_MAX:
        raise ValueError(f"top_k must be -1 or 0 (disabled) or in [1, {TOP_K_MAX}], got {_brief(top_k)}")
    size = requested_size(getattr(params, "extra_args", None))
    max_tokens = getattr(params, "max_tokens", None)
    if size is not None and max_tokens is not None:
        needed = image_tokens_needed(size, _served_num_codebooks or NUM_CODEBOOKS)
        if max_tokens < needed:
            raise ValueError(
                f"an image of {size[0]}x{size[1]} pixels needs at least {needed} output tokens (codes + <eoi>), but "
                f"max_tokens is {max_tokens}: ask for max_tokens >= {needed + 1}, or serve with a --max-model-len "
                "that holds the prompt and the image"
            )


@dataclass(frozen=True)
class Guidance:
    scale: float
    pair: str
    role: str | None  # None: the member with the shorter prompt is unconditional


def requested_guidance(extra_args: dict[str, Any] | None, params: Any = None) -> Guidance | None:
    """The CFG pair a request belongs to, None without ``cfg_scale``; ValueError (HTTP 400) if malformed."""
    extra = extra_args or {}
    if CFG_SCALE not in extra:
        if CFG_PAIR in extra or CFG_ROLE in extra:
            raise ValueError("vllm_xargs.cfg_pair / cfg_role need vllm_xargs.cfg_scale")
        return None
    if requested_size(extra) is None:
        raise ValueError("vllm_xargs.cfg_scale applies to image generation: also give image_size or image_height/width")
    scale, pair, role = extra[CFG_SCALE], extra.get(CFG_PAIR), extra.get(CFG_ROLE)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not _finite_float32(scale) or scale < 0:
        raise ValueError(
            f"vllm_xargs.cfg_scale must be a finite number >= 0 (in float32, as it is applied), got {scale!r}"
        )
    if isinstance(pair, bool) or not isinstance(pair, (str, int)) or pair == "":
        raise ValueError(
            "vllm_xargs.cfg_pair is required with cfg_scale: one key shared by the conditional and the unconditional "
            f"request of a pair, got {pair!r}"
        )
    if role is not None and role not in ROLES:
        raise ValueError(f"vllm_xargs.cfg_role must be 'cond' or 'uncond', got {role!r}")
    if params is not None:
        if getattr(params, "n", 1) != 1:
            raise ValueError("a CFG request must have n=1 (send one conditional and one unconditional prompt instead)")
        greedy = getattr(params, "temperature", 1.0) < 1e-5
        if not greedy and getattr(params, "seed", None) is None:
            raise ValueError(
                "a sampled CFG request needs a seed (the same one on both requests of the pair, so that both rows "
                "draw the same token); or use temperature 0"
            )
    return Guidance(float(scale), str(pair), role)


class _RequestLayout:
    """The layout mask of one request; the image grid is checked against the served model's ``max_grid``."""

    def __init__(self, layout: TokenLayout, eos: int | None, size: tuple[int, int]) -> None:
        self.layout, self.eos = layout, eos
        self.grid = (size[0] // PATCH_SIZE, size[1] // PATCH_SIZE)
        self.servable = max(self.grid) <= layout.max_grid  # beyond it: end at once (never raise inside the engine)
        self.header = (
            [layout.boi_token_id, layout.height_token(self.grid[0]), layout.width_token(self.grid[1])]
            if self.servable
            else []
        )
        self.constraint: ImageConstraint | None = None

    def allowed(self, prompt_ids: list[int] | None, step: int) -> tuple[int, int]:
        if not self.servable:
            return self.end()
        if self.constraint is None:
            tail = list(prompt_ids[-3:]) if prompt_ids is not None else []
            self.constraint = ImageConstraint(self.layout, self.grid, tail != self.header)
        if self.constraint.done(step):
            return self.end()
        return self.constraint.allowed(step)

    def end(self) -> tuple[int, int]:
        return _end_of_sequence(self.eos)


def _end_of_sequence(eos: int | None) -> tuple[int, int]:
    """The id range that ends a request: end-of-sequence (an empty range, which keeps the row, without one)."""
    return (eos, eos + 1) if eos is not None else (0, -1)


def _keep(row: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """-inf outside [lo, hi) (in place); an empty range keeps the row. Inside, NaN and -inf become -LOGIT_BOUND and
    +inf +LOGIT_BOUND, so that the sampler's softmax stays a distribution over [lo, hi) even when the model or the
    guidance formula overflowed (a row with inf or NaN otherwise samples token 0, outside the layout)."""
    if hi <= lo:
        return row
    row[:lo] = float("-inf")
    row[hi:] = float("-inf")
    inside = row[lo:hi]
    torch.nan_to_num_(inside, nan=-LOGIT_BOUND, posinf=LOGIT_BOUND, neginf=-LOGIT_BOUND)
    inside.clamp_(-LOGIT_BOUND, LOGIT_BOUND)
    return row


def _served_layout(vllm_config: Any) -> tuple[TokenLayout | None, int | None]:
    hf_config = vllm_config.model_config.hf_config
    data = getattr(hf_config, CONFIG_KEY, None)
    eos = getattr(hf_config, "eos_token_id", None)
    return (TokenLayout.from_config(dict(data)) if data else None), (eos[0] if isinstance(eos, (list, tuple)) else eos)


class RunnerV2Passthrough(RunnerV2LogitsProcessor):
    """What vLLM's Model Runner V2 gets from this plugin's entry points: a processor that touches no request.

    Why: the ``vllm.logits_processors`` entry points are loaded for every model served in the environment, and
    Model Runner V2 (the default of vLLM 0.32's GPU builds) refuses to start when one of them is not a subclass of
    its own interface (``vllm/v1/worker/gpu/sample/logits_processor/loader.py``). Installing the plugin must not
    break other models there, so the two processors below are also V2 subclasses and hand V2 this no-op. A
    MedITok-AR model itself is never served by V2: :mod:`meditok.ar.vllm_plugin.config` selects the V1 runner at
    start-up (or refuses an explicit ``VLLM_USE_V2_MODEL_RUNNER=1``), since the CFG pairs' lockstep needs V1's
    per-request sampling generators (V2's noise depends on the token position, which differs within a pair)."""

    def __init__(self, vllm_config: Any, req_states: Any) -> None:
        self.vocab_size = getattr(req_states, "vocab_size", None)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return False

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        return logits


class _EitherRunner:
    """Construct the V1 processor for the V1 runner ``(vllm_config, device, is_pin_memory)`` and
    :class:`RunnerV2Passthrough` for Model Runner V2 ``(vllm_config, req_states)``."""

    def __new__(cls, vllm_config: Any = None, *args: Any, **kwargs: Any) -> Any:
        second = args[0] if args else kwargs.get("req_states")
        if isinstance(second, LogitsProcRequestState):
            return RunnerV2Passthrough(vllm_config, second)
        return super().__new__(cls)


class ImageLayoutLogitsProcessor(_EitherRunner, AdapterLogitsProcessor, RunnerV2LogitsProcessor):
    """One image block per request that asks for one; CFG requests are left to :class:`GuidancePairLogitsProcessor`."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self.layout, self.eos = _served_layout(vllm_config)

    @classmethod
    def validate_params(cls, params: Any) -> None:
        if requested_size(params.extra_args) is not None and _served_compact:
            raise ValueError(COMPACT_GENERATION)
        requested_guidance(params.extra_args, params)
        check_sampling(params)

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: Any) -> Callable | None:
        if self.layout is None:
            return None
        size = requested_size(params.extra_args)
        if requested_guidance(params.extra_args) is not None:
            return None
        if size is None:
            # A request without an image size is answered in text, as the transformers path's `answer` is: the
            # image-layout ids are masked. The 32k image rows together can hold more probability
            # than the best text token (seen on SmolLM2 extended with MedITok tokens: a greedy chat answer made only of
            # image codes, empty as text).
            text = self.layout.text_vocab_size

            def text_only(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
                return _keep(logits, 0, text)

            return text_only
        if self.layout.compact:  # refused at admission (validate_params); should one get here, it ends at once
            end = _end_of_sequence(self.eos)
            return lambda prompt_ids, output_ids, logits: _keep(logits, *end)
        mask = _RequestLayout(self.layout, self.eos, size)

        def apply(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            return _keep(logits, *mask.allowed(prompt_ids, len(output_ids)))

        return apply


@dataclass
class _Member:
    guidance: Guidance
    prompt_ids: list[int]
    output_ids: list[int]  # vLLM's live list of this request's output tokens
    mask: _RequestLayout
    broken: bool = False


class GuidancePairLogitsProcessor(_EitherRunner, LogitsProcessor, RunnerV2LogitsProcessor):
    """Classifier-free guidance over request pairs (see the module docstring); a no-op for requests without
    ``vllm_xargs.cfg_scale``. It masks its requests by the image layout itself, so its order relative to the layout
    processor does not matter."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.layout, self.eos = _served_layout(vllm_config)
        self.rows: dict[int, _Member] = {}
        self.broken_pairs: set[str] = set()
        self.desynchronised = 0  # pairs ended because the scheduler split them (for logs and tests)

    @classmethod
    def validate_params(cls, params: Any) -> None:
        requested_guidance(params.extra_args, params)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None or self.layout is None:
            return
        for index in batch_update.removed:
            self._drop(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self._drop(index)  # an added request may take the index of one that left without a "removed" entry
            guidance = requested_guidance(getattr(params, "extra_args", None))
            if guidance is None:
                continue
            size = requested_size(params.extra_args)
            self.rows[index] = _Member(
                guidance, list(prompt_ids or []), output_ids, _RequestLayout(self.layout, self.eos, size)
            )
        for a, b, direction in batch_update.moved:
            first, second = self.rows.pop(a, None), self.rows.pop(b, None)
            if first is not None:
                self.rows[b] = first
            if second is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = second
        live = {m.guidance.pair for m in self.rows.values()}
        self.broken_pairs &= live

    def _drop(self, index: int) -> None:
        member = self.rows.pop(index, None)
        if member is not None and any(m.guidance.pair == member.guidance.pair for m in self.rows.values()):
            self._break(member.guidance.pair)  # its partner goes on alone: end it too

    def _break(self, pair: str) -> None:
        if pair not in self.broken_pairs:
            self.broken_pairs.add(pair)
            self.desynchronised += 1
            logger.warning("MedITok CFG pair %r left lockstep (scheduler split it); ended both requests", pair)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        pairs: dict[str, list[int]] = {}
        for index, member in self.rows.items():
            pairs.setdefault(member.guidance.pair, []).append(index)
        for pair, indices in pairs.items():
            members = [self.rows[i] for i in indices]
            if pair not in self.broken_pairs:
                roles = self._roles(members)
                if roles is None:
                    lone = members[0]
                    if len(members) == 1 and len(lone.output_ids) == 0:
                        # its partner has not arrived yet: a token sampled now is either discarded (prefill still
                        # running) or breaks the pair at the next step
                        _keep(logits[indices[0]], *lone.mask.allowed(lone.prompt_ids, 0))
                        continue
                    self._break(pair)
                else:
                    cond, uncond = (indices[members.index(m)] for m in roles)
                    c, u = logits[cond], logits[uncond]
                    guided = c + (roles[0].guidance.scale - 1.0) * (c - u)
                    lo, hi = roles[0].mask.allowed(roles[0].prompt_ids, len(roles[0].output_ids))
                    _keep(guided, lo, hi)
                    logits[cond] = guided
                    logits[uncond] = guided
                    continue
            for index, member in zip(indices, members):
                _keep(logits[index], *member.mask.end())
        return logits

    @staticmethod
    def _roles(members: list[_Member]) -> tuple[_Member, _Member] | None:
        """(cond, uncond) of a synchronised pair, None if not exactly two members in lockstep."""
        if len(members) != 2:
            return None
        a, b = members
        if len(a.output_ids) != len(b.output_ids) or (a.output_ids and a.output_ids[-1] != b.output_ids[-1]):
            return None
        if a.guidance.role and b.guidance.role:
            if {a.guidance.role, b.guidance.role} != set(ROLES):
                return None
            return (a, b) if a.guidance.role == "cond" else (b, a)
        if len(a.prompt_ids) == len(b.prompt_ids):
            return None
        return (a, b) if len(a.prompt_ids) > len(b.prompt_ids) else (b, a)
