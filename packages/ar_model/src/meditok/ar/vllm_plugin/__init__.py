"""vLLM 0.32 plugin for MedITok-AR merged folders (``config.json`` architectures ``["MedITokARForCausalLM"]``).

Entry points (``pyproject.toml``): ``vllm.general_plugins`` -> :func:`register` (vLLM calls it in the API server, the
engine core and every worker, so it is idempotent) and ``vllm.logits_processors`` -> :class:`ImageLayoutLogitsProcessor`
(a no-op unless a request sets ``vllm_xargs.image_height`` / ``image_width``) and
:class:`GuidancePairLogitsProcessor` (classifier-free guidance over request pairs; a no-op without
``vllm_xargs.cfg_scale``).

Only this package's ``__init__`` is imported at plugin-load time; the model and processor modules (which import vLLM
internals) load lazily when vLLM resolves the architecture.
"""

from __future__ import annotations

from meditok.ar.layout import ARCHITECTURE

VLLM_VERSION = "0.32"  # the plugin uses vLLM internals (multimodal processor, logits-processor API): pinned
MODEL_CLASS = "meditok.ar.vllm_plugin.model:MedITokARForCausalLM"
LOGITS_PROCESSORS = (
    "meditok.ar.vllm_plugin.logits:ImageLayoutLogitsProcessor",
    "meditok.ar.vllm_plugin.logits:GuidancePairLogitsProcessor",
)


def register() -> None:
    """Register ``MedITokARForCausalLM`` with vLLM's model registry (safe to call any number of times)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    from meditok.ar.vllm_plugin.media import install_dicom_loader, install_media_connector

    install_dicom_loader()
    install_media_connector()
    from meditok.ar.vllm_plugin import config

    config.install()  # scheduler and model runner for MedITok-AR folders (plain `vllm serve` needs no flags for them)


__all__ = ["LOGITS_PROCESSORS", "MODEL_CLASS", "VLLM_VERSION", "register"]
