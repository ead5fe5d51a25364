"""Medical files in ``image_url`` data URLs. vLLM's image loader knows only what PIL opens, and turns every picture into
8-bit RGB, so the plugin wraps ``ImageMediaIO.load_bytes``: DICOM (``DICM`` after the 128-byte preamble), NIfTI and
rasters deeper than 8 bits (16-bit PNG / TIFF) are read in memory by meditok-data (`load_unit_image`, no temp file) into
the image-input contract's [0, 1] pixels, handed on losslessly as a PIL image: "L" / "RGB" for 8-bit data, 32-bit float
"F" for deeper grayscale (a deep RGB image, rare, is rounded to 8 bits). The processor then prepares exactly what a file
door prepares. Ordinary 8-bit pictures go to vLLM's own loader unchanged (its RGB equals the file door's pixels)."""

from __future__ import annotations

from typing import Any

_MARK = "_meditok_medical"
MAX_VOXELS_ENV, DEFAULT_MAX_VOXELS = "MEDITOK_VLLM_MAX_VOXELS", 2**26  # a NIfTI upload's volume (512 x 512 x 256)
CONNECTOR = "meditok"  # VLLM_MEDIA_CONNECTOR value `meditok-ar serve` sets: data URLs only unless domains are allowed


def is_medical(data: bytes) -> bool:
    """Bytes the plugin reads itself: DICOM, NIfTI, or a raster deeper than 8 bits."""
    import io

    from PIL import Image

    from meditok.data.loading import looks_like_nifti_bytes
    from meditok.tokenizer.image_files import is_dicom_bytes
    from meditok.tokenizer.preprocessing import DEEP_PIL_MODES

    if is_dicom_bytes(data[:132]) or looks_like_nifti_bytes(data):
        return True
    try:
        with Image.open(io.BytesIO(data)) as image:  # header only
            return image.mode in (*DEEP_PIL_MODES, "F")
    except Exception:  # noqa: BLE001 - not ours: vLLM's loader reports it
        return False


def check_raster_size(data: bytes, max_pixels: int) -> None:
    """ValueError (HTTP 400) if a picture PIL opens declares more than ``max_pixels`` pixels (0 or less: no limit),
    read from its header before any decode. PIL itself refuses headers over twice ``Image.MAX_IMAGE_PIXELS`` with a
    ``DecompressionBombError`` that vLLM's loader lets through as a 500."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:  # header only
            w, h = image.size
    except Image.DecompressionBombError as error:
        limit = f"{max_pixels} pixels (VLLM_MAX_IMAGE_PIXELS)" if max_pixels > 0 else "PIL's bomb limit"
        raise ValueError(f"Image too large, the maximum is {limit}: {error}") from None
    except Exception:  # noqa: BLE001 - not a picture PIL opens: the loaders report it
        return
    if max_pixels > 0 and w * h > max_pixels:
        raise ValueError(f"Image dimensions {w}x{h} ({w * h} pixels) exceed the maximum of {max_pixels} pixels.")


def max_voxels() -> int:
    """The most voxels a NIfTI upload's header may declare (``MEDITOK_VLLM_MAX_VOXELS``, default 2**26; 0: no limit):
    the whole volume is read for its middle slice, so VLLM_MAX_IMAGE_PIXELS (a picture's limit) does not bound it."""
    import os

    value = os.environ.get(MAX_VOXELS_ENV, "").strip()
    try:
        return int(value) if value else DEFAULT_MAX_VOXELS
    except ValueError:
        raise ValueError(f"{MAX_VOXELS_ENV} must be an integer, got {value!r}") from None


def contract_picture(data: bytes, max_pixels: int | None = None) -> Any:
    """Medical bytes -> the contract's [0, 1] pixels as a lossless PIL image (ValueError with the reader's message).
    ``max_pixels``: a DICOM declaring more values (rows x columns x frames x samples) is refused from its header; a
    NIfTI declaring more than `max_voxels` voxels likewise."""
    import numpy as np
    from PIL import Image

    from meditok.data import MedicalImageError, load_unit_image

    try:
        pixels, _ = load_unit_image(data, name="image_url", max_pixels=max_pixels, max_voxels=max_voxels())
    except MedicalImageError as error:
        raise ValueError(f"Failed to load medical image: {error}") from None
    if pixels.dtype == np.uint8:
        return Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if pixels.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), "F")
    return Image.fromarray(np.round(pixels * 255.0).astype(np.uint8), "RGB")


def install_dicom_loader() -> None:
    """Patch vLLM's ImageMediaIO once per process (idempotent)."""
    from vllm.multimodal.media import image as media_image

    io_cls = media_image.ImageMediaIO
    if getattr(io_cls.load_bytes, _MARK, False):
        return
    original = io_cls.load_bytes

    def load_bytes(self: Any, data: bytes) -> Any:
        max_pixels = media_image.envs.VLLM_MAX_IMAGE_PIXELS
        check_raster_size(data, max_pixels)
        if not is_medical(data):
            return original(self, data)
        picture = contract_picture(data, max_pixels)
        w, h = picture.size
        if max_pixels > 0 and w * h > max_pixels:
            raise ValueError(f"Image dimensions {w}x{h} ({w * h} pixels) exceed the maximum of {max_pixels} pixels.")
        return media_image.MediaWithBytes(picture, data, None)

    setattr(load_bytes, _MARK, True)
    io_cls.load_bytes = load_bytes


def install_media_connector() -> None:
    """Register the ``meditok`` media connector (idempotent): vLLM's HTTP connector, except that an ``http(s)`` image
    URL is refused unless the server was started with ``--allowed-media-domains`` (and then only those hosts), and a
    ``file:`` URL without ``--allowed-local-media-path`` is a 400, not a 500. vLLM's own connector fetches any URL when
    no domain is listed: a server-side request forgery (and a port scanner, through its different errors)."""
    from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY, MediaConnector

    if CONNECTOR in MEDIA_CONNECTOR_REGISTRY.name2class:
        return

    class DataURLMediaConnector(MediaConnector):
        def _assert_url_in_allowed_media_domains(self, url_spec: Any) -> None:
            if not self.allowed_media_domains:
                raise ValueError(
                    "this server reads images from data URLs only (data:<mime>;base64,...); fetching "
                    f"{url_spec.scheme}:// URLs needs --allowed-media-domains"
                )
            super()._assert_url_in_allowed_media_domains(url_spec)

        def _load_file_url(self, url_spec: Any, media_io: Any) -> Any:
            if self.allowed_local_media_path is None:
                raise ValueError("this server reads no local files: file:// URLs need --allowed-local-media-path")
            return super()._load_file_url(url_spec, media_io)

    MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR)(DataURLMediaConnector)
