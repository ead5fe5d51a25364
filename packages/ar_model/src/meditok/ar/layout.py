"""The token layout of the unified model: the contract between training, the transformers path and the vLLM plugin.

Dependency-light on purpose (standard library + numpy only; no torch, no transformers): the vLLM plugin, a client or
a data job can import it alone.

Vocabulary (ids in increasing order, ``T`` = the text tokenizer's size before extension)::

    [0, T)                          text tokens (the base LLM's tokenizer, its own bos/eos/pad included)
    T + 0                           <image>   placeholder in prompts; replaced by an image block before the model
    T + 1                           <boi>     begin of image
    T + 2                           <eoi>     end of image
    T + 3 + (h - 1)                 <img_h_h> grid height h in positions, h = 1..max_grid
    T + 3 + max_grid + (w - 1)      <img_w_w> grid width  w in positions, w = 1..max_grid
    image_base + k*4096 + c         <i{k}_{c}> code c of sub-codebook k (image_base = T + 3 + 2*max_grid)
    vocab_size = image_base + 8*4096

An image of h x w positions (h = H/16, w = W/16 pixels) is the block::

    <boi> <img_h_h> <img_w_w>  (k=0 c) (k=1 c) ... (k=7 c)  for each position in raster order  <eoi>

i.e. ``4 + 8*h*w`` tokens (2052 for a 256x256 image: 2048 code tokens). Step ``s`` of the code part (s = 0..8hw-1)
belongs to position ``s // 8`` and sub-codebook ``s % 8``. Because every id is an ordinary vocabulary entry, an
unmodified sampler (vLLM's) can produce it; :class:`ImageConstraint` says which ids are allowed at each step.

Layout version 2 ("compact", :mod:`meditok.ar.compact`) gives an image position one LLM step instead of 8: the
vocabulary ends with a single ``<img_pos>`` id instead of the 8*4096 code ids::

    image_base + 0                  <img_pos> one image position; its 8 sub-codes travel beside the ids
    vocab_size = image_base + 1

and an image is ``<boi> <img_h_h> <img_w_w> <img_pos> * (h*w) <eoi>``, ``4 + h*w`` tokens (260 for 256x256). The ids
alone do not hold the codes: an input adapter turns each position's 8 sub-codes into its embedding, and a depth head
predicts them from the backbone's hidden state (:func:`position_codes` gives the codes in position order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FLAT_LAYOUT = 1  # 8 vocabulary tokens per image position
COMPACT_LAYOUT = 2  # one <img_pos> token per image position, the 8 sub-codes beside it
LAYOUT_VERSION = FLAT_LAYOUT  # what a layout is unless it says otherwise (and every folder written before version 2)
LAYOUT_NAMES = {FLAT_LAYOUT: "flat", COMPACT_LAYOUT: "compact"}
# MedITokConfig's code layout (meditok.tokenizer.config), restated because importing the tokenizer package imports
# torch; tests/test_codes.py checks that they agree.
NUM_CODEBOOKS = 8
CODEBOOK_SIZE = 4096
PATCH_SIZE = 16  # pixels per grid position
DEFAULT_MAX_GRID = 64  # 1024 px at PATCH_SIZE px per position
IMAGE_TOKENIZER_DIR = "image_tokenizer"  # a saved model's copy of its MedITok
CONFIG_KEY = "meditok_ar"  # the key of the layout dictionary inside the model's config.json
ARCHITECTURE = "MedITokARForCausalLM"
SPECIAL_TOKENS = ("<image>", "<boi>", "<eoi>")
IMAGE_POSITION_TOKEN = "<img_pos>"  # compact layout only


class LayoutError(ValueError):
    """A token sequence or code array that does not follow the image layout (the message says where and why)."""


@dataclass(frozen=True)
class TokenLayout:
    """Where the special, size and image-code tokens live in the extended vocabulary (see the module docstring)."""

    text_vocab_size: int
    max_grid: int = DEFAULT_MAX_GRID
    num_codebooks: int = NUM_CODEBOOKS
    codebook_size: int = CODEBOOK_SIZE
    version: int = LAYOUT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. image_tokenizer path, chat format

    def __post_init__(self) -> None:
        if self.text_vocab_size < 1:
            raise LayoutError(f"text_vocab_size must be positive, got {self.text_vocab_size}")
        if not 1 <= self.max_grid <= 1024:
            raise LayoutError(f"max_grid must be in [1, 1024], got {self.max_grid}")
        if self.version not in LAYOUT_NAMES:
            readable = ", ".join(f"{v} ({name})" for v, name in LAYOUT_NAMES.items())
            raise LayoutError(f"layout version {self.version} is not supported (this code reads {readable})")

    @property
    def compact(self) -> bool:
        return self.version == COMPACT_LAYOUT

    @property
    def name(self) -> str:
        """The layout's name: flat or compact."""
        return LAYOUT_NAMES[self.version]

    def describe(self) -> str:
        return f"{self.name} (layout version {self.version})"

    @property
    def image_position_token_id(self) -> int:
        """The compact layout's one id per image position."""
        if not self.compact:
            raise LayoutError(f"the {self.describe()} layout has no {IMAGE_POSITION_TOKEN} token")
        return self.image_token_base

    # ---- ids
    @property
    def image_token_id(self) -> int:
        return self.text_vocab_size

    @property
    def boi_token_id(self) -> int:
        return self.text_vocab_size + 1

    @property
    def eoi_token_id(self) -> int:
        return self.text_vocab_size + 2

    @property
    def height_token_base(self) -> int:
        return self.text_vocab_size + 3

    @property
    def width_token_base(self) -> int:
        return self.height_token_base + self.max_grid

    @property
    def image_token_base(self) -> int:
        return self.width_token_base + self.max_grid

    @property
    def num_image_tokens(self) -> int:
        return 1 if self.compact else self.num_codebooks * self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.image_token_base + self.num_image_tokens

    @property
    def num_new_tokens(self) -> int:
        return self.vocab_size - self.text_vocab_size

    def height_token(self, h: int) -> int:
        self._check_side(h, "height")
        return self.height_token_base + h - 1

    def width_token(self, w: int) -> int:
        self._check_side(w, "width")
        return self.width_token_base + w - 1

    def code_token_range(self, k: int) -> tuple[int, int]:
        """Half-open id range [lo, hi) of sub-codebook k."""
        if self.compact:
            raise LayoutError(
                f"the {self.describe()} layout has no code tokens: codes travel beside {IMAGE_POSITION_TOKEN}"
            )
        if not 0 <= k < self.num_codebooks:
            raise LayoutError(f"sub-codebook {k} outside [0, {self.num_codebooks})")
        lo = self.image_token_base + k * self.codebook_size
        return lo, lo + self.codebook_size

    def is_image_code(self, token_id: int) -> bool:
        return self.image_token_base <= token_id < self.vocab_size

    def block_length(self, grid: tuple[int, int]) -> int:
        return 4 + (1 if self.compact else self.num_codebooks) * grid[0] * grid[1]

    def _check_side(self, n: int, what: str) -> None:
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= self.max_grid:
            raise LayoutError(f"grid {what} {n!r} outside [1, {self.max_grid}] positions")

    # ---- token strings (added to the text tokenizer so that every id decodes and vLLM accepts prompt ids)
    def new_token_strings(self) -> list[str]:
        """Strings of ids text_vocab_size .. vocab_size-1, in id order."""
        out = list(SPECIAL_TOKENS)
        out += [f"<img_h_{h}>" for h in range(1, self.max_grid + 1)]
        out += [f"<img_w_{w}>" for w in range(1, self.max_grid + 1)]
        if self.compact:
            return out + [IMAGE_POSITION_TOKEN]
        out += [f"<i{k}_{c}>" for k in range(self.num_codebooks) for c in range(self.codebook_size)]
        return out

    # ---- config.json
    def to_config(self) -> dict[str, Any]:
        """The dictionary stored under ``config.json[CONFIG_KEY]`` (ids spelled out for readers in other languages)."""
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data.update(
            image_token_id=self.image_token_id,
            boi_token_id=self.boi_token_id,
            eoi_token_id=self.eoi_token_id,
            height_token_base=self.height_token_base,
            width_token_base=self.width_token_base,
            image_token_base=self.image_token_base,
            num_image_tokens=self.num_image_tokens,
            vocab_size=self.vocab_size,
        )
        data.update(self.extra)
        return data

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TokenLayout:
        """From ``config.json`` (the whole file or its ``CONFIG_KEY`` entry); checks the derived ids agree."""
        data = config.get(CONFIG_KEY, config)
        if "text_vocab_size" not in data:
            raise LayoutError(f"no MedITok-AR layout in this config (missing '{CONFIG_KEY}.text_vocab_size')")
        known = ("text_vocab_size", "max_grid", "num_codebooks", "codebook_size", "version")
        derived = (
            "image_token_id", "boi_token_id", "eoi_token_id", "height_token_base", "width_token_base",
            "image_token_base", "num_image_tokens", "vocab_size",
        )  # fmt: skip
        layout = cls(**{k: data[k] for k in known if k in data},
                     extra={k: v for k, v in data.items() if k not in known + derived})  # fmt: skip
        for name in derived:
            if name in data and data[name] != getattr(layout, name):
                raise LayoutError(f"config says {name}={data[name]} but the layout gives {getattr(layout, name)}")
        return layout


