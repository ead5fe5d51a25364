"""The retry protocol of a classifier-free-guidance request pair, shared by the images endpoint (in the server) and
the HTTP client (``meditok-ar generate-image --server --cfg-scale``). No vLLM import: the client runs without it.

A guided image is a conditional and an unconditional request with one seed and one fresh ``cfg_pair`` key; the
guidance processor (:mod:`meditok.ar.vllm_plugin.logits`) ends both early when the scheduler split them, so the
caller compares the two outputs and resends the pair under a new key, at most ``attempts`` times::

    pair = GuidedPair(n_codes)
    for key in pair.keys():
        cond, uncond = send(key)
        if pair.in_lockstep(cond, uncond):
            break
    else:
        raise pair.split_error()
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence

CFG_ATTEMPTS = 4


class Unavailable(RuntimeError):
    """The server could not produce the result this time (HTTP 503); the request was valid."""


def shared_seed(seed: int | None) -> int:
    """The one seed both branches of a pair use (they must draw alike): ``seed``, else a random one."""
    return seed if seed is not None else random.randrange(2**31)


class GuidedPair:
    def __init__(self, n_codes: int, attempts: int = CFG_ATTEMPTS, where: str = "the server") -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.n_codes, self.attempts, self.where = n_codes, attempts, where

    def keys(self) -> Iterator[str]:
        """A fresh ``cfg_pair`` key for each attempt."""
        for _ in range(self.attempts):
            yield uuid.uuid4().hex

    def in_lockstep(self, cond: Sequence[int], uncond: Sequence[int]) -> bool:
        """Both branches wrote every code and ``<eoi>`` identically (a split pair comes back short or different)."""
        n = self.n_codes + 1
        return len(cond) >= n and list(cond[:n]) == list(uncond[:n])

    def split_error(self) -> Unavailable:
        return Unavailable(
            f"{self.where}: the scheduler split the guided request pair {self.attempts} times (overloaded?); retry later"
        )
