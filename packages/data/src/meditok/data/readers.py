"""Readers for DICOM, NIfTI, raster images, MedMNIST NPZ and InVesalius projects.

Every reader returns intensities in physical units (HU for CT) and raises `MedicalImageError` naming the file for
anything it cannot read, so that a lenient data loader can skip the file and a strict one can stop on it.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import plistlib
import stat
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage, MedicalVolume, Plane
from meditok.data.modality import DICOM_MODALITY, modality_from_path, normalize_modality
from meditok.tokenizer.image_files import is_dicom_file

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".svs"}
MAX_PIXELS = 2**28
"""The most values (rows x columns x frames x samples per pixel) a DICOM may declare before `read_dicom` refuses it,
checked from the header *before* any pixel data is decoded or a deflated data set is inflated (268 M values: a
16384 x 16384 picture, or 1024 frames of 512 x 512). Every door can pass its own ``max_pixels=`` (the vLLM plugin passes
``VLLM_MAX_IMAGE_PIXELS``); 0 or less disables the check. Change the default for a process with
``meditok.data.readers.MAX_PIXELS = ...``."""
MAX_VOXELS = 2**31
"""The most voxels a NIfTI header may declare before `read_nifti` (and ``meditok-data index``) refuses it, checked from
the header before any voxel is read (2.1 G voxels: 8 GiB as float32). A header must also fit its file: an uncompressed
file must hold the declared bytes, a gzipped one can inflate at most `GZIP_MAX_RATIO` times. Raster images (PNG, JPEG,
...) are refused from their header above `MAX_PIXELS` values (and above Pillow's own bomb limit)."""
GZIP_MAX_RATIO = 1032  # deflate's largest possible expansion
DEFLATED_HEADER_BYTES = 1 << 24  # a deflated data set's elements before the pixel data must inflate within 16 MiB
CODECS_HINT = "install the optional decoders: pip install 'meditok-data[dicom-codecs]' (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"

# MedMNIST file stem → modality (MedMNIST v2/v3 data flags).
MEDMNIST_MODALITY = {
    "pathmnist": "pathology",
    "chestmnist": "xray",
    "dermamnist": "dermoscopy",
    "octmnist": "oct",
    "pneumoniamnist": "xray",
    "retinamnist": "fundus",
    "breastmnist": "ultrasound",
    "bloodmnist": "microscopy",
    "tissuemnist": "microscopy",
    "organamnist": "ct",
    "organcmnist": "ct",
    "organsmnist": "ct",
    "organmnist3d": "ct",
    "nodulemnist3d": "ct",
    "adrenalmnist3d": "ct",
    "fracturemnist3d": "ct",
    "vesselmnist3d": "mri",
    "synapsemnist3d": "microscopy",
}


def file_kind(path: str | Path) -> str:
    """ "dicom", "dicom_series" (a directory), "nifti", "raster", "tiff", "npz", "inv3" or "unknown"."""
    path = Path(path)
    if path.is_dir():
        return "dicom_series"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix == ".npz":
        return "npz"
    if suffix == ".inv3":
        return "inv3"
    # DICOM files often have no suffix (PACS exports): recognise the preamble magic.
    return "dicom" if is_dicom_file(path) else "unknown"


def _resolve_modality(path: Path, explicit: str | None, found: str | None = None) -> tuple[str, str]:
    """Explicit argument > file tags > folder rule; returns (modality, where it came from)."""
    if explicit:
        return normalize_modality(explicit), "argument"
    if found:
        return found, "tags"
    from_folder = modality_from_path(path)
    if from_folder:
        return from_folder, "folder"
    return "other", "default"


# --------------------------------------------------------------------------------------------------------- DICOM


def _dicom_first(value: Any) -> float | None:
    """First value of a possibly multi-valued numeric tag (WindowCenter can hold several presets)."""
    if value is None:
        return None
    try:
        return float(value)
    except TypeError:
        return float(value[0]) if len(value) else None
    except ValueError:
        return None


def _functional_group_value(ds: Any, sequence: str, keyword: str, frame: int = 0) -> Any:
    """A value of an enhanced (multi-frame) DICOM, looked up per frame first, then in the shared groups."""
    for groups_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(groups_name)
        if not groups:
            continue
        group = groups[min(frame, len(groups) - 1)] if groups_name.startswith("PerFrame") else groups[0]
        inner = group.get(sequence)
        if inner and keyword in inner[0]:
            return inner[0].get(keyword)
    return None


def _dicom_value(ds: Any, keyword: str, sequence: str) -> Any:
    value = ds.get(keyword)
    return value if value is not None else _functional_group_value(ds, sequence, keyword)


def check_dicom_size(path: Path, ds: Any, max_pixels: int | None = None) -> None:
    """MedicalImageError naming the file and the sizes if the header declares more than ``max_pixels`` values (rows x
    columns x frames x samples per pixel; None: `MAX_PIXELS`, 0 or less: no limit)."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if limit <= 0:
        return
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as exc:
        raise MedicalImageError(path, f"unreadable DICOM image size in the header ({exc})") from None
    total = rows * columns * max(frames, 1) * max(samples, 1)
    if total > limit:
        raise MedicalImageError(
            path,
            f"DICOM header declares {rows} x {columns} pixels x {frames} frame(s) x {samples} sample(s) = {total} "
            f"values, more than the limit of {limit} (meditok.data.readers.MAX_PIXELS or max_pixels=); not decoded",
        )


def check_dicom_pixel_length(path: Path, ds: Any) -> None:
    """MedicalImageError if native (uncompressed) pixel data disagrees with the header's size: fewer bytes than Rows x
    Columns x NumberOfFrames x samples x bits declare (NumberOfFrames 1000000 on a one-frame file), or a whole frame
    or more beyond it (Rows/Columns smaller than the data: pydicom would read garbage frames). Reads no pixel data
    when the element was deferred (``dcmread(defer_size=...)``)."""
    from pydicom.pixels.utils import get_expected_length

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if "PixelData" not in ds or syntax is None or getattr(syntax, "is_encapsulated", True):
        return  # compressed frames have no fixed length (their decoder checks them)
    element = ds.get_item("PixelData")
    length = getattr(element, "length", None)
    if length is None:  # a converted DataElement
        length = len(element.value or b"")
    try:
        expected = int(get_expected_length(ds, unit="bytes"))
        frames = max(int(ds.get("NumberOfFrames") or 1), 1)
    except Exception as exc:  # noqa: BLE001 - missing / odd size tags
        raise MedicalImageError(
            path, f"unreadable DICOM image size in the header ({type(exc).__name__}: {exc})"
        ) from None
    frame_bytes = max(expected // frames, 1)
    declared = (
        f"Rows {ds.get('Rows')} x Columns {ds.get('Columns')} x {frames} frame(s) x "
        f"{ds.get('SamplesPerPixel') or 1} sample(s) x {ds.get('BitsAllocated')} bits = {expected} bytes"
    )
    if length < expected:
        raise MedicalImageError(path, f"pixel data holds {length} bytes, the header declares {declared}; not read")
    if length - expected >= frame_bytes:
        raise MedicalImageError(
            path,
            f"pixel data holds {length} bytes, a frame or more beyond what the header declares ({declared}); not read",
        )


def regular_file(path: Path) -> Path:
    """``path`` if it is a regular file or a directory; MedicalImageError otherwise (a FIFO would block the reader
    forever; a socket or a device is no image either). A missing file is left to the reader's own message."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise MedicalImageError(path, f"cannot stat ({exc.strerror})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
        raise MedicalImageError(path, f"not a regular file ({kind}); not opened")
    return path


def check_nifti_size(path: Path, image: Any) -> tuple[int, ...]:
    """The header's shape, after checking it against `MAX_VOXELS` and against the file's size (MedicalImageError)."""
    shape = tuple(int(n) for n in image.shape)
    voxels = 1
    for n in shape:
        voxels *= max(n, 0)
    if voxels > MAX_VOXELS:
        raise MedicalImageError(
            path,
            f"NIfTI header declares {' x '.join(map(str, shape))} = {voxels} voxels, more than the limit of "
            f"{MAX_VOXELS} (meditok.data.readers.MAX_VOXELS); not read",
        )
    try:
        size = os.path.getsize(image.get_filename() or path)
        offset = int(image.header.get_data_offset())
        declared = offset + voxels * image.header.get_data_dtype().itemsize
    except (OSError, TypeError, ValueError):
        return shape
    gzipped = str(path).lower().endswith(".gz")
    most = size * GZIP_MAX_RATIO + (1 << 16) if gzipped else size
    if declared > most:
        raise MedicalImageError(
            path,
            f"NIfTI header declares {' x '.join(map(str, shape))} voxels = {declared} bytes, but the "
            f"{'gzipped ' if gzipped else ''}file of {size} bytes can hold at most {most}; not read",
        )
    return shape


def _is_deflated(prefix: bytes) -> bool:
    """The file meta (in the first bytes of a file) names Deflated Explicit VR Little Endian."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        fp = io.BytesIO(prefix)
        read_preamble(fp, False)
        return _read_file_meta_info(fp).get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # noqa: BLE001 - not a readable file meta: pydicom's own reader reports it
        return False


def _read_deflated(path: Path, blob: bytes, stop_before_pixels: bool, max_pixels: int | None) -> Any:
    """A Deflated Explicit VR Little Endian file read with bounded inflation (pydicom inflates the whole data set
    before anything can look at its header: a 0.5 MB file can become GBs): the header part first, its size checked,
    then at most what that size needs."""
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    fp = io.BytesIO(blob)
    preamble = read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: Any = memoryview(blob)[fp.tell() :]
    head, want = b"", 1 << 18
    while True:  # inflate the header in growing steps until the pixel data element (or the end) is reached
        head += inflater.decompress(pending, want - len(head))
        pending = inflater.unconsumed_tail
        reached: list[bool] = []

        def at_pixels(tag: Any, vr: Any, length: int, reached: list[bool] = reached) -> bool:
            if int(tag) in (0x7FE00008, 0x7FE00009, 0x7FE00010):
                reached.append(True)
                return True
            return False

        header = read_dataset(DicomBytesIO(head), False, True, stop_when=at_pixels)
        if reached or inflater.eof:
            break
        if len(head) >= DEFLATED_HEADER_BYTES:
            raise MedicalImageError(path, f"deflated DICOM header larger than {DEFLATED_HEADER_BYTES} bytes inflated")
        want = min(want * 4, DEFLATED_HEADER_BYTES)
    if not stop_before_pixels:
        check_dicom_size(path, header, max_pixels)
    if stop_before_pixels or inflater.eof:
        dataset = header if stop_before_pixels else read_dataset(DicomBytesIO(head), False, True)
    else:
        values = int(header.get("Rows") or 0) * int(header.get("Columns") or 0)
        values *= max(int(header.get("NumberOfFrames") or 1), 1) * max(int(header.get("SamplesPerPixel") or 1), 1)
        bits = max(int(header.get("BitsAllocated") or 8), 64 if "DoubleFloatPixelData" in header else 8)
        budget = values * ((bits + 7) // 8) + (1 << 20)  # the pixel data plus 1 MiB of trailing elements
        rest = inflater.decompress(pending, budget)
        if not inflater.eof:
            raise MedicalImageError(
                path, f"deflated data set inflates beyond the {len(head) + budget} bytes its header declares"
            )
        dataset = read_dataset(DicomBytesIO(head + rest), False, True)
    ds = FileDataset(str(path), dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _read_dicom_dataset(
    path: Path,
    stop_before_pixels: bool = False,
    data: bytes | None = None,
    max_pixels: int | None = None,
    defer_size: int | None = None,
) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = io.BytesIO(data) if data is not None else path
            if data is not None:
                prefix = data[:65536]
            else:
                with open(path, "rb") as file:
                    prefix = file.read(65536)
            if _is_deflated(prefix):
                ds = _read_deflated(
                    path, data if data is not None else path.read_bytes(), stop_before_pixels, max_pixels
                )
            else:
                ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except MedicalImageError:
        raise
    except FileNotFoundError:
        raise MedicalImageError(path, "file does not exist") from None
    except InvalidDicomError as exc:
        raise MedicalImageError(path, f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types for truncated headers (EOFError, struct.error, ...)
        raise MedicalImageError(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    if not stop_before_pixels and "PixelData" not in ds and "FloatPixelData" not in ds:
        raise MedicalImageError(path, f"DICOM file has no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    return ds


def _decode_dicom_pixels(path: Path, ds: Any, frame: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    syntax = ds.file_meta.get("TransferSyntaxUID")
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=frame) if frame is not None else ds.pixel_array
    except Exception as exc:
        message = str(exc)
        lowered = message.lower()
        if (
            "missing" in lowered
            and ("plugin" in lowered or "dependenc" in lowered)
            or "no available image handler" in lowered
        ):
            raise MedicalImageError(path, f"cannot decode transfer syntax '{syntax_name}': {CODECS_HINT}") from None
        first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise MedicalImageError(path, f"corrupt or truncated pixel data ({syntax_name}): {first_line}") from None


def _dicom_modality(ds: Any) -> str | None:
    tag = str(ds.get("Modality", "")).upper()
    return DICOM_MODALITY.get(tag)


def read_dicom(
    path: str | Path,
    *,
    frame: int | None = None,
    modality: str | None = None,
    data: bytes | None = None,
    max_pixels: int | None = None,
) -> MedicalImage:
    """One DICOM file (all frames unless ``frame`` is given); CT → HU, MONOCHROME1 inverted, colour → RGB uint8.

    ``data``: the file's bytes, read in memory (an upload); ``path`` then only names it in messages. ``max_pixels``:
    the most rows x columns x frames x samples the header may declare (default `MAX_PIXELS`), checked before decoding."""
    path = Path(path)
    ds = _read_dicom_dataset(path, data=data, max_pixels=max_pixels)
    check_dicom_size(path, ds, max_pixels)
    check_dicom_pixel_length(path, ds)
    num_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is not None and not 0 <= frame < num_frames:
        raise MedicalImageError(path, f"frame {frame} out of range: the file has {num_frames} frame(s)")
    pixels = _decode_dicom_pixels(path, ds, frame if num_frames > 1 else None)
    frames_out = 1 if frame is not None or num_frames == 1 else num_frames
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    window_level = _dicom_first(_dicom_value(ds, "WindowCenter", "FrameVOILUTSequence"))
    window_width = _dicom_first(_dicom_value(ds, "WindowWidth", "FrameVOILUTSequence"))

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(pixels, ds)
        except Exception as exc:
            raise MedicalImageError(path, f"palette colour lookup failed: {exc}") from None
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        pixels = (rgb >> 8).astype(np.uint8) if lut_bits == 16 else rgb.astype(np.uint8)
    elif photometric.startswith(("RGB", "YBR")):
        # pydicom converts YBR to RGB while decoding (as_rgb=True), so only the dtype needs care.
        if pixels.dtype != np.uint8:
            pixels = (pixels >> max(bits_stored - 8, 0)).astype(np.uint8)
    else:
        if photometric == "MONOCHROME1":
            # Invert within the stored bit range so the result is independent of image content.
            top = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
            bottom = -(1 << (bits_stored - 1)) if signed else 0
            pixels = (top + bottom - pixels.astype(np.int32)).astype(np.int32)
            if window_level is not None:
                window_level = top + bottom - window_level
        slope = _dicom_first(_dicom_value(ds, "RescaleSlope", "PixelValueTransformationSequence"))
        intercept = _dicom_first(_dicom_value(ds, "RescaleIntercept", "PixelValueTransformationSequence"))
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        if slope != 1.0 or intercept != 0.0:
            if float(slope).is_integer() and float(intercept).is_integer():
                pixels = pixels.astype(np.int32) * int(slope) + int(intercept)  # exact integer HU
            else:
                pixels = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)

    found = _dicom_modality(ds)
    resolved, source = _resolve_modality(path, modality, found)
    spacing_value = _dicom_value(ds, "PixelSpacing", "PixelMeasuresSequence") or ds.get("ImagerPixelSpacing")
    spacing = None
    if spacing_value is not None and len(spacing_value) == 2:
        spacing = (float(spacing_value[0]), float(spacing_value[1]))
        if spacing == (0.0, 0.0):
            spacing = None
    window = (window_level, window_width) if window_level is not None and window_width else None
    metadata = {
        "format": "dicom",
        "dicom_modality": str(ds.get("Modality", "")),
        "modality_source": source,
        "photometric": photometric,
        "transfer_syntax": getattr(ds.file_meta.get("TransferSyntaxUID"), "name", ""),
        "bits_stored": bits_stored,
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "instance_number": int(ds.get("InstanceNumber") or 0),
    }
    if frame is not None:
        metadata["frame"] = frame
    return MedicalImage(
        pixels=np.ascontiguousarray(pixels),
        modality=resolved,
        source=path,
        spacing=spacing,
        num_frames=frames_out,
        window=window,
        metadata=metadata,
    )


def _slice_position(ds: Any) -> tuple[float, int]:
    """Position along the slice normal (from ImagePositionPatient/ImageOrientationPatient), else InstanceNumber."""
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    if position is not None and orientation is not None and len(orientation) == 6:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        return float(np.dot(normal, np.asarray(position, float))), int(ds.get("InstanceNumber") or 0)
    return float(ds.get("InstanceNumber") or 0), int(ds.get("InstanceNumber") or 0)


def read_dicom_series(
    directory: str | Path, *, series_uid: str | None = None, modality: str | None = None
) -> MedicalVolume:
    """A directory of single-frame DICOM slices → volume sorted by ImagePositionPatient along the slice normal."""
    directory = Path(directory)
    headers: dict[str, list[tuple[tuple[float, int], Path, Any]]] = {}
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        if file_kind(file) != "dicom":
            continue
        ds = _read_dicom_dataset(file, stop_before_pixels=True)
        uid = str(ds.get("SeriesInstanceUID", ""))
        headers.setdefault(uid, []).append((_slice_position(ds), file, ds))
    if not headers:
        raise MedicalImageError(directory, "directory holds no DICOM files")
    if series_uid is None:
        series_uid = max(headers, key=lambda uid: len(headers[uid]))
    elif series_uid not in headers:
        raise MedicalImageError(directory, f"no series {series_uid}; found {sorted(headers)}")
    members = sorted(headers[series_uid], key=lambda item: item[0])
    slices = [read_dicom(file, modality=modality) for _, file, _ in members]
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) != 1:
        raise MedicalImageError(directory, f"series {series_uid} mixes slice shapes {sorted(shapes)}")
    first = members[0][2]
    stack = np.stack([s.pixels for s in slices])  # (slice, row, column)
    row_spacing, col_spacing = slices[0].spacing or (1.0, 1.0)
    orientation = first.get("ImageOrientationPatient")
    if orientation is not None and len(members) > 1 and first.get("ImagePositionPatient") is not None:
        row_dir = np.asarray(orientation[:3], float)  # direction of increasing column index
        col_dir = np.asarray(orientation[3:], float)
        origin = np.asarray(first.ImagePositionPatient, float)
        step = (np.asarray(members[-1][2].ImagePositionPatient, float) - origin) / (len(members) - 1)
        affine_lps = np.eye(4)
        affine_lps[:3, 0] = row_dir * col_spacing
        affine_lps[:3, 1] = col_dir * row_spacing
        affine_lps[:3, 2] = step
        affine_lps[:3, 3] = origin
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # DICOM LPS → NIfTI RAS
    else:
        affine = np.diag([col_spacing, row_spacing, float(first.get("SliceThickness") or 1.0), 1.0])
    volume = _canonical_volume(
        np.transpose(stack, (2, 1, 0)),
        affine,
        modality=slices[0].modality,
        source=directory,
        window=slices[0].window,
        metadata={"format": "dicom_series", "series_uid": series_uid, "files": [str(m[1]) for m in members]},
    )
    return volume


# --------------------------------------------------------------------------------------------------------- NIfTI


def _canonical_volume(
    voxels: np.ndarray,
    affine: np.ndarray,
    *,
    modality: str,
    source: Path,
    window: tuple[float, float] | None = None,
    metadata: dict[str, Any] | None = None,
) -> MedicalVolume:
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(voxels, affine))
    data = np.asanyarray(image.dataobj)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return MedicalVolume(
        voxels=data,
        modality=modality,
        source=source,
        spacing=zooms,  # type: ignore[arg-type]
        affine=image.affine,
        window=window,
        metadata=metadata or {},
    )


def read_nifti(path: str | Path, *, modality: str | None = None) -> MedicalVolume:
    """A .nii/.nii.gz volume reoriented to the closest canonical (RAS+) orientation; 4-D keeps time last."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise MedicalImageError(path, "file does not exist")
    regular_file(path)
    try:
        image = nib.load(str(path))
        check_nifti_size(path, image)
        canonical = nib.as_closest_canonical(image)
        voxels = np.asanyarray(canonical.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as exc:
        raise MedicalImageError(path, f"unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    if voxels.ndim == 2:
        voxels = voxels[:, :, None]
    if voxels.ndim not in (3, 4):
        raise MedicalImageError(
            path, f"NIfTI with {voxels.ndim} dimensions (shape {voxels.shape}); expected 3-D or 4-D"
        )
    found = None
    if modality is None and modality_from_path(path) is None:
        # NIfTI has no modality field; air at about -1000 is the giveaway of CT.
        found = "ct" if float(np.min(voxels)) <= -500 else "mri"
    resolved, source = _resolve_modality(path, modality, found)
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return MedicalVolume(
        voxels=voxels,
        modality=resolved,
        source=path,
        spacing=zooms,  # type: ignore[arg-type]
        affine=canonical.affine,
        metadata={"format": "nifti", "modality_source": "guess" if found else source},
    )


def read_inv3(path: str | Path, *, modality: str | None = None) -> MedicalVolume:
    """An InVesalius project (.inv3: gzip tar of main.plist + raw matrix.dat), as shipped by invesalius-examples."""
    path = Path(path)
    try:
        with tarfile.open(path) as archive:
            members = {Path(m.name).name: m for m in archive.getmembers()}
            plist = plistlib.loads(archive.extractfile(members["main.plist"]).read())  # type: ignore[union-attr]
            matrix = plist["matrix"]
            raw = archive.extractfile(members[matrix["filename"]]).read()  # type: ignore[union-attr]
        shape = tuple(int(s) for s in matrix["shape"])  # (slices, rows, columns)
        stack = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<")).reshape(shape)
    except (OSError, EOFError, KeyError, ValueError, tarfile.TarError, plistlib.InvalidFileException) as exc:
        raise MedicalImageError(path, f"unreadable InVesalius project ({type(exc).__name__}: {exc})") from None
    spacing_x, spacing_y, spacing_z = (float(s) for s in plist.get("spacing", (1.0, 1.0, 1.0)))
    resolved, source = _resolve_modality(path, modality, normalize_modality(plist.get("modality")))
    window = None
    if "window_level" in plist and "window_width" in plist:
        window = (float(plist["window_level"]), float(plist["window_width"]))
    return MedicalVolume(
        voxels=np.ascontiguousarray(np.transpose(stack, (2, 1, 0))),
        modality=resolved,
        source=path,
        spacing=(spacing_x, spacing_y, spacing_z),
        affine=np.diag([spacing_x, spacing_y, spacing_z, 1.0]),
        window=window,
        metadata={"format": "inv3", "name": plist.get("name", ""), "modality_source": source},
    )


# --------------------------------------------------------------------------------------------------------- raster


def check_raster_size(path: Path, image: Any) -> list[int]:
    """[height, width(, 3)] from an opened (not yet decoded) Pillow image; MedicalImageError above `MAX_PIXELS`."""
    width, height = image.size
    bands = len(image.getbands())
    if MAX_PIXELS > 0 and width * height * bands > MAX_PIXELS:
        raise MedicalImageError(
            path,
            f"image header declares {width} x {height} pixels x {bands} band(s) = {width * height * bands} values, "
            f"more than the limit of {MAX_PIXELS} (meditok.data.readers.MAX_PIXELS); not decoded",
        )
    return [height, width] + ([3] if bands >= 3 or image.mode == "P" else [])


def _pil_to_array(path: Path, image: Any) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image).astype(np.uint16)
    if mode in ("I", "F", "L"):
        return np.asarray(image)
    if mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"))
    # RGBA/P/CMYK/YCbCr...: the reference's PIL .convert('RGB') drops alpha.
    return np.asarray(image.convert("RGB"))


def read_raster(
    path: str | Path, *, modality: str | None = None, ct_bias: int = 0, data: bytes | None = None
) -> MedicalImage:
    """PNG/JPEG/BMP/TIFF/SVS incl. 16-bit; CT PNGs written with a +``ct_bias`` offset come back in HU.

    ``data``: the file's bytes, decoded in memory (an upload); ``path`` then only names it in messages."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if data is None and not path.exists():
        raise MedicalImageError(path, "file does not exist")
    pixels: np.ndarray | None = None
    error: str | None = None
    if data is None:
        regular_file(path)
    if path.suffix.lower() != ".svs":
        try:
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                check_raster_size(path, image)
                image.load()
                pixels = _pil_to_array(path, image)
        except UnidentifiedImageError:
            error = "not a recognised image format"
        except Image.DecompressionBombError as exc:
            raise MedicalImageError(path, f"image header declares too many pixels ({exc}); not decoded") from None
        except (OSError, ValueError, SyntaxError) as exc:
            error = f"truncated or corrupt image ({exc})"
    if pixels is None and data is None and path.suffix.lower() in TIFF_SUFFIXES:
        pixels, error = _read_tiff(path)
    if pixels is None:
        raise MedicalImageError(path, error or "unreadable image")
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    resolved, source = _resolve_modality(path, modality)
    if ct_bias:
        if pixels.ndim != 2:
            raise MedicalImageError(path, f"ct_bias={ct_bias} needs a single-channel image, got shape {pixels.shape}")
        pixels = pixels.astype(np.int32) - int(ct_bias)
    return MedicalImage(
        pixels=np.ascontiguousarray(pixels),
        modality=resolved,
        source=path,
        metadata={"format": path.suffix.lower().lstrip("."), "modality_source": source, "ct_bias": ct_bias},
    )


def _read_tiff(path: Path) -> tuple[np.ndarray | None, str | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return tiff.series[0].levels[0].asarray(), None
    except ValueError as exc:
        if "imagecodecs" in str(exc).lower():
            return None, f"TIFF tiles need a codec: pip install imagecodecs ({exc})"
        return None, f"unreadable TIFF ({exc})"
    except Exception as exc:  # tifffile raises TiffFileError, struct.error, ... on corrupt files
        return None, f"unreadable TIFF ({type(exc).__name__}: {exc})"


def write_ct_png(hu: np.ndarray, path: str | Path, ct_bias: int = 1024) -> Path:
    """Store HU as the reference's 16-bit PNG (value = HU + bias, clipped to the uint16 range)."""
    from PIL import Image

    stored = np.clip(np.asarray(hu).astype(np.int64) + ct_bias, 0, 65535).astype(np.uint16)
    Image.fromarray(stored).save(path)
    return Path(path)


# --------------------------------------------------------------------------------------------------------- NPZ


@functools.lru_cache(maxsize=4)
def _load_npz(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def read_medmnist(path: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels) of one split of a MedMNIST .npz (keys ``{split}_images`` / ``{split}_labels``)."""
    path = Path(path)
    try:
        arrays = _load_npz(str(path), os.stat(path).st_mtime_ns)
    except FileNotFoundError:
        raise MedicalImageError(path, "file does not exist") from None
    except (OSError, ValueError, zlib.error, EOFError) as exc:
        raise MedicalImageError(path, f"unreadable NPZ ({type(exc).__name__}: {exc})") from None
    key = f"{split}_images"
    if key not in arrays:
        raise MedicalImageError(path, f"no '{key}' array: not MedMNIST layout (arrays: {sorted(arrays)})")
    return arrays[key], arrays.get(f"{split}_labels")


def read_npz_image(path: str | Path, index: int, split: str = "train", modality: str | None = None) -> MedicalImage:
    path = Path(path)
    images, labels = read_medmnist(path, split)
    if not 0 <= index < len(images):
        raise MedicalImageError(path, f"index {index} out of range for {len(images)} {split} images")
    pixels = images[index]
    if pixels.ndim == 3 and pixels.shape[-1] not in (1, 3):
        raise MedicalImageError(path, f"3-D MedMNIST sample of shape {pixels.shape} is a volume, not a 2-D image")
    stem = path.stem.split("_")[0].lower()
    resolved, source = _resolve_modality(path, modality, MEDMNIST_MODALITY.get(stem))
    label = labels[index].tolist() if labels is not None else None
    return MedicalImage(
        pixels=np.ascontiguousarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels),
        modality=resolved,
        source=path,
        metadata={"format": "npz", "split": split, "index": index, "label": label, "modality_source": source},
    )


# --------------------------------------------------------------------------------------------------------- dispatch


@functools.lru_cache(maxsize=2)
def _cached_volume(path: str, mtime_ns: int, modality: str | None) -> MedicalVolume:
    return _read_volume_uncached(Path(path), modality)


def _read_volume_uncached(path: Path, modality: str | None) -> MedicalVolume:
    kind = file_kind(path)
    if kind == "nifti":
        return read_nifti(path, modality=modality)
    if kind == "dicom_series":
        return read_dicom_series(path, modality=modality)
    if kind == "inv3":
        return read_inv3(path, modality=modality)
    if kind == "dicom":
        image = read_dicom(path, modality=modality)
        frames = image.pixels if image.num_frames > 1 else image.pixels[None]
        if image.is_rgb:
            raise MedicalImageError(path, "a colour DICOM clip is not a volume; use read_image(path).frames()")
        row, col = image.spacing or (1.0, 1.0)
        return MedicalVolume(
            voxels=np.ascontiguousarray(np.transpose(frames, (2, 1, 0))[:, ::-1, :]),
            modality=image.modality,
            source=path,
            spacing=(col, row, 1.0),
            window=image.window,
            metadata={**image.metadata, "orientation": "frames as slices, orientation not verified"},
        )
    raise MedicalImageError(path, f"not a volume format (detected: {kind})")


def read_volume(path: str | Path, *, modality: str | None = None, cache: bool = True) -> MedicalVolume:
    """NIfTI, a DICOM series directory, a multi-frame DICOM or an .inv3 project as a canonical `MedicalVolume`.

    The last two volumes read are cached, so slice-by-slice reading of a manifest does not re-read the file.
    """
    path = regular_file(Path(path))
    if not path.exists():
        raise MedicalImageError(path, "file does not exist")
    if not cache:
        return _read_volume_uncached(path, modality)
    return _cached_volume(str(path), os.stat(path).st_mtime_ns, modality)


def read_image(
    path: str | Path,
    *,
    modality: str | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    plane: Plane = "axial",
    ct_bias: int = 0,
    index: int | None = None,
    split: str = "train",
) -> MedicalImage:
    """Any supported file as a 2-D `MedicalImage` (a multi-frame DICOM keeps all frames unless ``frame`` is set).

    Volumes need ``slice_index`` (and ``plane``); MedMNIST NPZ files need ``index`` (and ``split``).
    """
    path = regular_file(Path(path))
    kind = file_kind(path)
    if not path.exists():
        raise MedicalImageError(path, "file does not exist")
    if kind == "dicom" and slice_index is None:
        return read_dicom(path, frame=frame, modality=modality)
    if kind in ("raster", "tiff"):
        return read_raster(path, modality=modality, ct_bias=ct_bias)
    if kind == "npz":
        if index is None:
            raise MedicalImageError(path, "a MedMNIST NPZ holds many images: pass index=")
        return read_npz_image(path, index, split, modality)
    if kind in ("nifti", "dicom_series", "inv3", "dicom"):
        volume = read_volume(path, modality=modality)
        if slice_index is None:
            if volume.voxels.shape[2] == 1:
                return volume.slice(0, "axial")
            raise MedicalImageError(
                path, f"is a volume of shape {volume.shape}: pass slice_index= (and plane=) or use read_volume()"
            )
        try:
            return volume.slice(slice_index, plane)
        except IndexError as exc:
            raise MedicalImageError(path, str(exc).split(": ", 1)[-1]) from None
    raise MedicalImageError(path, "unsupported file type (expected DICOM, NIfTI, PNG/JPEG/BMP/TIFF, NPZ or .inv3)")
