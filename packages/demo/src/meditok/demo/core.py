"""What the demo's page does, without the page: uploads through the image-input contract, reconstruction metrics, the
codes file, and the unified model behind Ask / Generate (in-process through transformers, or a `meditok-ar serve`).

Every upload takes the CLI's steps (`meditok encode` / `reconstruct`): the header check (`check_image_header`), then
`load_image_with_source` with the model's `image_input` and the page's CT window, then `preprocess`; so the codes equal
the CLI's for the same file, and a file the CLI refuses is refused here with the CLI's one-line reason
(`ImageFileError` / `MedicalImageError`), naming the uploaded file rather than the server's temporary copy.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Where the real-LLM recipe (packages/ar_model/recipes/) leaves its two models; with no flags the demo loads them when
# they exist. One constant, overridable with MEDITOK_DEMO_RUN, so that a recipe run elsewhere needs no flags either.
RECIPE_RUN = Path(os.environ.get("MEDITOK_DEMO_RUN", "runs/smollm2-recipe"))
RECIPE_TOKENIZER = "tokenizer"
RECIPE_MODEL = "merged"

# A zipped DICOM series is unpacked into one flat folder (names reduced to their last part: no path leaves it) and read
# by meditok-data as a series. These bounds keep a zip bomb from filling the disk before any DICOM check runs.
MAX_ZIP_MEMBERS = 4096
MAX_ZIP_BYTES = 2 << 30

CT_WINDOW_CHOICES = ["common", "soft_tissue", "lung", "bone", "full", "dicom"]


class DemoError(ValueError):
    """A one-line message for the page (a bad zip, a missing model); file errors keep the CLI's `ImageFileError`."""


# ------------------------------------------------------------------------------------------------------ models


def recipe_paths(run: Path | None = None) -> tuple[Path | None, Path | None]:
    """The recipe's (tokenizer folder, merged model folder), each None when not built yet."""
    run = RECIPE_RUN if run is None else Path(run)
    tokenizer, merged = run / RECIPE_TOKENIZER, run / RECIPE_MODEL
    return (
        tokenizer if (tokenizer / "config.json").exists() else None,
        merged if (merged / "config.json").exists() else None,
    )


def describe_tokenizer(tok: Any, source: str | os.PathLike) -> str:
    """What the page says is loaded: the published weights, or a small demo model whose pictures are rough."""
    cfg = tok.config
    size = f"{cfg.name}, {tok.num_parameters():,} parameters"
    if cfg.name == "meditok-l":
        return f"published MedITok weights ({size}) from `{source}`"
    return f"small demo tokenizer ({size}; far below the published weights' quality) from `{source}`"


# ------------------------------------------------------------------------------------------------------ uploads


