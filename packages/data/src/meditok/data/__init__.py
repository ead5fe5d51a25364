"""meditok-data: medical images in physical units → MedITok tokenizer input, at scale."""

from meditok.data.datasets import ImageDataset, ImageTextDataset, ResumableLoader, StreamDataset
from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage, MedicalVolume
from meditok.data.loading import load_unit_image, read_2d
from meditok.data.manifest import ManifestRow, ScanStats, index_directory, load_row, read_manifest, write_manifest
from meditok.data.modality import MODALITIES, normalize_modality, template_caption
from meditok.data.readers import read_dicom, read_dicom_series, read_image, read_nifti, read_volume, write_ct_png
from meditok.data.shards import ShardIndex, ShardSink, write_shards
from meditok.data.transforms import CT_WINDOWS, Preprocess, Window, apply_window, normalize_intensity, unit_image

__version__ = "0.1.0"

__all__ = [
    "CT_WINDOWS",
    "MODALITIES",
    "ImageDataset",
    "ImageTextDataset",
    "ManifestRow",
    "MedicalImage",
    "MedicalImageError",
    "MedicalVolume",
    "Preprocess",
    "ResumableLoader",
    "ScanStats",
    "ShardIndex",
    "ShardSink",
    "StreamDataset",
    "Window",
    "apply_window",
    "index_directory",
    "load_row",
    "load_unit_image",
    "normalize_intensity",
    "normalize_modality",
    "read_2d",
    "read_dicom",
    "read_dicom_series",
    "read_image",
    "read_manifest",
    "read_nifti",
    "read_volume",
    "template_caption",
    "unit_image",
    "write_ct_png",
    "write_manifest",
    "write_shards",
]
