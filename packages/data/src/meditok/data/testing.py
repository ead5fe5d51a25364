"""Test helper shared by every MedITok package's tests (each runs in its own venv, all of which install meditok-data).

``require(condition, why)``: skip on a developer machine that lacks an optional source (sample images, a package),
fail in CI (``CI`` set to a true value, as `.ci/run` does), where everything must be installed.

Also a pytest plugin (``pytest -p meditok.data.testing``, as every nox test session loads it): at the end of the run
it prints the skipped tests ("skipped tests: none" when there are none), and in CI a run with any skipped test fails,
so that a skip that bypassed ``require`` (a raw ``pytest.skip``, ``importorskip``, ``skipif``) cannot hide a test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TRUE_VALUES = {"1", "true", "yes", "on"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in TRUE_VALUES


def require(condition: bool, why: str) -> None:
    if condition:
        return
    import pytest  # only the tests need it: not a dependency of meditok-data

    if in_ci():
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def synthetic_dicom(
    rows: int, cols: int, pixel_data: bytes, *, frames: int | None = None, deflated: bool = False
) -> bytes:
    """A minimal 16-bit MONOCHROME2 secondary-capture DICOM whose header declares ``rows`` x ``cols`` (x ``frames``)
    around whatever ``pixel_data`` holds, built with pydicom alone: hostile-input tests make headers that lie with it."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "OT", rows, cols, 1
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = pixel_data
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom_series(hu: Any, folder: str | os.PathLike, spacing: tuple[float, float, float]) -> list[Path]:
    """A CT series (one file per slice) from ``hu`` int16 (slices, rows, columns) in HU, built with pydicom alone:
    ImageOrientationPatient [1,0,0, 0,1,0], ImagePositionPatient (0, 0, slice * spacing[2]), PixelSpacing (row,
    column) = spacing[:2], stored as uint16 with RescaleIntercept -1024. File names run against the slice order, so a
    reader that sorted by name would stack the series upside down. Returns the files in slice order."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    files = []
    for index, plane in enumerate(np.asarray(hu)):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, study
        ds.FrameOfReferenceUID, ds.InstanceNumber = frame_of_reference, index + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, round(index * float(spacing[2]), 4)]
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.clip(plane.astype(np.int32) + 1024, 0, 65535).astype("<u2")).tobytes()
        path = folder / f"IM{len(hu) - index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# ----------------------------------------------------------------------------------------------- pytest plugin

_SKIPPED: list[tuple[str, str]] = []  # (test id, reason), in the order pytest reported them


def _skip_reason(report) -> str:
    # A skip's longrepr is (file, line, "Skipped: why"); anything else (rare) is shown as it is.
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report) -> None:
    # xfail outcomes also report as skipped; they are not skips (the test ran) and this project uses none.
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report) -> None:
    # A module-level skip (importorskip at import time) skips a whole file at collection.
    if report.skipped:
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session, exitstatus) -> None:
    if _SKIPPED and in_ci() and exitstatus == 0:
        session.exitstatus = 1  # pytest's ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    write = terminalreporter.write_line
    if not _SKIPPED:
        write("skipped tests: none")
        return
    write(f"skipped tests: {len(_SKIPPED)}" + (" (CI: skips are failures, the run fails)" if in_ci() else ""))
    for nodeid, reason in _SKIPPED:
        write(f"  {nodeid}: {reason}")
