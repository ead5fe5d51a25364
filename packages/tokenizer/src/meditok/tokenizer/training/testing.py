"""Test stand-ins for the pretrained parts (not the public API): small, randomly initialised networks in the formats
the loaders read, for tests, benchmarks and CPU dry runs. ``make_standins(DIR)`` -> {"vision_teacher", "text_tower",
"lpips", "disc_backbone": path}; ``make_hf_text_standin(DIR)`` -> a BiomedCLIP-layout text tower (tiny BERT)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..auxiliary.common import save_aux
from ..auxiliary.lpips import VGG16LPIPS
from ..auxiliary.text_towers import OPEN_CLIP_FILE, TextConfig, TextTower
from ..auxiliary.vit import ViT, ViTConfig


def _nonnegative_heads(model: VGG16LPIPS) -> VGG16LPIPS:
    with torch.no_grad():  # real LPIPS heads are non-negative, so the distance is >= 0
        for s in range(5):
            getattr(model, f"lin{s}").model[1].weight.abs_()
    return model


def make_standins(directory: str | os.PathLike, seed: int = 0, lpips_divisor: int = 8) -> dict[str, str]:
    """Small randomly initialised stand-ins for every pretrained part (tests, CPU dry runs)."""
    directory = Path(directory)
    gen = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        paths = {
            "vision_teacher": save_aux(
                ViT(ViTConfig(image_size=64, patch_size=16, width=64, depth=2, num_heads=2)),
                directory / "vision_teacher",
            ),
            "text_tower": save_aux(TextTower(TextConfig()), directory / "text_tower"),
            "lpips": save_aux(_nonnegative_heads(VGG16LPIPS(lpips_divisor)), directory / "lpips"),
            "disc_backbone": save_aux(
                ViT(ViTConfig(image_size=56, patch_size=14, width=64, depth=4, num_heads=2, layer_scale=True)),
                directory / "disc_backbone",
            ),
        }
    finally:
        torch.random.set_rng_state(gen)
    return {k: str(v) for k, v in paths.items()}


def make_hf_text_standin(directory: str | os.PathLike, seed: int = 0, vocab_words: list[str] | None = None) -> dict:
    """A tiny randomly initialised BERT + WordPiece tokenizer folder and an open_clip-style checkpoint with its
    `text.transformer.*` and MLP `text.proj.*`: the same files `format: hf_bert` reads for BiomedCLIP (tests)."""
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = (
        vocab_words
        or (
            "a an the of image scan slice chest x ray xray ct mri brain lung liver knee fundus skin lesion "
            "pathology ultrasound endoscopy dermoscopy other normal axial view with and"
        ).split()
    )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for w in words for c in w} | set(".,-;:()/'"))
    vocab = specials + sorted(set(words) - set(chars)) + chars + [f"##{c}" for c in chars]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    # The first argument is `vocab_file` in transformers 4 and `vocab` (a path or a dict) in 5.
    tokenizer = transformers.BertTokenizerFast(str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    gen = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        config = transformers.BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
        bert = transformers.BertModel(config, add_pooling_layer=False)
        config.save_pretrained(str(directory))
        proj = nn.Sequential(nn.Linear(32, 40, bias=False), nn.GELU(), nn.Linear(40, 48, bias=False))
    finally:
        torch.random.set_rng_state(gen)
    state = {f"text.transformer.{k}": v.clone() for k, v in bert.state_dict().items()}
    state.update({f"text.proj.{k}": v.clone() for k, v in proj.state_dict().items()})
    state["visual.trunk.cls_token"] = torch.zeros(1, 1, 8)  # a BiomedCLIP checkpoint also holds the image tower
    torch.save(state, directory / OPEN_CLIP_FILE)
    return {"folder": str(directory), "checkpoint": str(directory / OPEN_CLIP_FILE), "output_dim": 48}