def unpack_series(zip_path: Path, out_dir: Path) -> Path:
    """A zip of DICOM slices -> a flat folder meditok-data reads as one series (its largest SeriesInstanceUID)."""
    label = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DemoError(f"{label}: not a readable zip file ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise DemoError(f"{label}: the zip holds no files")
        if len(members) > MAX_ZIP_MEMBERS:
            raise DemoError(f"{label}: the zip holds {len(members)} files, more than the {MAX_ZIP_MEMBERS} allowed")
        declared = sum(m.file_size for m in members)
        if declared > MAX_ZIP_BYTES:
            raise DemoError(f"{label}: the zip unpacks to {declared} bytes, more than the {MAX_ZIP_BYTES} allowed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for index, member in enumerate(members):
            # A flat, numbered name: "../x" or "/etc/x" cannot leave out_dir and equal names cannot collide.
            target = out_dir / f"{index:05d}_{Path(member.filename.replace(chr(92), '/')).name or 'file'}"
            with archive.open(member) as source, open(target, "wb") as sink:
                # Copy no more than the declared size: a member whose header lies about its size stops there.
                sink.write(source.read(member.file_size + 1)[: member.file_size])
    return out_dir


@dataclass
class Tokenized:
    """One upload through the tokenizer: images as uint8 [H, W, 3], codes int64 [8, h, w]."""

    name: str
    original: np.ndarray
    reconstruction: np.ndarray
    error_map: np.ndarray
    psnr: float
    ssim: float
    codes: np.ndarray
    code_grid: np.ndarray
    usage: list[tuple[int, int]]  # per sub-codebook: (distinct codes in this image, positions)
    notes: list[str] = field(default_factory=list)


def _label(message: str, path: Path, name: str) -> str:
    """The CLI names the file as the user gave it; an upload's path is the server's temporary copy: use its name."""
    return message.replace(str(path), name)


def load_upload(
    path: str | os.PathLike,
    name: str,
    spec: Any,
    workdir: Path,
    slice_index: int | None = None,
) -> tuple[np.ndarray, Any, list[str]]:
    """An uploaded file -> (pixels in [0, 1], meditok-data's image or None, notes), the CLI's steps and messages.

    A .zip is a DICOM series (its middle axial slice, or ``slice_index``); a volume takes ``slice_index`` when given."""
    from meditok.data import MedicalImageError, load_unit_image
    from meditok.tokenizer.image_files import ImageFileError, check_image_header, load_image_with_source

    path = Path(path)
    notes: list[str] = []
    try:
        if name.lower().endswith(".zip"):
            folder = unpack_series(path, workdir / "series")
            pixels, source = load_unit_image(folder, spec, name=name, slice_index=slice_index)
        else:
            header = check_image_header(path)
            if slice_index is not None and header.kind in ("nifti", "volume"):
                pixels, source = load_unit_image(path, spec, slice_index=slice_index)
            else:
                pixels, source = load_image_with_source(path, spec)
            if header.has_alpha:
                notes.append(f"note: {name} has an alpha channel ({header.mode}); alpha is dropped")
            if header.kind == "nifti":
                notes += _time_points(path, name)
    except (ImageFileError, MedicalImageError, DemoError) as exc:
        raise ImageFileError(_label(str(exc), path, name)) from None
    except (ValueError, TypeError, IndexError) as exc:  # what the CLI reports as "<file>: <problem>"
        raise ImageFileError(_label(f"{path}: {exc}", path, name)) from None
    except MemoryError:
        raise ImageFileError(f"{name}: out of memory reading it") from None
    metadata = getattr(source, "metadata", None) or {}
    if "slice" in metadata:  # the CLI's note, word for word where it applies
        which = "middle " if slice_index is None else ""
        notes.insert(0, f"note: {name} is a volume; using its {which}{metadata.get('plane', 'axial')} slice "
                        f"(index {metadata['slice']}), as meditok.data.read_2d does")  # fmt: skip
    elif "frame" in metadata:
        notes.append(f"note: {name} has several frames; using frame {metadata['frame']}")
    return pixels, source, notes


def _time_points(path: Path, name: str) -> list[str]:
    """A 4-D NIfTI is read as meditok-data reads it (the CLI too): the slice of its first time point; say so."""
    import nibabel

    shape = nibabel.load(path).header.get_data_shape()  # the header only
    if len(shape) == 4 and shape[3] > 1:
        return [f"note: {name} is 4-D ({' x '.join(map(str, shape))}); using its first time point of {shape[3]}"]
    return []


def image_spec(tok: Any, ct_window: str | None) -> Any:
    """The model's recorded image-input settings with the page's CT window (None keeps the recorded one)."""
    from meditok.tokenizer.preprocessing import parse_ct_window

    return tok.image_input.with_overrides(ct_window=parse_ct_window(ct_window or None))


def _colour(values: np.ndarray, cmap: str, vmax: float) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[cmap](np.clip(values / max(vmax, 1e-12), 0, 1))[..., :3] * 255).round().astype(np.uint8)


@torch.no_grad()
def tokenize_upload(
    tok: Any, path: str | os.PathLike, name: str, workdir: Path, ct_window: str | None = None,
    slice_index: int | None = None, progress: Any = None,
) -> Tokenized:  # fmt: skip
    """Upload -> codes, reconstruction, PSNR (the CLI's `psnr` on the prepared input), SSIM (meditok-eval's)."""
    from meditok.evals.metrics import psnr_ssim
    from meditok.tokenizer.preprocessing import preprocess, psnr, to_uint8

    step = progress or (lambda fraction, desc=None: None)
    spec = image_spec(tok, ct_window)
    step(0.05, desc="reading the file")
    pixels, _, notes = load_upload(path, name, spec, workdir, slice_index)
    x = preprocess(pixels, spec).to(tok.device)
    step(0.3, desc="encoding")
    codes = tok.encode(x)
    grid = (x.shape[-2] // 16, x.shape[-1] // 16)
    step(0.6, desc="decoding")
    recon = tok.decode(codes, grid=grid).float()
    score = psnr(x.float(), recon)  # as `meditok reconstruct` prints it
    _, ssim = psnr_ssim(x.float(), recon)
    original, rebuilt = to_uint8(x.float())[0], to_uint8(recon)[0]
    error = np.abs(original.astype(np.int16) - rebuilt.astype(np.int16)).mean(axis=-1)
    grid_codes = codes[0].reshape(tok.config.num_codebooks, *grid).cpu().numpy()
    # Sub-codebook 0 as a colour map, blown up to the image's size so that each 16x16 patch shows its code.
    code_grid = _colour(grid_codes[0].repeat(16, 0).repeat(16, 1).astype(np.float64), "viridis",
                        tok.config.codebook_size - 1)  # fmt: skip
    usage = [(len(np.unique(k)), k.size) for k in grid_codes]
    return Tokenized(
        name=name,
        original=original,
        reconstruction=rebuilt,
        error_map=_colour(error, "inferno", max(float(error.max()), 1.0)),
        psnr=float(score),
        ssim=float(ssim[0]),
        codes=grid_codes,
        code_grid=code_grid,
        usage=usage,
        notes=notes,
    )


def write_codes(result: Tokenized, out: Path) -> Path:
    """The CLI's codes file (`meditok encode -o codes.npz`): uint16 `codes_0` [8, h, w], `names`, `format`."""
    from meditok.tokenizer.cli import CODES_FORMAT

    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, names=np.array([result.name]), format=np.array(CODES_FORMAT),
                        codes_0=result.codes.astype(np.uint16))  # fmt: skip
    return out


def stem(name: str) -> str:
    lowered = name.lower()
    for suffix in (".nii.gz", ".zip", ".dcm", ".dicom", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return Path(name[: -len(suffix)]).name
    return Path(name).stem or "image"


# --------------------------------------------------------------------------------------------- unified model


@dataclass
class Image:
    """An upload for Ask: the file, its name, the settings it was read with, and its pixels when they are not simply
    the file's (a zipped series, a chosen slice), else None."""

    path: Path
    name: str
    spec: Any
    pixels: np.ndarray | None


def question_image(backend: Any, path: str | os.PathLike, name: str, workdir: Path, ct_window: str | None,
                   slice_index: int | None) -> Image:  # fmt: skip
    """Read (and so check, with the CLI's messages) an upload with the unified model's image-input settings."""
    spec = backend.image_input.with_overrides(ct_window=image_spec(backend, ct_window).ct_window)
    pixels, _, _ = load_upload(path, name, spec, workdir, slice_index)
    whole_file = not name.lower().endswith(".zip") and slice_index is None
    return Image(Path(path), name, spec, None if whole_file else pixels)


class LocalModel:
    """A merged (or extended) MedITok-AR folder through transformers, in this process: `MedITokAR.answer` and
    `generate_image`."""

    def __init__(self, folder: str | os.PathLike, device: str = "cpu") -> None:
        from meditok.ar import MedITokAR

        self.folder = Path(folder)
        self.model = MedITokAR.from_pretrained(self.folder)
        self.model.llm.to(device)

    def describe(self) -> str:
        base = self.model.layout.extra.get("base_architecture") or type(self.model.llm).__name__
        params = sum(p.numel() for p in self.model.llm.parameters())
        return f"unified model `{self.folder}` ({base}, {params:,} parameters) through transformers in this process"

    @property
    def image_input(self) -> Any:
        return self.model.image_input

    def answer(self, image: Image, question: str, max_new_tokens: int) -> Iterator[str]:
        """`MedITokAR.answer` on the file (its path, as `meditok-ar answer` reads it) or the chosen slice's pixels."""
        source = image.path if image.pixels is None else image.pixels
        yield self.model.answer(source, question, max_new_tokens=max_new_tokens,
                                image_input={"ct_window": image.spec.ct_window})  # fmt: skip

    def generate(self, prompt: str, size: int, cfg_scale: float | None, temperature: float, top_k: int,
                 seed: int | None) -> Any:  # fmt: skip
        return self.model.generate_image(prompt, size=size, cfg_scale=cfg_scale, temperature=temperature,
                                         top_k=top_k, seed=seed)  # fmt: skip


def _mime(name: str, data: bytes) -> str:
    from meditok.tokenizer.image_files import is_dicom_bytes

    lowered = name.lower()
    if is_dicom_bytes(data[:132]) or lowered.endswith((".dcm", ".dicom")):
        return "application/dicom"
    if lowered.endswith((".nii", ".nii.gz")):
        return "application/octet-stream"  # the plugin reads NIfTI bytes by their magic, whatever the MIME type
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".tif": "image/tiff", ".tiff": "image/tiff"}.get(
        Path(lowered).suffix, "image/png"
    )


class ServerModel:
    """A running `meditok-ar serve`: the plugin's OpenAI routes (`/v1/chat/completions` streamed, with the file's
    bytes as a data URL, read by the server through the same contract; `/v1/images/generations`)."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            reply = requests.get(f"{self.url}/v1/models", timeout=30)
            reply.raise_for_status()
            self.model_id = reply.json()["data"][0]["id"]
        except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
            raise DemoError(f"{self.url}: not a reachable MedITok-AR server ({exc})") from None
        self.text_vocab_size = self._text_vocab_size()

    def _text_vocab_size(self) -> int | None:
        """The layout's T, the id of `<image>` (the first id after the text vocabulary), from vLLM's /tokenize: answers
        are then restricted to text ids as `MedITokAR.answer` restricts them (else a model may write image codes)."""
        import requests

        try:
            reply = requests.post(f"{self.url}/tokenize", json={"model": self.model_id, "prompt": "<image>",
                                                                 "add_special_tokens": False}, timeout=30)  # fmt: skip
            tokens = reply.json()["tokens"] if reply.status_code == 200 else []
        except (requests.RequestException, ValueError, KeyError):
            tokens = []
        return tokens[0] if len(tokens) == 1 else None

    def describe(self) -> str:
        return f"unified model `{self.model_id}` on the vLLM server {self.url}"

    @property
    def image_input(self) -> Any:
        from meditok.tokenizer.preprocessing import ImageInput

        return ImageInput()  # the server applies its model's own settings; this only checks the upload

    def answer(self, image: Image, question: str, max_new_tokens: int) -> Iterator[str]:
        """The file's bytes (DICOM/NIfTI read by the server in physical units), or for a zipped series / a chosen
        slice the 8-bit picture of the pixels read here (the server's CT window then no longer applies)."""
        import requests
        from PIL import Image as PILImage

        if image.pixels is None:
            data, name = Path(image.path).read_bytes(), image.name
        else:
            buffer = io.BytesIO()
            pixels = image.pixels if image.pixels.dtype == np.uint8 else (image.pixels * 255).round().astype(np.uint8)
            PILImage.fromarray(pixels).save(buffer, format="PNG")
            data, name = buffer.getvalue(), "slice.png"
        url = f"data:{_mime(name, data)};base64,{base64.b64encode(data).decode('ascii')}"
        body = {
            "model": self.model_id,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}],
                }
            ],  # fmt: skip
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "stream": True,
        }
        if self.text_vocab_size:
            body["allowed_token_ids"] = list(range(self.text_vocab_size))
        with requests.post(f"{self.url}/v1/chat/completions", json=body, stream=True, timeout=self.timeout) as reply:
            if reply.status_code != 200:
                raise DemoError(f"the server refused the question: {_server_error(reply)}")
            text = ""
            for line in reply.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                delta = json.loads(line[5:])["choices"][0].get("delta", {}).get("content") or ""
                text += delta
                yield text

    def generate(self, prompt: str, size: int, cfg_scale: float | None, temperature: float, top_k: int,
                 seed: int | None) -> Any:  # fmt: skip
        import requests
        from PIL import Image

        body: dict[str, Any] = {"prompt": prompt, "size": f"{size}x{size}", "n": 1, "temperature": temperature,
                                "top_k": top_k}  # fmt: skip
        if seed is not None:
            body["seed"] = seed
        if cfg_scale is not None:
            body["cfg_scale"] = cfg_scale
        reply = requests.post(f"{self.url}/v1/images/generations", json=body, timeout=self.timeout)
        if reply.status_code != 200:
            raise DemoError(f"the server refused the request: {_server_error(reply)}")
        return Image.open(io.BytesIO(base64.b64decode(reply.json()["data"][0]["b64_json"]))).convert("RGB")


def _server_error(reply: Any) -> str:
    try:
        return str(reply.json().get("error", {}).get("message") or reply.text)[:500]
    except ValueError:
        return f"HTTP {reply.status_code}"


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return function(*args, **kwargs), time.perf_counter() - start


# Request folders older than this are removed when a new one is made: a long-running demo does not fill the disk
# (Gradio copies each download into its own cache, which `delete_cache` in app.py clears on the same schedule).
KEEP_SECONDS = 3600


def fresh_dir(root: Path) -> Path:
    """A new folder per request under ``root`` (downloads must not overwrite another visitor's)."""
    import tempfile

    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - KEEP_SECONDS
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # removed by a concurrent request meanwhile
            pass
    return Path(tempfile.mkdtemp(dir=root))


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
