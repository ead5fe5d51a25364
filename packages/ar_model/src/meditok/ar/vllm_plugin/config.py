"""Start-up settings a MedITok-AR folder needs from vLLM, applied by the plugin itself so that plain ``vllm serve
FOLDER`` serves it: vLLM's per-architecture config hook (``MODELS_CONFIG_MAP``, the mechanism vLLM uses for its own
models' defaults), registered by :func:`meditok.ar.vllm_plugin.register` and run once while vLLM builds its config.

- **Scheduler.** CFG pairs need both requests admitted in the same step: unless ``--scheduler-cls`` was given, the
  scheduler is :class:`meditok.ar.vllm_plugin.scheduler.AutoPairedScheduler`, which becomes the paired variant of
  whichever scheduler vLLM would have used (async or not, decided after this hook).
- **Model runner.** vLLM 0.32 makes Model Runner V2 the default on GPU builds with Triton (``VllmConfig.
  use_v2_model_runner``: true unless ``VLLM_USE_V2_MODEL_RUNNER=0``, no Triton, or an unsupported feature). The
  plugin's processors use V1's logits-processor interface, and the guided pairs cannot run on V2 at all: V2 draws its
  sampling noise from (seed, token position) (``vllm/v1/worker/gpu/sample/gumbel.py``), and the two prompts of a pair
  differ in length, so equal seeds no longer draw equal tokens. This hook therefore selects the V1 runner (logging
  why), and refuses an explicit ``VLLM_USE_V2_MODEL_RUNNER=1`` with a one-line error. The CPU build has no Triton and
  already uses V1.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

from meditok.ar.layout import ARCHITECTURE

logger = logging.getLogger(__name__)

SCHEDULER = "meditok.ar.vllm_plugin.scheduler.AutoPairedScheduler"
RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
V2_REFUSED = (
    f"MedITok-AR ({ARCHITECTURE}) needs vLLM's V1 model runner: its image-layout and CFG-pair logits processors use "
    f"the V1 interface, and V2 samples from position-keyed noise that splits CFG pairs; unset {RUNNER_ENV} or set it "
    "to 0"
)


def install() -> None:
    """Register the hook for MedITok-AR's architecture (idempotent; vLLM calls the plugin in every process)."""
    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, MedITokARConfig)


def _qualname(scheduler_cls: Any) -> str:
    if isinstance(scheduler_cls, str):
        return scheduler_cls
    return f"{scheduler_cls.__module__}.{scheduler_cls.__qualname__}"


class MedITokARConfig(VerifyAndUpdateConfig):
    @staticmethod
    def verify_and_update_config(vllm_config: Any) -> None:
        from vllm import envs

        scheduler = vllm_config.scheduler_config
        if scheduler.scheduler_cls is None:
            scheduler.scheduler_cls = SCHEDULER
            logger.info("MedITok-AR: scheduler %s (admits CFG pairs together)", SCHEDULER)
        elif not _qualname(scheduler.scheduler_cls).startswith(SCHEDULER.rsplit(".", 1)[0] + "."):  # not one of ours
            logger.warning(
                "MedITok-AR: --scheduler-cls %s replaces the plugin's paired scheduler; guided (CFG) pairs may start "
                "one step apart and come back short",
                scheduler.scheduler_cls,
            )
        if envs.VLLM_USE_V2_MODEL_RUNNER:
            raise ValueError(V2_REFUSED)
        if vllm_config.use_v2_model_runner:
            # Read by every later use_v2_model_runner check, in this process and in the engine and worker processes
            # it spawns (they inherit the environment).
            os.environ[RUNNER_ENV] = "0"
            logger.warning(
                "MedITok-AR: using vLLM's V1 model runner instead of Model Runner V2 (set %s=0 to silence this): "
                "the plugin's logits processors and CFG pairs need it",
                RUNNER_ENV,
            )
