"""Text towers: `TextTower` (a small byte-level transformer, the stand-in for BiomedCLIP's PubMedBERT; CLS pooling)
and BiomedCLIP's own (`format: hf_bert`: a local Hugging Face BERT folder + the open_clip checkpoint's text
projection); `load_text_tower` reads either."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import AuxModelError, _load_meditok_dir, _load_strict, _read_state, _require
from .vit import _Block


@dataclass
class TextConfig:
    vocab_size: int = 259  # bytes + [CLS]=256, [PAD]=257, [EOS]=258
    context_length: int = 64
    width: int = 64
    depth: int = 2
    num_heads: int = 2
    output_dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class ByteTokenizer:
    CLS, PAD, EOS = 256, 257, 258

    def __init__(self, context_length: int):
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.CLS, *list(text.encode("utf-8"))[: self.context_length - 2], self.EOS]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class TextTower(nn.Module):
    """Byte-level transformer; CLS token -> LN -> Linear(width, output_dim) (like BiomedCLIP's text projection)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(
            _Block(cfg.width, cfg.num_heads, cfg.width * 4, False, 1e-5) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.output_dim)
        self.tokenizer = ByteTokenizer(cfg.context_length)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.proj(self.norm(h[:, 0]))

    def encode_text(self, texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return self(self.tokenizer(texts).to(device))


def load_text_tower(
    path: str | None,
    fmt: str = "meditok",
    what: str = "teacher.path",
    checkpoint: str | None = None,
    context_length: int = 256,
) -> nn.Module:
    """A frozen text tower with `.config.output_dim` and `.encode_text(texts, device) -> [B, output_dim]`."""
    p = _require(path, what)
    if fmt == "meditok":
        return _load_meditok_dir(p, "text", what).eval().requires_grad_(False)
    if fmt == "hf_bert":
        return load_hf_text_tower(p, checkpoint, context_length, what).eval().requires_grad_(False)
    raise AuxModelError(f"{what}: unknown text tower format {fmt!r} (meditok | hf_bert)")


# ---------------------------------------------------------------------------------- BiomedCLIP's text tower

OPEN_CLIP_FILE = "open_clip_pytorch_model.bin"
_TEXT_PREFIX = "text."


@dataclass
class HFTextConfig:
    width: int
    output_dim: int
    context_length: int
    proj: str  # linear | mlp


class HFTextTower(nn.Module):
    """open_clip's `HFTextEncoder` as BiomedCLIP configures it: `pooler_type: cls_last_hidden_state_pooler`,
    `proj_type: mlp`. The input ids are padded/truncated to `context_length`; the attention mask is
    `ids != pad_token_id`; the output is `proj(last_hidden_state[:, 0])` with `proj` = Linear(d, (d+out)//2, no bias)
    -> GELU -> Linear(.., out, no bias) ("mlp") or Linear(d, out, no bias) ("linear")."""

    def __init__(self, transformer: nn.Module, tokenizer: Any, proj: nn.Module, config: HFTextConfig):
        super().__init__()
        self.transformer = transformer
        self.proj = proj
        self.config = config
        self.tokenizer = tokenizer
        self.pad_token_id = transformer.config.pad_token_id if transformer.config.pad_token_id is not None else 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_token_id).long()
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.proj(hidden[:, 0])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            list(texts),
            return_tensors="pt",
            max_length=self.config.context_length,
            padding="max_length",
            truncation=True,
        ).input_ids

    def encode_text(self, texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return self(self.tokenize(texts).to(device))


def _projection_from_state(state: dict[str, torch.Tensor], source: str, what: str) -> tuple[nn.Module, str]:
    if "proj.0.weight" in state and "proj.2.weight" in state:
        hidden, d_model = state["proj.0.weight"].shape
        out, hidden2 = state["proj.2.weight"].shape
        if hidden2 != hidden:
            raise AuxModelError(f"{what}: {source}: text.proj.0 / text.proj.2 shapes do not chain")
        proj = nn.Sequential(nn.Linear(d_model, hidden, bias=False), nn.GELU(), nn.Linear(hidden, out, bias=False))
        proj.load_state_dict({"0.weight": state["proj.0.weight"], "2.weight": state["proj.2.weight"]})
        return proj, "mlp"
    if "proj.weight" in state and state["proj.weight"].ndim == 2:
        out, d_model = state["proj.weight"].shape
        proj = nn.Linear(d_model, out, bias=False)
        proj.load_state_dict({"weight": state["proj.weight"]})
        return proj, "linear"
    raise AuxModelError(
        f"{what}: {source} has no text projection (text.proj.0.weight + text.proj.2.weight, or text.proj.weight); "
        f"is it BiomedCLIP's {OPEN_CLIP_FILE}?"
    )


def load_hf_text_tower(
    folder: Path, checkpoint: str | None = None, context_length: int = 256, what: str = "teacher.path"
) -> HFTextTower:
    """BiomedCLIP's text tower from local files only (no hub): `folder` is a Hugging Face BERT folder (config.json +
    tokenizer files; its weights are used only when `checkpoint` has no `text.transformer.*`), `checkpoint` is
    BiomedCLIP's open_clip_pytorch_model.bin (default: `folder/open_clip_pytorch_model.bin`)."""
    try:
        import transformers
    except ImportError:
        raise AuxModelError(
            f"{what}: format 'hf_bert' needs transformers (pip install 'meditok-tokenizer[train]')"
        ) from None
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise AuxModelError(
            f"{what}: {folder} is not a Hugging Face model folder (no config.json); format 'hf_bert' expects e.g. a "
            "local copy of BiomedNLP-BiomedBERT-base-uncased-abstract (config.json + vocab.txt/tokenizer.json)"
        )
    ckpt_what = "teacher.checkpoint"
    if checkpoint is None and (folder / OPEN_CLIP_FILE).is_file():
        checkpoint = str(folder / OPEN_CLIP_FILE)
    if checkpoint is None:
        raise AuxModelError(
            f"{ckpt_what}: not set and {folder / OPEN_CLIP_FILE} does not exist; the text projection comes from "
            f"BiomedCLIP's {OPEN_CLIP_FILE}"
        )
    ckpt = _require(checkpoint, ckpt_what)
    full = _read_state(ckpt)
    text = {k[len(_TEXT_PREFIX) :]: v for k, v in full.items() if k.startswith(_TEXT_PREFIX)}
    proj, proj_kind = _projection_from_state(text, str(ckpt), ckpt_what)

    hf_logging = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # from_pretrained's "newly initialized" notes: we check keys ourselves
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse error of a user file becomes a start-up error naming it
        raise AuxModelError(f"{what}: cannot read the config/tokenizer in {folder}: {exc}") from None
    finally:
        transformers.logging.set_verbosity(hf_logging)
    width = getattr(config, "hidden_size", None)
    if width is None:
        raise AuxModelError(f"{what}: {folder}/config.json has no hidden_size (model_type {config.model_type!r})")
    max_positions = getattr(config, "max_position_embeddings", context_length)
    if context_length > max_positions:
        raise AuxModelError(
            f"teacher.context_length {context_length} exceeds max_position_embeddings {max_positions} of {folder}"
        )
    # open_clip builds the tower with add_pooling_layer=False for the CLS-last-hidden-state pooler.
    model = transformers.AutoModel.from_config(config, add_pooling_layer=False)
    bert = {k[len("transformer.") :]: v for k, v in text.items() if k.startswith("transformer.")}
    if bert:
        source = str(ckpt)
    else:
        weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
        if not weights:
            raise AuxModelError(
                f"{what}: {ckpt} has no text.transformer.* tensors and {folder} has no model.safetensors / "
                "pytorch_model.bin"
            )
        source = str(weights[0])
        bert = _read_state(weights[0])
        prefix = f"{config.model_type}."  # e.g. BertForMaskedLM's "bert.*"
        if not any(k in model.state_dict() for k in bert) and any(k.startswith(prefix) for k in bert):
            bert = {k[len(prefix) :]: v for k, v in bert.items() if k.startswith(prefix)}
    expected = model.state_dict()
    # Tensors this tower does not use: buffers older checkpoints saved (position_ids), the pooler, MLM heads.
    unused = ("pooler.", "cls.", "embeddings.position_ids", "embeddings.token_type_ids")
    bert = {k: v for k, v in bert.items() if k in expected or not k.startswith(unused)}
    _load_strict(model, bert, source, what)
    linear_in = proj[0] if isinstance(proj, nn.Sequential) else proj
    if linear_in.in_features != width:
        raise AuxModelError(
            f"{ckpt_what}: the text projection in {ckpt} expects width {linear_in.in_features}, "
            f"but the BERT in {folder} has hidden_size {width}"
        )
    out_dim = (proj[2] if isinstance(proj, nn.Sequential) else proj).out_features
    cfg = HFTextConfig(width=width, output_dim=out_dim, context_length=context_length, proj=proj_kind)
    return HFTextTower(model, tokenizer, proj, cfg)
