"""Test stand-ins (not the public API) for tests and CPU benchmarks: real medical text (IU chest X-ray reports), a
text tokenizer trained on it, and a small randomly initialised Llama saved as an ordinary Hugging Face folder.
Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import io
import re
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

IU_REPORTS_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
TEXT_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

# Small Llama shapes (random weights). "tiny" is for tests; "small" for the CPU benchmark.
LLAMA_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "small": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
    ),
}


def _reports_archive(source: str | Path | None) -> bytes:
    """The NLMCXR_reports.tgz bytes: from ``source`` (the .tgz, or a torchxrayvision wheel), else from an installed
    torchxrayvision (located with find_spec, never imported: it needs torchvision)."""
    if source is None:
        spec = importlib.util.find_spec("torchxrayvision")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                "the IU X-ray reports ship in torchxrayvision: `pip install --no-deps torchxrayvision` "
                "(or pass the wheel / NLMCXR_reports.tgz path)"
            )
        source = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz"
    source = Path(source)
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(IU_REPORTS_MEMBER)
    return source.read_bytes()


def iu_xray_reports(source: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The IU chest X-ray (Open-i) reports: [{"id", "indication", "findings", "impression", "images"}] (CC BY-NC-ND)."""
    reports: list[dict[str, Any]] = []
    with tarfile.open(fileobj=io.BytesIO(_reports_archive(source)), mode="r:gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.name.endswith(".xml")), key=lambda m: m.name)
        for member in members:
            root = ET.fromstring(archive.extractfile(member).read())  # type: ignore[union-attr]
            sections = {
                (el.get("Label") or "").lower(): " ".join((el.text or "").split()) for el in root.iter("AbstractText")
            }
            reports.append(
                {
                    "id": Path(member.name).stem,
                    "indication": sections.get("indication", ""),
                    "findings": sections.get("findings", ""),
                    "impression": sections.get("impression", ""),
                    "images": [el.get("id") for el in root.iter("parentImage")],
                }
            )
            if limit is not None and len(reports) >= limit:
                break
    return reports


def report_texts(reports: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in reports:
        text = " ".join(t for t in (r["indication"], r["findings"], r["impression"]) if t and "XXXX" not in t[:4])
        text = re.sub(r"\s+", " ", text).strip()
        if text:
            out.append(text)
    return out


def train_text_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 1000) -> Any:
    """A byte-level BPE (``tokenizers``) trained on ``texts``, saved as a Hugging Face tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TEXT_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def build_llama(out_dir: str | Path, text_tokenizer: Any, shape: str = "tiny", seed: int = 0, **overrides: Any) -> Path:
    """A randomly initialised Llama (untied embeddings) for ``text_tokenizer``, saved with it as a HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = {**LLAMA_SHAPES[shape], **overrides}
    config = LlamaConfig(
        vocab_size=len(text_tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=text_tokenizer.bos_token_id,
        eos_token_id=text_tokenizer.eos_token_id,
        pad_token_id=text_tokenizer.pad_token_id,
        **dims,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir))
    text_tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)


def train_deterministically(config: dict[str, Any]) -> dict[str, Any]:
    """`meditok.ar.train.train(config)` on one thread with deterministic kernels (so a test's few overfitting steps
    give the same model on every machine), the caller's torch settings restored afterwards."""
    import torch

    from meditok.ar.train import train

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return train(config)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
