"""The one exception users of meditok-data need to catch."""

from __future__ import annotations

from pathlib import Path


def escape_text(text: str) -> str:
    """``text`` as one printable line: control characters (a newline or tab in a file name) and lone surrogates (a
    file name that is not UTF-8) become backslash escapes, so that a hostile name cannot forge a log line."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in text
    )


class MedicalImageError(Exception):
    """A file could not be turned into a medical image.

    The message always starts with the file so that a log line from a job over millions of files is actionable; it
    is one printable line (`escape_text`).
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(escape_text(f"{path}: {problem}" if path is not None else problem))
