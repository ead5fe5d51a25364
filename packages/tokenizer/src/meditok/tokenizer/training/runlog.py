"""The run directory on disk: a writability check at start-up, ``log.jsonl`` written one whole line per write and read
with a torn last line treated as absent, and the disk errors of a save named with the path and the free space."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

LOG_NAME = "log.jsonl"


class DiskError(RuntimeError):
    """Writing the run's files failed (read-only directory, full disk); the message names the path and the free
    space."""


def free_space(path: str | os.PathLike) -> str:
    """'12.3 GiB free' on the file system holding ``path`` (its nearest existing ancestor)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "free space unknown"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def check_writable(directory: str | os.PathLike, key: str = "run.output_dir") -> None:
    """`DiskError` at start-up, before anything expensive, if ``directory`` cannot be created or written."""
    directory = Path(directory)
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"x")
        probe.unlink()
    except OSError as exc:
        raise DiskError(
            f"{key}: {directory} is not writable ({exc.strerror or exc}; {free_space(directory)}): choose a "
            "writable directory"
        ) from None


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """One JSON line appended with a single write (O_APPEND): a reader never sees half a line from two writers, and a
    failed write (full disk) leaves at most a torn last line, which `read_records` treats as absent."""
    data = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DiskError(f"{path}: cannot append the step record ({exc.strerror or exc}; {free_space(path)})") from None
    if written != len(data):
        raise DiskError(f"{path}: wrote {written} of {len(data)} bytes of a step record ({free_space(path)})")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``; a torn (unterminated or unparsable) line is absent, not an error."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line (or a blank one)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_after(path: str | os.PathLike, step: int) -> int:
    """Keep the records up to ``step`` (a resume from step N logs N+1... again); returns how many were dropped.
    Rewritten atomically, so a crash here leaves the old log."""
    from ..atomic import write_text_atomic

    path = Path(path)
    if not path.exists():
        return 0
    records = read_records(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if text.encode() != path.read_bytes():
        write_text_atomic(path, text)
    return len(records) - len(kept)
