"""Gang admission of classifier-free-guidance pairs: a vLLM scheduler that admits the two requests of a pair in the
same step. The plugin's config hook (:mod:`meditok.ar.vllm_plugin.config`) makes :class:`AutoPairedScheduler` the
scheduler of every MedITok-AR server unless ``--scheduler-cls`` names another, so plain ``vllm serve`` gets it.

Why: :class:`meditok.ar.vllm_plugin.logits.GuidancePairLogitsProcessor` can only guide a pair whose two requests
advance in lockstep. vLLM admits a request as soon as it reaches the engine loop, so the two prompts of one HTTP call
routinely start one step apart on an idle server (measured: every time). Before each scheduling pass this scheduler
takes out of the waiting queue every guided request whose partner has not arrived yet (for at most ``HOLD_SECONDS``;
then it goes alone and the logits processor ends it, so a lost partner never hangs a request), and a pair for which
fewer than two request slots are left; a pair whose partners are both waiting is moved next to each other so the scan
admits them together. Everything else is vLLM 0.32's own scheduler (internal API: pinned with the plugin). With async
scheduling (GPU builds) :class:`AutoPairedScheduler` builds :class:`PairedAsyncScheduler`."""

from __future__ import annotations

import time
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from meditok.ar.vllm_plugin.logits import CFG_PAIR, CFG_SCALE

HOLD_SECONDS = 5.0


def _pair_key(request: Any) -> str | None:
    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None) or {}
    if CFG_SCALE not in extra or CFG_PAIR not in extra:
        return None
    return str(extra[CFG_PAIR])


class _PairedAdmission:
    waiting: Any
    running: list
    max_num_running_reqs: int

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        held = self._hold_back_unpaired()
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if held:
                self.waiting.prepend_requests(list(reversed(held)))  # FCFS prepends in reverse: keep their order

    def _hold_back_unpaired(self) -> list:
        waiting = list(self.waiting)
        keys = [_pair_key(r) for r in waiting]
        if not any(keys):
            return []
        first_seen: dict[str, float] = self.__dict__.setdefault("_meditok_first_seen", {})
        now = time.monotonic()
        live = {_pair_key(r) for r in self.running} - {None}
        by_key: dict[str, list] = {}
        for request, key in zip(waiting, keys):
            if key is not None:
                by_key.setdefault(key, []).append(request)
        slots = self.max_num_running_reqs - len(self.running)
        order, held, placed = [], [], set()
        for request, key in zip(waiting, keys):
            if key is None:
                order.append(request)
                slots -= 1
                continue
            if key in placed:
                continue
            placed.add(key)
            members = by_key[key]
            seen = first_seen.setdefault(key, now)
            if len(members) >= 2:
                if slots >= 2:
                    order += members
                    slots -= len(members)
                    first_seen.pop(key, None)
                else:
                    held += members
            elif key in live or now - seen > HOLD_SECONDS:  # partner running already, or lost: let it go (and end)
                order += members
                slots -= 1
                first_seen.pop(key, None)
            else:
                held += members
        for key in [k for k, t in first_seen.items() if k not in by_key and now - t > 10 * HOLD_SECONDS]:
            del first_seen[key]  # aborted while held
        if order != [r for r in waiting if r not in held]:
            self.waiting.remove_requests(waiting)
            for request in order:
                self.waiting.add_request(request)
        elif held:
            self.waiting.remove_requests(held)
        return held


class PairedScheduler(_PairedAdmission, Scheduler):
    pass


class PairedAsyncScheduler(_PairedAdmission, AsyncScheduler):
    pass


class AutoPairedScheduler:
    """The paired variant of the scheduler vLLM would have built: :class:`PairedAsyncScheduler` when the final config
    has async scheduling (GPU builds by default), else :class:`PairedScheduler` (the CPU build). The plugin's config
    hook sets this class before vLLM decides on async scheduling, so the choice is made here, at construction."""

    def __new__(cls, vllm_config: Any, *args: Any, **kwargs: Any) -> Any:
        chosen = PairedAsyncScheduler if vllm_config.scheduler_config.async_scheduling else PairedScheduler
        return chosen(vllm_config, *args, **kwargs)
