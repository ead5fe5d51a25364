"""MedITokAR: a Hugging Face causal LM (Llama / Mistral / Qwen2) whose vocabulary is extended with the token layout,
plus the MedITok image tokenizer that turns images into codes and codes back into images. A compact-layout model
(layout version 2) also holds its input adapter and depth head (:mod:`meditok.ar.compact`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meditok.ar.chat_format import sequence_builder, write_chat_template
from meditok.ar.compact import CompactCausalLM, CompactConfig, CompactImageModules
from meditok.ar.layout import (
    ARCHITECTURE,
    COMPACT_LAYOUT,
    CONFIG_KEY,
    IMAGE_TOKENIZER_DIR,
    LAYOUT_NAMES,
    LayoutError,
    TokenLayout,
    image_tokenizer_path,
    position_codes,
)

# Families whose HF classes and vLLM 0.32 classes share weight names; the plugin builds the vLLM class as its language
# model and maps the folder's names onto it.
SUPPORTED_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
ADAPTER_CONFIG = "adapter_config.json"


def code_projection(dim: int, num_codebooks: int = 8, code_dim: int = 8, seed: int = 0) -> torch.Tensor:
    """The fixed projection P [dim, num_codebooks*code_dim] with orthonormal columns (QR of a seeded Gaussian;
    for dim < 64 the first ``dim`` rows of a 64-dim orthonormal basis)."""
    g = torch.Generator().manual_seed(seed)
    gauss = torch.randn(max(dim, num_codebooks * code_dim), num_codebooks * code_dim, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)
    return q[:dim].float()


@torch.no_grad()
def init_image_rows(weight: torch.Tensor, codebooks: list[torch.Tensor], layout: TokenLayout, seed: int = 0) -> None:
    """Initialise the new rows of an embedding / output matrix [vocab, d] in place.

    Image token (k, c) -> mu + sigma*sqrt(d) * P @ onehot_k(v_kc), where v_kc is the unit code vector of sub-codebook
    k (MedITok's normalised codebook), onehot_k places it in the k-th 8-dim slot of a 64-vector, P is
    :func:`code_projection`, and mu / sigma are the mean row and per-dimension std of the text rows. So codes keep
    their cosine geometry, sub-codebooks sit in orthogonal subspaces, and the rows have the text rows' scale.
    Special and size tokens get mu plus small Gaussian noise (sigma / 10); so does the compact layout's <img_pos>
    (its input rows are never read: the input adapter embeds image positions)."""
    mu, sigma = text_row_statistics(weight, layout)
    d = weight.shape[1]
    if layout.compact:
        g = torch.Generator().manual_seed(seed + 1)
        noise = torch.randn(layout.num_new_tokens, d, generator=g) * sigma / 10
        weight[layout.text_vocab_size :] = (mu + noise).to(weight.dtype)
        return
    nk, cs = layout.num_codebooks, layout.codebook_size
    if len(codebooks) != nk or any(tuple(c.shape[:1]) != (cs,) for c in codebooks):
        raise LayoutError(f"expected {nk} codebooks of {cs} codes, got {[tuple(c.shape) for c in codebooks]}")
    code_dim = codebooks[0].shape[1]
    proj = code_projection(d, nk, code_dim, seed)  # [d, nk*code_dim]
    scale = sigma * math.sqrt(d)
    for k, book in enumerate(codebooks):
        block = proj[:, k * code_dim : (k + 1) * code_dim]  # [d, code_dim]
        lo, hi = layout.code_token_range(k)
        weight[lo:hi] = (mu + scale * book.float() @ block.T).to(weight.dtype)
    g = torch.Generator().manual_seed(seed + 1)
    n_other = layout.image_token_base - layout.text_vocab_size
    noise = torch.randn(n_other, d, generator=g) * sigma / 10
    weight[layout.text_vocab_size : layout.image_token_base] = (mu + noise).to(weight.dtype)


def text_row_statistics(weight: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean row and overall std of the text rows of an embedding matrix: the scale new rows are initialised at."""
    text = weight[: layout.text_vocab_size].detach().float()
    return text.mean(0), text.std().clamp_min(1e-6)


def parse_layout_name(layout: str | int | None) -> int | None:
    """ "flat" / "compact" / 1 / 2 / None -> the layout version (None stays None)."""
    if layout is None:
        return None
    for version, name in LAYOUT_NAMES.items():
        if layout in (version, name, str(version)):
            return version
    raise LayoutError(f"layout {layout!r}: use one of {', '.join(LAYOUT_NAMES.values())}")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


class MedITokAR:
    """The unified model. ``llm`` is the HF causal LM (or a PeftModel around it after :meth:`add_lora`)."""

    def __init__(self, llm: Any, text_tokenizer: Any, layout: TokenLayout, image_tokenizer: Any = None,
                 image_tokenizer_path: str | None = None,
                 compact_modules: CompactImageModules | None = None) -> None:  # fmt: skip
        if layout.compact != (compact_modules is not None):
            raise LayoutError(f"a {layout.describe()} model {'needs' if layout.compact else 'has no'} compact modules")
        self.llm = llm
        self.compact_modules = compact_modules  # input adapter + depth head (compact layout only)
        self.text_tokenizer = text_tokenizer
        self.layout = layout
        self._image_tokenizer = image_tokenizer
        self.image_tokenizer_path = image_tokenizer_path
        self.builder = sequence_builder(layout, text_tokenizer)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, tokenizer: Any = None, *, dtype: torch.dtype = torch.float32,
                        max_grid: int | None = None, init_seed: int = 0, layout: str | int | None = None,
                        compact: CompactConfig | dict[str, Any] | None = None) -> MedITokAR:  # fmt: skip
        """Load a MedITokAR folder, an adapter folder (base + PEFT adapter), or extend a plain local HF causal LM.

        ``layout``: "flat" (version 1) or "compact" (version 2). Extending a plain LLM uses it (default flat);
        loading a MedITokAR folder checks it (default: whatever the folder holds) and a mismatch is a LayoutError.
        ``compact``: the compact layout's adapter / head settings when extending (`CompactConfig`; default sum).

        ``path`` and a ``tokenizer`` path may be Hugging Face Hub names (``org/name``, ``massaki75/meditok``).
        ``tokenizer``: the MedITok image tokenizer (a ``MedITok`` or a path). Required to extend a plain LLM (its
        codebooks initialise the image rows); optional for MedITokAR folders (they record theirs)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from meditok.tokenizer.hub import parse_hub_name, resolve_folder, resolve_weights

        # Hugging Face Hub names (org/name[@revision]) become their snapshot in the Hub cache (meditok.tokenizer.hub,
        # the one resolver); a missing local path stays a FileNotFoundError below.
        if not Path(path).exists() and parse_hub_name(path) is not None:
            path = resolve_folder(path)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = resolve_weights(tokenizer)  # a local path, so that save_pretrained can copy it
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a model folder")
        if (path / ADAPTER_CONFIG).exists():
            from peft import PeftModel

            base_dir = _read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
            if not base_dir or not Path(base_dir).is_dir():
                raise FileNotFoundError(f"{path}: adapter's base model {base_dir!r} is not a local folder")
            base = cls.from_pretrained(base_dir, tokenizer, dtype=dtype, layout=layout)
            base.llm = PeftModel.from_pretrained(base.llm, str(path), is_trainable=False)
            if base.compact_modules is not None:  # trained in full beside the LoRA adapter
                base.compact_modules.load(path)
            return base
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model folder)")
        config = _read_json(path / "config.json")
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{path}: model_type {model_type!r} is not supported; use one of {sorted(SUPPORTED_MODEL_TYPES)}"
            )
        wanted = parse_layout_name(layout)
        if CONFIG_KEY in config:  # already extended: the folder's layout, checked before any weights load
            found = TokenLayout.from_config(config)
            if wanted is not None and wanted != found.version:
                raise LayoutError(
                    f"{path} is a {found.describe()} model, not {LAYOUT_NAMES[wanted]} (layout version {wanted})"
                )
        text_tokenizer = AutoTokenizer.from_pretrained(str(path))
        llm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        llm.eval()
        if CONFIG_KEY in config:  # already extended
            layout = found
            if (
                llm.get_input_embeddings().weight.shape[0] != layout.vocab_size
                or len(text_tokenizer) != layout.vocab_size
            ):
                raise LayoutError(
                    f"{path}: embedding rows / tokenizer size disagree with the layout's vocab_size {layout.vocab_size}"
                )
            image_tok, image_path = tokenizer, None
            if image_tok is None or isinstance(image_tok, (str, os.PathLike)):
                candidate = image_tok or image_tokenizer_path(path, layout)
                if image_tok is None and not Path(candidate).exists():  # recorded but absent: say so when it's used
                    candidate = None
                image_path, image_tok = (str(candidate) if candidate else None), None
            modules = None
            if layout.compact:
                settings = CompactConfig.from_dict(layout.extra.get("compact"))
                modules = CompactImageModules.for_llm(settings, llm.config, layout).load(path).to(dtype).eval()
            return cls(llm, text_tokenizer, layout, image_tok, image_path, modules)
        # ---- extend a plain LLM
        if tokenizer is None:
            raise ValueError(
                "extending a plain LLM needs tokenizer= (a MedITok or its path): its codebooks initialise the image rows"
            )
        image_tok, image_path = (
            (tokenizer, None) if not isinstance(tokenizer, (str, os.PathLike)) else (None, str(tokenizer))
        )
        if image_tok is None:
            image_tok = _load_image_tokenizer(image_path)
        # The image tokenizer's image-input settings travel with the model, so that training, `answer` and a vLLM
        # server tokenise an image exactly alike.
        extra = {"base_architecture": SUPPORTED_MODEL_TYPES[model_type], "image_input": image_tok.image_input.to_dict()}
        version = wanted or 1
        settings = None
        books = [cb.normalized_codebook().detach().float().cpu() for cb in image_tok.quantizer.codebooks]
        if version == COMPACT_LAYOUT:
            if isinstance(compact, CompactConfig):
                settings = dataclasses.replace(compact, code_dim=books[0].shape[1]).validate()
            else:
                settings = CompactConfig.from_dict({**(compact or {}), "code_dim": books[0].shape[1]})
            extra["compact"] = settings.to_dict()
        elif compact is not None:
            raise LayoutError("compact= settings need layout='compact' (layout version 2)")
        layout = TokenLayout(len(text_tokenizer), **({"max_grid": max_grid} if max_grid else {}), version=version,
                             extra=extra)  # fmt: skip
        new_tokens = layout.new_token_strings()
        added = text_tokenizer.add_tokens(new_tokens, special_tokens=True)
        ids = text_tokenizer.convert_tokens_to_ids(
            ["<image>", "<boi>", new_tokens[-layout.num_image_tokens], new_tokens[-1]]
        )
        want = [layout.image_token_id, layout.boi_token_id, layout.image_token_base, layout.vocab_size - 1]
        if added != layout.num_new_tokens or ids != want:
            raise LayoutError(
                f"the text tokenizer already holds some layout token strings (added {added}, ids {ids} != {want})"
            )
        mu, sigma = text_row_statistics(llm.get_input_embeddings().weight, layout)  # before the new rows exist
        llm.resize_token_embeddings(layout.vocab_size, mean_resizing=False)
        init_image_rows(llm.get_input_embeddings().weight, books, layout, init_seed)
        out = llm.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != llm.get_input_embeddings().weight.data_ptr():
            init_image_rows(out.weight, books, layout, init_seed)
        llm.config.vocab_size = layout.vocab_size
        modules = None
        if settings is not None:
            torch.manual_seed(init_seed)  # the depth head's random initialisation
            modules = CompactImageModules.for_llm(settings, llm.config, layout)
            modules.adapter.initialise(books, mu, float(sigma), init_seed)
            modules = modules.to(dtype).eval()
        return cls(llm, text_tokenizer, layout, image_tok, image_path, modules)

    @property
    def image_tokenizer(self) -> Any:
        if self._image_tokenizer is None:
            if not self.image_tokenizer_path:
                raise ValueError("no image tokenizer: pass tokenizer= to from_pretrained")
            self._image_tokenizer = _load_image_tokenizer(self.image_tokenizer_path)
        return self._image_tokenizer

    @property
    def base_model(self) -> Any:
        """The underlying transformers model (inside PEFT wrappers)."""
        llm = self.llm
        return llm.get_base_model() if hasattr(llm, "get_base_model") else llm

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | os.PathLike, *, copy_image_tokenizer: bool = True) -> Path:
        """A full HF folder (weights, text tokenizer with the layout tokens, config.json with architectures
        ["MedITokARForCausalLM"] and the layout under ``meditok_ar``) plus ``image_tokenizer/``.

        On a PEFT-wrapped model this saves the adapter only (``adapter_config.json`` points at the base folder);
        use :meth:`merged` first for a serving folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if hasattr(self.llm, "peft_config"):
            self.llm.save_pretrained(str(directory))
            if self.compact_modules is not None:
                self.compact_modules.save(directory)
            return directory
        extra = dict(self.layout.extra)
        if copy_image_tokenizer:
            target = directory / IMAGE_TOKENIZER_DIR
            if self._image_tokenizer is not None:
                self._image_tokenizer.save_pretrained(target)
            elif self.image_tokenizer_path and Path(self.image_tokenizer_path).resolve() != target.resolve():
                src = Path(self.image_tokenizer_path)
                shutil.copytree(src, target, dirs_exist_ok=True) if src.is_dir() else shutil.copy2(src, target)
            extra["image_tokenizer"] = IMAGE_TOKENIZER_DIR
        elif self.image_tokenizer_path:
            extra["image_tokenizer"] = str(Path(self.image_tokenizer_path).resolve())
        layout = dataclasses.replace(self.layout, extra=extra)
        self.layout = layout
        self.llm.save_pretrained(str(directory))
        if self.compact_modules is not None:
            self.compact_modules.save(directory)
        self.text_tokenizer.save_pretrained(str(directory))
        write_chat_template(directory, self.text_tokenizer)  # chat through plain `vllm serve` renders like `builder`
        config = _read_json(directory / "config.json")
        config["architectures"] = [ARCHITECTURE]
        config[CONFIG_KEY] = layout.to_config()
        config["vocab_size"] = layout.vocab_size
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        return directory

    # ------------------------------------------------------------------ PEFT
    def add_lora(self, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: Any = "all-linear",
                 token_training: str = "trainable_tokens") -> Any:  # fmt: skip
        """Wrap ``llm`` with LoRA on its linear layers plus trainable rows for the layout's new tokens.

        ``token_training``: "trainable_tokens" (PEFT trainable_token_indices: only the new rows of the input and
        output embeddings train; default, see the README's memory table) or "modules_to_save" (full copies of
        embed_tokens and lm_head train)."""
        from peft import LoraConfig, get_peft_model

        if hasattr(self.llm, "peft_config"):
            raise ValueError("the model already has an adapter")
        tied = bool(getattr(self.base_model.config, "tie_word_embeddings", False))
        kwargs: dict[str, Any] = {}
        if token_training == "trainable_tokens":
            new_ids = list(range(self.layout.text_vocab_size, self.layout.vocab_size))
            kwargs["trainable_token_indices"] = (
                {"embed_tokens": new_ids} if tied else {"embed_tokens": new_ids, "lm_head": new_ids}
            )
        elif token_training == "modules_to_save":
            kwargs["modules_to_save"] = ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]
        elif token_training != "none":
            raise ValueError(
                f"token_training must be trainable_tokens, modules_to_save or none, not {token_training!r}"
            )
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                            task_type="CAUSAL_LM", **kwargs)  # fmt: skip
        self.llm = get_peft_model(self.llm, config)
        return self.llm

    def merged(self) -> MedITokAR:
        """A plain (adapter-free) model with LoRA and the trained token rows merged in."""
        if not hasattr(self.llm, "merge_and_unload"):
            return self
        return MedITokAR(self.llm.merge_and_unload(), self.text_tokenizer, self.layout, self._image_tokenizer,
                         self.image_tokenizer_path, self.compact_modules)  # fmt: skip

    def training_module(self) -> Any:
        """What the optimiser trains and ``module(**collate(...)).loss`` reads: the LLM (flat layout) or the LLM with
        the input adapter and depth head around it (compact layout, all of whose own parameters train)."""
        if self.compact_modules is None:
            return self.llm
        self.compact_modules.requires_grad_(True)
        return CompactCausalLM(self.llm, self.compact_modules, self.layout)

    # ------------------------------------------------------------------ images
    @property
    def image_input(self) -> Any:
        """How images become codes for this model (an `ImageInput`): config.json's ``meditok_ar.image_input``,
        copied from the image tokenizer when the model was made; older folders fall back to the tokenizer's own."""
        from meditok.tokenizer.preprocessing import ImageInput

        recorded = self.layout.extra.get("image_input")
        if recorded is not None:
            return ImageInput.from_dict(recorded, where=f"{CONFIG_KEY}.image_input")
        return self.image_tokenizer.image_input

    def encode_image(self, image: Any, **overrides: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """A file path (or its bytes), PIL image, array or tensor in [0,1] -> (codes [8, h*w], (h, w)).

        The image-input contract with this model's `image_input`; keyword overrides (``size=`` an int or
        (height, width), ``resize=``, ``resampler=``, ``ct_window=``, ``percentiles=``) replace single settings."""
        from meditok.tokenizer.image_files import load_image
        from meditok.tokenizer.preprocessing import preprocess

        spec = self.image_input.with_overrides(**overrides)
        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            image = load_image(image, spec)
        x = preprocess(image, spec)
        tok = self.image_tokenizer
        with torch.no_grad():
            codes = tok.encode(x.to(tok.device))
        return codes[0].cpu(), (x.shape[-2] // 16, x.shape[-1] // 16)

    def decode_codes(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        tok = self.image_tokenizer
        with torch.no_grad():
            return tok.decode(
                torch.as_tensor(codes).reshape(1, self.layout.num_codebooks, -1).to(tok.device), grid=grid
            )

    # ------------------------------------------------------------------ inference
    def answer(self, image_or_codes: Any, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None, grid: tuple[int, int] | None = None,
               image_input: dict[str, Any] | None = None) -> str:  # fmt: skip
        """Answer ``question`` about an image (path/PIL/array/[0,1] tensor, through `encode_image`) or its codes
        ([8, h*w] or [8, h, w] ints). ``image_input``: overrides of the model's image-input settings."""
        from meditok.ar.generation import generate_text

        if _are_codes(image_or_codes, self.layout.num_codebooks):
            codes = image_or_codes
        else:
            codes, grid = self.encode_image(image_or_codes, **(image_input or {}))
        prompt = self.builder.question_prompt(codes, question, grid)
        image_codes = position_codes(codes, self.layout, grid) if self.layout.compact else None
        ids = generate_text(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, image_codes=image_codes)  # fmt: skip
        return self.text_tokenizer.decode(ids, skip_special_tokens=True).strip()

    def generate_image(self, prompt: str | list[str], *, size: int | tuple[int, int] = 256, cfg_scale: float | None = None,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                       num_images: int = 1, return_tokens: bool = False) -> Any:  # fmt: skip
        """Text (or modality) prompt -> PIL image(s) of ``size`` pixels (multiples of 16; int = square).

        ``cfg_scale``: None = plain conditional sampling; a float runs the unconditional pass too and samples from
        cond + (scale - 1) * (cond - uncond) (so 1.0 equals plain sampling). ``temperature`` 0 = greedy.
        Returns one PIL image for a str prompt and num_images == 1, else a list; with ``return_tokens`` also the
        generated token blocks ([<boi> <h> <w> codes <eoi>] per image) of a flat model, or the generated codes
        (int64 [8, h*w] per image) of a compact one, whose blocks hold no codes."""
        from meditok.ar.generation import generate_image_codes, generate_image_tokens
        from meditok.ar.layout import token_ids_to_codes
        from meditok.tokenizer.preprocessing import to_pil

        height, width = (size, size) if isinstance(size, int) else size
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise ValueError(f"image size {height}x{width} must be positive multiples of 16")
        grid = (height // 16, width // 16)
        prompts = [prompt] * num_images if isinstance(prompt, str) else list(prompt)
        sampling = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if self.layout.compact:
            blocks = generate_image_codes(self, prompts, grid, **sampling)
        else:
            blocks = generate_image_tokens(self, prompts, grid, **sampling)
        images = []
        for block in blocks:
            codes, g = (block, grid) if self.layout.compact else token_ids_to_codes(block, self.layout)
            images.append(to_pil(self.decode_codes(torch.from_numpy(codes), g).float().clamp(-1, 1))[0])
        single = isinstance(prompt, str) and num_images == 1
        result = images[0] if single else images
        return (result, blocks[0] if single else blocks) if return_tokens else result


def _are_codes(value: Any, num_codebooks: int) -> bool:
    """Integer arrays [K, L] / [K, h, w] are codes; uint8 (and float) arrays are pixels (codes reach 4095)."""
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        return False
    tensor = torch.as_tensor(value)
    integer = not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype in (torch.uint8, torch.bool))
    return integer and tensor.ndim in (2, 3) and tensor.shape[0] == num_codebooks


def _load_image_tokenizer(path: str | os.PathLike) -> Any:
    from meditok.tokenizer import MedITok

    return MedITok.from_pretrained(str(path)).eval()
