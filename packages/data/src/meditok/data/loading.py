"""One file (or its bytes) -> one 2-D image -> pixels in [0, 1]: the file half of the image-input contract.

`load_unit_image` is what every door that takes a file calls (through `meditok.tokenizer.image_files.load_image`), so
a DICOM, NIfTI slice or PNG becomes the same pixels in the CLI, the Python API, meditok-ar, the vLLM plugin and
meditok-eval; the tokenizer's `preprocess` then does the geometry.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage, Plane
from meditok.data.readers import (
    _canonical_volume,
    file_kind,
    read_dicom,
    read_image,
    read_raster,
    read_volume,
    regular_file,
)
from meditok.data.transforms import unit_image
from meditok.tokenizer.image_files import is_dicom_bytes
from meditok.tokenizer.preprocessing import ImageInput

NIFTI1_MAGIC_OFFSET = 344


def _middle_slice(image_or_volume, plane: Plane, slice_index: int | None) -> MedicalImage:
    count = image_or_volume.num_slices(plane)
    return image_or_volume.slice(count // 2 if slice_index is None else slice_index, plane)


def _nifti_from_bytes(data: bytes, label: Path, modality: str | None):
    import nibabel as nib

    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        image = nib.Nifti1Image.from_bytes(raw)
        voxels = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as exc:
        raise MedicalImageError(label, f"unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    if voxels.ndim == 2:
        voxels = voxels[:, :, None]
    if voxels.ndim != 3:
        raise MedicalImageError(label, f"NIfTI with {voxels.ndim} dimensions (shape {voxels.shape}); expected 3-D")
    guessed = modality or ("ct" if float(np.min(voxels)) <= -500 else "mri")
    return _canonical_volume(voxels, image.affine, modality=guessed, source=label, metadata={"format": "nifti"})


def looks_like_nifti_bytes(data: bytes) -> bool:
    """NIfTI-1 (.nii or gzipped .nii.gz) bytes: the magic "n+1" / "ni1" at offset 344 of the header."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = zlib.decompressobj(31).decompress(data[:4096], 400)  # the header is in the first 348 bytes
        except zlib.error:
            return False
    return data[NIFTI1_MAGIC_OFFSET : NIFTI1_MAGIC_OFFSET + 4] in (b"n+1\x00", b"ni1\x00")


def read_2d(
    source: str | os.PathLike | bytes,
    *,
    name: str | None = None,
    modality: str | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    plane: Plane = "axial",
    ct_bias: int = 0,
    max_pixels: int | None = None,
) -> MedicalImage:
    """Any supported file or its bytes as one 2-D image in physical units.

    ``max_pixels``: a DICOM declaring more values (rows x columns x frames x samples) is refused from its header,
    before decoding (default `meditok.data.readers.MAX_PIXELS`).

    A volume (NIfTI, DICOM series folder, .inv3) gives its middle ``plane`` slice unless ``slice_index`` is given; a
    multi-frame DICOM gives ``frame`` (default: the middle frame, as a manifest row of the whole file does). Bytes may hold DICOM, NIfTI (.nii or .nii.gz) or a raster image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = Path(name or "<image bytes>")
        if is_dicom_bytes(data[:132]):
            image = read_dicom(label, modality=modality, data=data, max_pixels=max_pixels)
        elif looks_like_nifti_bytes(data):
            return _middle_slice(_nifti_from_bytes(data, label, modality), plane, slice_index)
        else:
            image = read_raster(label, modality=modality, ct_bias=ct_bias, data=data)
    else:
        path = regular_file(Path(source))  # a FIFO named in a manifest would block the reader forever
        kind = file_kind(path)
        if kind in ("nifti", "dicom_series", "inv3"):
            volume = read_volume(path, modality=modality)
            try:
                return _middle_slice(volume, plane, slice_index)
            except IndexError as exc:
                raise MedicalImageError(path, str(exc).split(": ", 1)[-1]) from None
        if kind == "dicom" and max_pixels is not None:
            image = read_dicom(path, frame=frame, modality=modality, max_pixels=max_pixels)
        else:
            image = read_image(path, modality=modality, frame=frame, ct_bias=ct_bias)
    if image.num_frames > 1:
        image = image.frame(image.num_frames // 2 if frame is None else frame)
    return image


def load_unit_image(
    source: str | os.PathLike | bytes, spec: ImageInput | None = None, **options
) -> tuple[np.ndarray, MedicalImage]:
    """`read_2d` then `unit_image`: (pixels in [0, 1] for the tokenizer's `preprocess`, the image they came from).

    ``options``: `read_2d`'s keywords (name, modality, frame, slice_index, plane, ct_bias, max_pixels)."""
    image = read_2d(source, **options)
    return unit_image(image, spec), image
