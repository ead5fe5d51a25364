"""DICOM in ``image_url`` data URLs: vLLM's image loader only knows what PIL opens, so the plugin wraps
``ImageMediaIO.load_bytes``: bytes with the DICOM preamble (``DICM`` at offset 128) are read by meditok-data and
windowed by modality (CT: the default soft-tissue window; 8-bit data as is; deeper grayscale by percentiles), then
handed on as an 8-bit RGB PIL image. Everything else goes to vLLM's own loader unchanged."""

from __future__ import annotations

import os
import tempfile
from typing import Any

_MARK = "_meditok_dicom"


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def dicom_to_pil(data: bytes) -> Any:
    """DICOM bytes -> windowed 8-bit RGB PIL image (raises ValueError with the reader's message)."""
    import numpy as np
    from PIL import Image

    from meditok.data import MedicalImageError, normalize_intensity, read_dicom

    fd, name = tempfile.mkstemp(suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        image = read_dicom(name)
        if image.num_frames > 1:
            image = image.frame(0)
        values = normalize_intensity(image)  # [-1, 1], (H, W) or (H, W, 3)
    except (MedicalImageError, OSError) as error:
        raise ValueError(f"Failed to load DICOM image: {error}") from None
    finally:
        os.unlink(name)
    pixels = np.clip((values + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray(pixels, "RGB")


def install_dicom_loader() -> None:
    """Patch vLLM's ImageMediaIO once per process (idempotent)."""
    from vllm.multimodal.media import image as media_image

    io_cls = media_image.ImageMediaIO
    if getattr(io_cls.load_bytes, _MARK, False):
        return
    original = io_cls.load_bytes

    def load_bytes(self: Any, data: bytes) -> Any:
        if not is_dicom(data):
            return original(self, data)
        picture = dicom_to_pil(data)
        w, h = picture.size
        max_pixels = media_image.envs.VLLM_MAX_IMAGE_PIXELS
        if max_pixels > 0 and w * h > max_pixels:
            raise ValueError(f"Image dimensions {w}x{h} ({w * h} pixels) exceed the maximum of {max_pixels} pixels.")
        return media_image.MediaWithBytes(picture, data, None)

    setattr(load_bytes, _MARK, True)
    io_cls.load_bytes = load_bytes
