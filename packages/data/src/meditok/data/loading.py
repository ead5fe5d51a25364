"""One file (or its bytes) -> one 2-D image -> pixels in [0, 1]: the file half of the image-input contract.

`load_unit_image` is what every door that takes a file calls (through `meditok.tokenizer.image_files.load_image`), so
a DICOM, NIfTI slice or PNG becomes the same pixels in the CLI, the Python API, meditok-ar, the vLLM plugin and
meditok-eval; the tokenizer's `preprocess` then does the geometry.
"""

from __future__ import annotations

import gzip
import io
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


def _gunzip_at_most(data: bytes, limit: int) -> tuple[bytes, bool]:
    """Inflate (all members of) gzip ``data`` into at most ``limit`` bytes: (bytes, True if that was all of it)."""
    out, rest = [], memoryview(data)
    size = 0
    while rest.nbytes and size <= limit:
        inflater = zlib.decompressobj(31)
        out.append(inflater.decompress(rest, limit + 1 - size))
        size += len(out[-1])
        if not inflater.eof:
            return b"".join(out), False  # more left than limit (or a truncated member: nibabel reports it)
        rest = memoryview(inflater.unused_data)
    return b"".join(out), size <= limit


def _nifti_from_bytes(data: bytes, label: Path, modality: str | None, max_voxels: int | None = None):
    """NIfTI bytes (.nii or .nii.gz) as a volume. The header is read first (a bounded inflate of its 348 bytes) and its
    voxel count checked against ``max_voxels`` (default `meditok.data.readers.MAX_VOXELS`; 0 or less: no limit); a gzip
    stream then inflates to at most the size the header declares, so a small upload cannot cost GBs."""
    import nibabel as nib

    from meditok.data import readers

    gzipped = data[:2] == b"\x1f\x8b"
    try:
        head = zlib.decompressobj(31).decompress(data[:65536], 348) if gzipped else data[:348]
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(head))
        shape = tuple(int(n) for n in header.get_data_shape())
        declared = int(header.get_data_offset()) + int(np.prod(shape, dtype=object)) * header.get_data_dtype().itemsize
    except (OSError, EOFError, ValueError, TypeError, zlib.error, nib.spatialimages.HeaderDataError) as exc:
        raise MedicalImageError(label, f"unreadable NIfTI header ({type(exc).__name__}: {exc})") from None
    voxels = int(np.prod(shape, dtype=object))
    limit = readers.MAX_VOXELS if max_voxels is None else max_voxels
    if limit > 0 and voxels > limit:
        raise MedicalImageError(
            label,
            f"NIfTI header declares {' x '.join(map(str, shape))} = {voxels} voxels, more than the limit of {limit} "
            "(max_voxels= or meditok.data.readers.MAX_VOXELS); not read",
        )
    if gzipped:
        budget = max(declared, 348) + (1 << 16)  # the declared data plus 64 KiB of extensions and padding
        data, whole = _gunzip_at_most(data, budget)
        if not whole:
            raise MedicalImageError(label, f"gzipped NIfTI inflates beyond the {budget} bytes its header declares")
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
    max_voxels: int | None = None,
) -> MedicalImage:
    """Any supported file or its bytes as one 2-D image in physical units.

    ``max_pixels``: a DICOM declaring more values (rows x columns x frames x samples) is refused from its header,
    before decoding (default `meditok.data.readers.MAX_PIXELS`). ``max_voxels``: the same for NIfTI bytes (the whole
    volume is read; default `meditok.data.readers.MAX_VOXELS`).

    A volume (NIfTI, DICOM series folder, .inv3) gives its middle ``plane`` slice unless ``slice_index`` is given; a
    multi-frame DICOM gives ``frame`` (default: the middle frame, as a manifest row of the whole file does). Bytes may hold DICOM, NIfTI (.nii or .nii.gz) or a raster image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = Path(name or "<image bytes>")
        if is_dicom_bytes(data[:132]):
            image = read_dicom(label, modality=modality, data=data, max_pixels=max_pixels)
        elif looks_like_nifti_bytes(data):
            return _middle_slice(_nifti_from_bytes(data, label, modality, max_voxels), plane, slice_index)
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

    ``options``: `read_2d`'s keywords (name, modality, frame, slice_index, plane, ct_bias, max_pixels, max_voxels)."""
    image = read_2d(source, **options)
    return unit_image(image, spec), image
