"""Test support: a Hugging Face Hub cache written on disk, so that Hub names resolve with `HF_HUB_OFFLINE=1` and
no network (the tests of every package use it; nothing here is needed at run time).

The layout is the one huggingface_hub itself writes (its cache documentation, "Cache structure"):
`models--{org}--{name}/blobs/<hash>`, `snapshots/<commit>/<file>` linking to the blob, `refs/<revision>` holding the
commit, and `.no_exist/<commit>/<file>` for a file the Hub answered 404 on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path


def write_hub_cache(
    cache: str | os.PathLike,
    repo_id: str,
    files: Mapping[str, str | os.PathLike | bytes],
    *,
    revision: str = "main",
    absent: Iterable[str] = (),
) -> Path:
    """Put `files` ({path in the repository: local file or bytes}) into `cache` as `repo_id` at `revision`; `absent`
    names files recorded as missing on the Hub. Returns the snapshot folder."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}:{sorted(files)}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = source if isinstance(source, bytes) else None
        digest = hashlib.sha256(data if data is not None else Path(source).read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            blob.write_bytes(data)
        else:
            shutil.copyfile(source, blob)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    for name in absent:
        marker = repo / ".no_exist" / commit / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
