"""Atomic file writes for every MedITok package: a reader never sees a half-written file.

`atomic_path` yields a temporary path next to the destination and renames it into place when the block finishes
(it removes the temporary when the block raises); `write_atomic` does the same for a one-call writer. The final file
gets the mode an ordinary ``open(path, "w")`` would give it (``0o666`` less the umask), not the ``0o600`` of the
private temporary file, so colleagues can read saved models, manifests and shards."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read it without the set-and-restore race of os.umask
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a newly created regular file gets from ``open``: ``0o666`` less the process umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Write to the yielded temporary path; on success it becomes ``path`` (one rename, default file mode)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(directory: str | os.PathLike, name: str, write: Callable[[str], object]) -> Path:
    """``write(tmp_path)`` into a temporary file in ``directory``, then rename it to ``name``: a reader never sees a
    half-written file, and a failed write leaves no temporary behind."""
    with atomic_path(Path(directory) / name) as tmp:
        write(str(tmp))
    return Path(directory) / name


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically."""
    path = Path(path)
    return write_atomic(path.parent, path.name, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
