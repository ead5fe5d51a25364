"""Image files (and their bytes) into the image-input contract, for the doors that take a file: the CLI, `MedITok`,
meditok-ar, the vLLM plugin, meditok-eval.

With meditok-data installed every file goes through it (`meditok.data.load_unit_image`: DICOM / NIfTI / PNG / TIFF
in physical units, windowed by modality), so a file gives the same pixels whichever package opens it. Without it the
tokenizer still reads PNG / JPEG / TIFF / BMP through PIL with the same in-memory rules (`unit_pixels`); DICOM and
NIfTI then stop with a one-line error naming the file and the install command.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .preprocessing import ImageInput, unit_pixels

# Suffixes that need meditok-data (physical units, volumes); anything else is tried as a raster image.
MEDICAL_SUFFIXES = (".dcm", ".dicom", ".ima", ".nii", ".nii.gz", ".inv3")
DICOM_MAGIC_OFFSET = 128


class ImageFileError(ValueError):
    """A file that cannot become tokenizer input; the message names the file and the problem in one line."""


def is_dicom_bytes(head: bytes) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble (PACS exports often have no suffix)."""
    return len(head) >= DICOM_MAGIC_OFFSET + 4 and head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as handle:
            return is_dicom_bytes(handle.read(DICOM_MAGIC_OFFSET + 4))
    except OSError:
        return False


def _data_loader():
    try:  # optional: the tokenizer never requires meditok-data
        from meditok.data import MedicalImageError, load_unit_image
    except ImportError:
        return None, None
    return load_unit_image, MedicalImageError


def load_image(
    source: str | os.PathLike | bytes, spec: ImageInput | None = None, name: str | None = None
) -> np.ndarray:
    """A file (path) or its bytes -> 2-D pixels in [0, 1] for `preprocess` (uint8, or float32).

    Volumes give their middle axial slice and multi-frame DICOMs their first frame (meditok-data's `read_2d`).
    ``name`` labels bytes in messages (an upload's file name).
    """
    spec = spec or ImageInput()
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
    label = name or ("<image bytes>" if data is not None else str(source))
    if data is None and not Path(source).is_file():  # type: ignore[arg-type]
        raise ImageFileError(f"{label}: no such file")
    load_unit_image, medical_error = _data_loader()
    if load_unit_image is not None:
        try:
            return load_unit_image(data if data is not None else source, spec, name=name)[0]
        except medical_error as exc:
            raise ImageFileError(str(exc)) from None
    lowered = label.lower()
    dicom = is_dicom_bytes(data[: DICOM_MAGIC_OFFSET + 4]) if data is not None else is_dicom_file(source)  # type: ignore[arg-type]
    if dicom or lowered.endswith(MEDICAL_SUFFIXES):
        raise ImageFileError(f"{label}: reading DICOM/NIfTI needs meditok-data (pip install meditok-data)")
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if data is not None else source) as image:
            image.load()
            return unit_pixels(image, spec.percentiles)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageFileError(f"{label}: not a recognised image format ({exc})") from None
    except (TypeError, ValueError) as exc:
        raise ImageFileError(f"{label}: {exc}") from None
