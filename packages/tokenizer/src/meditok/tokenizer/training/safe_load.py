"""Loading training checkpoints without running pickled code.

Every ``.pt`` file of a checkpoint (the trainer's ``rankNNNNN_state.pt``, DeepSpeed's model and ZeRO optimizer
states) is read with ``torch.load(weights_only=True)``: tensors, plain containers, numbers and strings only, plus the
explicit allow-list `ALLOWED_GLOBALS` (the few classes these files hold: NumPy's RNG key array, DeepSpeed's ZeRO
bookkeeping). A file needing anything else (a payload such as ``os.system``) is refused with `UnsafeCheckpointError`,
one line naming the file and the global, before anything from the checkpoint is loaded."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# "module:qualname" of every non-builtin global a checkpoint file may hold (besides what weights_only allows anyway).
ALLOWED_GLOBALS = (
    "numpy:ndarray",  # numpy.random.get_state()'s key array (rankNNNNN_state.pt)
    "numpy:dtype",
    "numpy.dtypes:UInt32DType",
    "numpy._core.multiarray:_reconstruct",
    "numpy.core.multiarray:_reconstruct",
    "deepspeed.utils.tensor_fragment:fragment_address",  # ZeRO 1-2 optimizer states
    "deepspeed.runtime.zero.config:ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler:LossScaler",
    "deepspeed.runtime.fp16.loss_scaler:DynamicLossScaler",
)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that `torch.load(weights_only=True)` with the allow-list refuses (or cannot read)."""


def _allowed() -> list[Any]:
    found = []
    for spec in ALLOWED_GLOBALS:
        module, _, name = spec.partition(":")
        if module.startswith("deepspeed") and "deepspeed" not in sys.modules:
            continue  # not imported here (e.g. `meditok export`, which needs no DeepSpeed): its classes stay refused
        with contextlib.suppress(ImportError, AttributeError):  # numpy 1 vs 2 names
            found.append(getattr(importlib.import_module(module), name))
    return found


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with `ALLOWED_GLOBALS`; `UnsafeCheckpointError` names the file.
    ``mmap``: memory-map the tensors of a zip-format file (the check reads the pickle, not the weights)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed()):
            mmap = mmap and zipfile.is_zipfile(path)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip / truncated), ...
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        if found:
            reason = (
                f"it holds {found.group(1)}, which is not on the allow-list (loading it could run code; "
                "see meditok.tokenizer.training.safe_load.ALLOWED_GLOBALS)"
            )
        else:
            reason = f"not a readable torch file ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"
        raise UnsafeCheckpointError(f"{path}: refused to load: {reason}") from None


def checkpoint_files(ckpt: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(ckpt).rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())


def check_checkpoint(ckpt: str | os.PathLike) -> None:
    """Every torch file under ``ckpt`` passes `safe_load` (first refusal raised), before anything loads one."""
    for path in checkpoint_files(ckpt):
        safe_load(path, mmap=True)


@contextlib.contextmanager
def deepspeed_safe_loading(engine: Any) -> Iterator[None]:
    """Within the block, ``engine``'s checkpoint engine reads every file with `safe_load` (DeepSpeed's own
    TorchCheckpointEngine uses ``weights_only=False``)."""
    ckpt_engine = engine.checkpoint_engine

    def load(path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location=map_location)

    ckpt_engine.load = load
    try:
        yield
    finally:
        del ckpt_engine.load  # back to the class's method
