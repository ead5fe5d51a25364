"""The one exception users of meditok-data need to catch."""

from __future__ import annotations

from pathlib import Path


class MedicalImageError(Exception):
    """A file could not be turned into a medical image.

    The message always starts with the file so that a log line from a job over millions of files is actionable.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
