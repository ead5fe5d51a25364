"""Canonical modality names and the rules that map DICOM tags, CSV values and folder names onto them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath

# The modalities of MedITok's training data (spec §2.1) plus the DICOM modalities seen in real files.
MODALITIES: tuple[str, ...] = (
    "ct",
    "mri",
    "xray",
    "ultrasound",
    "pathology",
    "fundus",
    "dermoscopy",
    "endoscopy",
    "oct",
    "microscopy",
    "nuclear",
    "other",
)

DISPLAY_NAMES: dict[str, str] = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "ultrasound": "ultrasound",
    "pathology": "pathology",
    "fundus": "fundus",
    "dermoscopy": "dermoscopy",
    "endoscopy": "endoscopy",
    "oct": "OCT",
    "microscopy": "microscopy",
    "nuclear": "nuclear medicine",
    "other": "medical",
}

# DICOM (0008,0060) Modality → canonical name.
DICOM_MODALITY: dict[str, str] = {
    "CT": "ct",
    "MR": "mri",
    "CR": "xray",
    "DX": "xray",
    "DR": "xray",
    "RG": "xray",
    "MG": "xray",
    "RF": "xray",
    "XA": "xray",
    "IO": "xray",
    "PX": "xray",
    "US": "ultrasound",
    "IVUS": "ultrasound",
    "SM": "pathology",
    "GM": "microscopy",
    "OP": "fundus",
    "OPT": "oct",
    "OCT": "oct",
    "ES": "endoscopy",
    "XC": "dermoscopy",
    "NM": "nuclear",
    "PT": "nuclear",
}

# Folder/CSV spellings → canonical name (lower-case, compared against whole path components or CSV values).
ALIASES: dict[str, str] = {
    **{m: m for m in MODALITIES},
    "mr": "mri",
    "x-ray": "xray",
    "x_ray": "xray",
    "cxr": "xray",
    "radiograph": "xray",
    "radiography": "xray",
    "us": "ultrasound",
    "echo": "ultrasound",
    "histopathology": "pathology",
    "histology": "pathology",
    "wsi": "pathology",
    "retina": "fundus",
    "derm": "dermoscopy",
    "dermatology": "dermoscopy",
    "skin": "dermoscopy",
    "endoscopic": "endoscopy",
    "colonoscopy": "endoscopy",
    "nm": "nuclear",
    "pet": "nuclear",
}


def normalize_modality(value: str | None) -> str:
    """Map a free-form modality string (CSV value, DICOM tag, folder name) to a canonical name; unknown → "other"."""
    if not value:
        return "other"
    key = value.strip()
    if key.upper() in DICOM_MODALITY:
        return DICOM_MODALITY[key.upper()]
    return ALIASES.get(key.lower().replace(" ", "_"), "other")


def modality_from_path(path: str | PurePath, parts: Iterable[str] | None = None) -> str | None:
    """Folder rule: the deepest path component that names a modality wins (``.../2d/cls/ct/covid/x.png`` → ct)."""
    components = list(parts) if parts is not None else list(PurePath(path).parts[:-1])
    for component in reversed(components):
        canonical = ALIASES.get(component.lower())
        if canonical is not None:
            return canonical
    return None


def template_caption(modality: str) -> str:
    """The reference's caption for unpaired images (``caption_key == 'modality'``): "A {modality} image"."""
    return f"A {DISPLAY_NAMES.get(modality, modality)} image"