def _as_codes(codes: Any, grid: tuple[int, int] | None, layout: TokenLayout) -> tuple[np.ndarray, tuple[int, int]]:
    array = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes)
    if array.ndim == 3:
        if grid is not None and tuple(grid) != array.shape[1:]:
            raise LayoutError(f"codes of shape {array.shape} disagree with grid={tuple(grid)}")
        grid = (int(array.shape[1]), int(array.shape[2]))
        array = array.reshape(array.shape[0], -1)
    if array.ndim != 2 or array.shape[0] != layout.num_codebooks:
        raise LayoutError(
            f"codes of shape {array.shape}: expected [{layout.num_codebooks}, h*w] or [{layout.num_codebooks}, h, w]"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise LayoutError(f"codes must be integers, got {array.dtype}")
    length = array.shape[1]
    if grid is None:
        side = int(round(length**0.5))
        if side * side != length:
            raise LayoutError(f"{length} positions is not a square: pass grid=(h, w)")
        grid = (side, side)
    h, w = int(grid[0]), int(grid[1])
    if h * w != length:
        raise LayoutError(f"grid {h}x{w} needs {h * w} positions, codes have {length}")
    if array.size and (array.min() < 0 or array.max() >= layout.codebook_size):
        raise LayoutError(f"codes outside [0, {layout.codebook_size}): min {array.min()}, max {array.max()}")
    return array.astype(np.int64), (h, w)


def codes_to_token_ids(codes: Any, layout: TokenLayout, grid: tuple[int, int] | None = None) -> list[int]:
    """One image's codes ([8, h*w] or [8, h, w]; numpy, torch or lists) -> its token block (see module docstring).

    ``grid`` is needed for non-square [8, h*w] codes. In the compact layout the block holds one ``<img_pos>`` per
    position and the codes themselves come from :func:`position_codes`."""
    array, (h, w) = _as_codes(codes, grid, layout)
    if layout.compact:
        body = [layout.image_position_token_id] * (h * w)
        return [layout.boi_token_id, layout.height_token(h), layout.width_token(w), *body, layout.eoi_token_id]
    offsets = layout.image_token_base + np.arange(layout.num_codebooks, dtype=np.int64)[:, None] * layout.codebook_size
    body = (array + offsets).T.reshape(-1)  # position-major: all 8 sub-codes of position 0, then position 1, ...
    return [layout.boi_token_id, layout.height_token(h), layout.width_token(w), *body.tolist(), layout.eoi_token_id]


def position_codes(codes: Any, layout: TokenLayout, grid: tuple[int, int] | None = None) -> np.ndarray:
    """One image's codes ([8, h*w] or [8, h, w]) -> int64 [h*w, 8]: row i holds the sub-codes of image position i
    (raster order), i.e. of the i-th ``<img_pos>`` of its compact block."""
    array, _ = _as_codes(codes, grid, layout)
    return np.ascontiguousarray(array.T)


def token_ids_to_codes(token_ids: Sequence[int], layout: TokenLayout) -> tuple[np.ndarray, tuple[int, int]]:
    """An image block -> (codes int64 [8, h*w], (h, w)). Raises :class:`LayoutError` naming the first bad token."""
    if layout.compact:
        raise LayoutError(
            f"a {layout.describe()} image block holds no codes: they travel beside its {IMAGE_POSITION_TOKEN} tokens"
        )
    ids = [int(t) for t in (token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids)]
    if len(ids) < 4:
        raise LayoutError(f"an image block has at least 4 tokens (<boi> <h> <w> ... <eoi>), got {len(ids)}")
    if ids[0] != layout.boi_token_id:
        raise LayoutError(f"token 0 is {ids[0]}, expected <boi> ({layout.boi_token_id})")
    h = ids[1] - layout.height_token_base + 1
    if not 1 <= h <= layout.max_grid:
        raise LayoutError(f"token 1 is {ids[1]}, expected a height token in [{layout.height_token_base}, "
                          f"{layout.height_token_base + layout.max_grid})")  # fmt: skip
    w = ids[2] - layout.width_token_base + 1
    if not 1 <= w <= layout.max_grid:
        raise LayoutError(f"token 2 is {ids[2]}, expected a width token in [{layout.width_token_base}, "
                          f"{layout.width_token_base + layout.max_grid})")  # fmt: skip
    expected = layout.block_length((h, w))
    if len(ids) != expected or ids[-1] != layout.eoi_token_id:
        for i in range(3, min(len(ids), expected - 1)):
            if not layout.is_image_code(ids[i]):
                raise LayoutError(f"token {i} is {ids[i]}: not an image code (grid {h}x{w} needs {expected - 4} "
                                  f"code tokens before <eoi>)")  # fmt: skip
        raise LayoutError(
            f"grid {h}x{w} needs exactly {expected} tokens ending with <eoi> ({layout.eoi_token_id}); got {len(ids)} "
            f"ending with {ids[-1]}"
        )
    body = np.asarray(ids[3:-1], dtype=np.int64) - layout.image_token_base
    k = np.arange(body.size) % layout.num_codebooks
    sub = body // layout.codebook_size
    bad = np.flatnonzero((body < 0) | (sub != k))
    if bad.size:
        i = int(bad[0])
        raise LayoutError(
            f"token {i + 3} is {ids[i + 3]}: expected a code of sub-codebook {k[i]} (ids {layout.code_token_range(int(k[i]))}) "
            f"at position {i // layout.num_codebooks}"
        )
    codes = (body % layout.codebook_size).reshape(h * w, layout.num_codebooks).T
    return np.ascontiguousarray(codes), (h, w)


def find_image_blocks(token_ids: Sequence[int], layout: TokenLayout) -> list[tuple[int, int]]:
    """Half-open spans [start, end) of the image blocks in a mixed sequence (each validated)."""
    ids = [int(t) for t in token_ids]
    spans, i = [], 0
    while i < len(ids):
        if ids[i] == layout.eoi_token_id:
            raise LayoutError(f"<eoi> at token {i} without an open <boi>")
        if ids[i] != layout.boi_token_id:
            i += 1
            continue
        if i + 3 > len(ids):
            raise LayoutError(f"image block at token {i} is truncated")
        h = ids[i + 1] - layout.height_token_base + 1
        w = ids[i + 2] - layout.width_token_base + 1
        if not (1 <= h <= layout.max_grid and 1 <= w <= layout.max_grid):
            raise LayoutError(f"image block at token {i} has no valid size tokens ({ids[i + 1]}, {ids[i + 2]})")
        end = i + layout.block_length((h, w))
        if layout.compact:
            _check_compact_block(ids[i:end], (h, w), layout, i)
        else:
            try:
                token_ids_to_codes(ids[i:end], layout)
            except LayoutError as error:
                raise LayoutError(f"image block at token {i}: {error}") from None
        spans.append((i, end))
        i = end
    return spans


def _check_compact_block(block: list[int], grid: tuple[int, int], layout: TokenLayout, start: int) -> None:
    expected = layout.block_length(grid)
    body = block[3:-1]
    if len(block) != expected or block[-1] != layout.eoi_token_id or any(t != layout.image_token_base for t in body):
        raise LayoutError(f"image block at token {start}: grid {grid[0]}x{grid[1]} needs {grid[0] * grid[1]} "
                          f"{IMAGE_POSITION_TOKEN} tokens then <eoi> ({expected} tokens)")  # fmt: skip


class ImageConstraint:
    """Which ids may come next while generating one image of ``grid`` (the state machine of the logits processors).

    ``allowed(step)`` is the half-open id range for generated token number ``step`` (0-based, counted from the first
    generated token). With ``include_header`` the model also emits ``<boi> <h> <w>`` (for prompts that stop before the
    image); otherwise the prompt already ends with them. After ``<eoi>`` :meth:`done` is true."""

    def __init__(self, layout: TokenLayout, grid: tuple[int, int], include_header: bool = False) -> None:
        h, w = int(grid[0]), int(grid[1])
        self.layout = layout
        self.grid = (h, w)
        self.header = [layout.boi_token_id, layout.height_token(h), layout.width_token(w)] if include_header else []
        self.num_codes = (1 if layout.compact else layout.num_codebooks) * h * w
        self.length = len(self.header) + self.num_codes + 1  # + <eoi>

    def allowed(self, step: int) -> tuple[int, int]:
        if step < 0 or step >= self.length:
            raise LayoutError(f"step {step} is outside the image ({self.length} tokens)")
        if step < len(self.header):
            return self.header[step], self.header[step] + 1
        s = step - len(self.header)
        if s < self.num_codes:
            if self.layout.compact:
                return self.layout.image_position_token_id, self.layout.image_position_token_id + 1
            return self.layout.code_token_range(s % self.layout.num_codebooks)
        return self.layout.eoi_token_id, self.layout.eoi_token_id + 1

    def done(self, step: int) -> bool:
        return step >= self.length


def image_tokenizer_path(model_dir: str | os.PathLike, layout: TokenLayout) -> Path:
    """Where a model folder's MedITok lives: config.json's ``meditok_ar.image_tokenizer`` (relative to the folder, or
    absolute), else the folder's ``image_tokenizer/`` (what `MedITokAR.save_pretrained` writes)."""
    path = Path(layout.extra.get("image_tokenizer") or IMAGE_TOKENIZER_DIR)
    return path if path.is_absolute() else Path(model_dir) / path
