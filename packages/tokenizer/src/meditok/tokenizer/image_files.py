"""Image files (and their bytes) into the image-input contract, for the doors that take a file: the CLI, `MedITok`,
meditok-ar, the vLLM plugin, meditok-eval.

With meditok-data installed every file goes through it (`meditok.data.load_unit_image`: DICOM / NIfTI / PNG / TIFF
in physical units, windowed by modality), so a file gives the same pixels whichever package opens it. Without it the
tokenizer still reads PNG / JPEG / TIFF / BMP through PIL with the same in-memory rules (`unit_pixels`); DICOM and
NIfTI then stop with a one-line error naming the file and the install command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
    return load_image_with_source(source, spec, name)[0]


def load_image_with_source(
    source: str | os.PathLike | bytes, spec: ImageInput | None = None, name: str | None = None
) -> tuple[np.ndarray, object | None]:
    """`load_image`, also returning meditok-data's `MedicalImage` the pixels came from (None when read by PIL): its
    ``metadata`` says which slice of a volume ("plane", "slice") or frame was taken."""
    spec = spec or ImageInput()
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
    label = name or ("<image bytes>" if data is not None else str(source))
    if data is None and not Path(source).is_file():  # type: ignore[arg-type]
        raise ImageFileError(f"{label}: no such file")
    load_unit_image, medical_error = _data_loader()
    if load_unit_image is not None:
        try:
            return load_unit_image(data if data is not None else source, spec, name=name)
        except medical_error as exc:
            raise ImageFileError(str(exc)) from None
        except _pil_bomb_error() as exc:
            raise ImageFileError(f"{label}: image too large ({exc})") from None
    lowered = label.lower()
    dicom = is_dicom_bytes(data[: DICOM_MAGIC_OFFSET + 4]) if data is not None else is_dicom_file(source)  # type: ignore[arg-type]
    if dicom or lowered.endswith(MEDICAL_SUFFIXES):
        raise ImageFileError(f"{label}: reading DICOM/NIfTI needs meditok-data (pip install meditok-data)")
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if data is not None else source) as image:
            image.load()
            return unit_pixels(image, spec.percentiles), None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"{label}: image too large ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageFileError(f"{label}: not a recognised image format ({exc})") from None
    except (TypeError, ValueError) as exc:
        raise ImageFileError(f"{label}: {exc}") from None


def _pil_bomb_error() -> type[Exception]:
    from PIL import Image

    return Image.DecompressionBombError


# ------------------------------------------------------------------------------------------------ input checks
# Cheap checks the command lines run on every input path before they load any weights.

# Raster suffixes a directory walk takes (meditok-data reads the same set); DICOM files without a suffix are found by
# their "DICM" magic.
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_SUFFIXES = RASTER_SUFFIXES + MEDICAL_SUFFIXES
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


@dataclass(frozen=True)
class ImageHeader:
    """What a header check found: ``kind`` "dicom" / "nifti" / "raster"; for rasters PIL's size (w, h) and mode."""

    path: Path
    kind: str
    size: tuple[int, int] | None = None
    mode: str | None = None

    @property
    def has_alpha(self) -> bool:
        return self.mode in ALPHA_MODES


def check_image_header(path: str | os.PathLike) -> ImageHeader:
    """A cheap check that ``path`` is an image file the contract can read, without decoding pixels.

    Raises `ImageFileError` (one line naming the file) for a missing path, a directory, a FIFO or other non-regular
    file, an empty file, a raster PIL cannot identify, or a raster whose header declares more pixels than PIL's
    ``Image.MAX_IMAGE_PIXELS`` (the decompression-bomb limit, ~89 M pixels by default). DICOM and NIfTI are recognised
    by magic / suffix; meditok-data checks their headers when it reads them.
    """
    import stat

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        raise ImageFileError(f"{path}: no such file") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageFileError(f"{path}: is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise ImageFileError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise ImageFileError(f"{path}: empty file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(NIFTI_HEADER_BYTES)
    except OSError as exc:
        raise ImageFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lowered = path.name.lower()
    if is_dicom_bytes(head) or lowered.endswith((".dcm", ".dicom", ".ima")):
        return ImageHeader(path, "dicom")
    if lowered.endswith((".nii", ".nii.gz")) or head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return ImageHeader(path, "nifti")
    if lowered.endswith(".inv3"):
        return ImageHeader(path, "volume")
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            mode = image.mode
            if image.info.get("transparency") is not None and mode in ("P", "L", "RGB"):
                mode = {"P": "PA", "L": "LA", "RGB": "RGBA"}[mode]
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"{path}: image too large ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageFileError(f"{path}: not a recognised image format ({exc})") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise ImageFileError(f"{path}: image too large ({width}x{height} pixels, more than the {limit} pixel limit)")
    return ImageHeader(path, "raster", (width, height), mode)


NIFTI_HEADER_BYTES = 348


def _looks_like_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES) or (not path.suffix and is_dicom_file(path))


def expand_inputs(paths: list[str | os.PathLike]) -> tuple[list[Path], list[str], dict[Path, int]]:
    """Command-line inputs -> image files: files as given, directories walked recursively (sorted, hidden entries
    skipped) for files with an image suffix (`IMAGE_SUFFIXES`) or DICOM magic.

    Returns (files, their names: a file's name, or "DIR/sub/file" for a file found in DIR, {directory: number of other
    files it held}). Raises `ImageFileError` for a path that does not exist or a directory without image files, before
    anything expensive runs.
    """
    files: list[Path] = []
    names: list[str] = []
    ignored: dict[Path, int] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found, other = [], 0
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if child.is_file():
                    if _looks_like_image(child):
                        found.append(child)
                        names.append((Path(path.resolve().name) / relative).as_posix())
                    else:
                        other += 1
            if not found:
                raise ImageFileError(f"{path}: directory holds no image files (looked for {', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
            if other:
                ignored[path] = other
        elif path.exists() or path.is_symlink():
            files.append(path)
            names.append(path.name)
        else:
            raise ImageFileError(f"{path}: no such file or directory")
    return files, names, ignored
