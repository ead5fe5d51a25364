"""Medical files in ``image_url`` data URLs: vLLM's image loader only knows what PIL opens, so the plugin wraps
``ImageMediaIO.load_bytes``: DICOM (``DICM`` after the 128-byte preamble) and NIfTI bytes are read in memory by
meditok-data, so that vLLM accepts them. What vLLM keeps is a ``MediaWithBytes`` holding the original bytes; the
multimodal processor tokenises those bytes through the image-input contract (`processing.image_to_token_ids`), so
the 8-bit preview made here is never what the model sees. Everything else goes to vLLM's own loader unchanged."""

from __future__ import annotations

from typing import Any

_MARK = "_meditok_medical"


def is_medical(data: bytes) -> bool:
    from meditok.data.loading import looks_like_nifti_bytes
    from meditok.tokenizer.image_files import is_dicom_bytes

    return is_dicom_bytes(data[:132]) or looks_like_nifti_bytes(data)


def medical_preview(data: bytes) -> Any:
    """DICOM / NIfTI bytes -> an 8-bit RGB PIL preview (raises ValueError with the reader's one-line message)."""
    import numpy as np
    from PIL import Image

    from meditok.data import MedicalImageError, load_unit_image

    try:
        pixels, _ = load_unit_image(data, name="image_url")
    except MedicalImageError as error:
        raise ValueError(f"Failed to load medical image: {error}") from None
    if pixels.dtype != np.uint8:
        pixels = np.round(pixels * 255.0).astype(np.uint8)
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
        if not is_medical(data):
            return original(self, data)
        picture = medical_preview(data)
        w, h = picture.size
        max_pixels = media_image.envs.VLLM_MAX_IMAGE_PIXELS
        if max_pixels > 0 and w * h > max_pixels:
            raise ValueError(f"Image dimensions {w}x{h} ({w * h} pixels) exceed the maximum of {max_pixels} pixels.")
        return media_image.MediaWithBytes(picture, data, None)

    setattr(load_bytes, _MARK, True)
    io_cls.load_bytes = load_bytes
