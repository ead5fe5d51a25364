"""``POST /v1/images/generations`` (OpenAI images shape) as a vLLM endpoint plugin (entry point
``vllm.endpoint_plugins``: opt-in, vLLM loads it only when ``VLLM_PLUGINS`` names ``meditok_images``;
``meditok-ar serve`` does that unless ``VLLM_PLUGINS`` is set; under plain ``vllm serve`` set
``VLLM_PLUGINS=meditok_ar,meditok_images``).

Body: ``{"prompt": str, "size": "HxW" | "S" (pixels, default 256x256), "n": 1..8, "temperature", "top_p", "top_k",
"seed", "cfg_scale" (or "guidance_scale"), "response_format": "b64_json"}``. Each image is one engine request with the
layout logits processor; with ``cfg_scale`` it is a conditional + unconditional request pair (same seed) guided by
:class:`meditok.ar.vllm_plugin.logits.GuidancePairLogitsProcessor`, retried when the scheduler split the pair (HTTP 503
after ``CFG_ATTEMPTS``). The codes are decoded to PNG with the folder's MedITok in the API-server process.

A compact-layout folder (layout version 2) cannot generate in vLLM's engine (vLLM 0.32 samples one token per request
and step; its depth head samples 8 sub-codes per image position: README, "Compact models in vLLM"). For it this
endpoint runs the transformers path (:func:`meditok.ar.generation.generate_image_codes`, what
``MedITokAR.generate_image`` runs) inside the API-server process: the folder is loaded once, on the first request, as a
``MedITokAR`` (a second copy of the weights, float32, beside the engine's), and generation runs in a worker thread
(the event loop keeps serving), one request at a time under a lock, not batched with other requests. Same body, same
checks, same 400s and the same PNG decoding as the flat path; an unseeded request's ``n`` images are one batch, a
seeded one's image i is drawn alone with ``seed + i`` (what ``generate_image(seed=seed + i)`` gives). A client that
leaves stops the work after the image being drawn."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handler's (string) annotations in these globals
from fastapi.responses import JSONResponse

from meditok.ar.vllm_plugin.guided_pair import CFG_ATTEMPTS, GuidedPair, Unavailable, shared_seed

NAME = "meditok_images"
__all__ = ["CFG_ATTEMPTS", "NAME", "ImagesEndpoint", "Unavailable"]


class ImagesEndpoint:
    name = NAME
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self.engine: Any = None
        self.model_dir: str | None = None
        self._assets: Any = None
        self._compact_model: Any = None  # compact folders: the transformers model, loaded on the first request
        self._compact_lock = asyncio.Lock()  # one compact generation at a time (torch on CPU gains nothing from more)

    def attach_router(self, app: Any) -> None:
        plugin = self

        @app.post("/v1/images/generations")
        async def generations(request: Request) -> JSONResponse:
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                data = await _unless_disconnected(request, plugin.generate(body))
                if data is None:  # the client left: its engine requests were aborted
                    return JSONResponse({"error": {"message": "client disconnected", "code": 499}}, 499)
            except ValueError as error:
                return JSONResponse({"error": {"message": str(error), "type": "BadRequestError", "code": 400}}, 400)
            except Unavailable as error:
                return JSONResponse({"error": {"message": str(error), "type": "ServiceUnavailable", "code": 503}}, 503)
            return JSONResponse({"created": int(time.time()), "data": data})

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        self.engine = engine_client
        self.model_dir = getattr(args, "model", None)

    def assets(self) -> Any:
        if self._assets is None:
            import json

            from transformers import AutoTokenizer

            from meditok.ar.chat_format import sequence_builder
            from meditok.ar.layout import TokenLayout, image_tokenizer_path
            from meditok.tokenizer import MedITok

            folder = Path(self.model_dir or ".")
            layout = TokenLayout.from_config(json.loads((folder / "config.json").read_text()))
            tok = MedITok.from_pretrained(str(image_tokenizer_path(folder, layout))).eval()
            self._assets = (layout, sequence_builder(layout, AutoTokenizer.from_pretrained(str(folder))), tok)
        return self._assets

    async def generate(self, body: dict[str, Any]) -> list[dict[str, str]]:
        from vllm import SamplingParams

        from meditok.ar.layout import token_ids_to_codes
        from meditok.ar.vllm_plugin.logits import (
            SEED_RANGE,
            TOP_K_MAX,
            requested_guidance,
            requested_size,
        )

        if self.engine is None:
            raise ValueError("no engine behind this server")
        layout, builder, tok = self.assets()
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError("prompt must be a string")
        size = str(body.get("size", "256x256")).lower().split("x")
        if len(size) not in (1, 2) or not all(s.isdigit() for s in size):
            raise ValueError(f"size must be 'HxW' or 'S' in pixels, got {body.get('size')!r}")
        height, width = int(size[0]), int(size[-1])
        extra: dict[str, Any] = {"image_height": height, "image_width": width}
        requested_size(extra)
        cfg_scale = body.get("cfg_scale", body.get("guidance_scale"))
        if cfg_scale is not None:
            requested_guidance({**extra, "cfg_scale": cfg_scale, "cfg_pair": "check"})
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 8:
            raise ValueError(f"n must be an integer in [1, 8], got {n!r}")
        if body.get("response_format", "b64_json") != "b64_json":
            raise ValueError("only response_format 'b64_json' is supported")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1] - (n - 1):  # image i uses seed + i
            raise ValueError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1] - (n - 1)}], got {seed}")
        temperature, top_p = _number(body, "temperature", 1.0), _number(body, "top_p", 1.0)
        top_k = _number(body, "top_k", 0)
        if top_k != int(top_k) or not -1 <= top_k <= TOP_K_MAX:
            raise ValueError(f"top_k must be -1 or 0 (disabled) or an integer in [1, {TOP_K_MAX}], got {top_k:.6g}")
        patch = tok.config.patch_size
        grid = (height // patch, width // patch)
        if max(grid) > layout.max_grid:
            raise ValueError(f"size {height}x{width} exceeds this model's {layout.max_grid * patch} pixels")
        ids = builder.generation_prompt(prompt, grid)
        n_codes = layout.block_length(grid) - 4  # the 8hw codes (flat), the hw image positions (compact)
        max_model_len = getattr(getattr(self.engine, "model_config", None), "max_model_len", None)
        if isinstance(max_model_len, int) and len(ids) + n_codes + 2 > max_model_len:
            raise ValueError(
                f"size {height}x{width} needs {len(ids)} prompt + {n_codes + 2} output tokens, more than this server's "
                f"--max-model-len {max_model_len}"
            )

        def params(seed_i: int | None, xargs: dict[str, Any]) -> SamplingParams:
            return SamplingParams(
                max_tokens=n_codes + 2,
                temperature=temperature,
                top_p=top_p,
                top_k=int(top_k) or -1,
                seed=seed_i,
                extra_args=xargs,
            )

        sampling = params(seed, extra)  # vLLM's checks of temperature / top_p (HTTP 400) before any work, both layouts
        if layout.compact:
            return await self._compact_images(tok, layout, prompt, grid, n, seed, cfg_scale, sampling)

        async def run(prompt_ids: list[int], sampling: SamplingParams) -> list[int]:
            final = None
            async for output in self.engine.generate(
                {"prompt_token_ids": prompt_ids}, sampling, f"img-{uuid.uuid4().hex}"
            ):
                final = output
            return list(final.outputs[0].token_ids)

        async def one(i: int) -> list[int]:
            if cfg_scale is None:
                return await run(ids, params(None if seed is None else seed + i, extra))
            seed_i = shared_seed(None if seed is None else seed + i)
            uncond_ids = builder.generation_prompt("", grid)
            pair = GuidedPair(n_codes, CFG_ATTEMPTS, "images endpoint")
            for key in pair.keys():
                xargs = {**extra, "cfg_scale": float(cfg_scale), "cfg_pair": key}
                cond, uncond = await asyncio.gather(
                    run(ids, params(seed_i, xargs)), run(uncond_ids, params(seed_i, xargs))
                )
                if pair.in_lockstep(cond, uncond):
                    return cond
            raise pair.split_error()

        results = await asyncio.gather(*(one(i) for i in range(n)))
        data = []
        for tokens in results:
            codes, g = token_ids_to_codes(ids[-3:] + tokens[: n_codes + 1], layout)
            data.append({"b64_json": await asyncio.to_thread(_png_b64, tok, codes, g, layout.num_codebooks)})
        return data

    def compact_model(self, tok: Any) -> Any:
        """The served compact folder as a transformers ``MedITokAR`` (float32, sharing the endpoint's MedITok), loaded
        once; called in the worker thread under the lock."""
        if self._compact_model is None:
            from meditok.ar.model import MedITokAR

            self._compact_model = MedITokAR.from_pretrained(Path(self.model_dir or "."), tokenizer=tok)
        return self._compact_model

    async def _compact_images(self, tok: Any, layout: Any, prompt: str, grid: tuple[int, int], n: int,
                              seed: int | None, cfg_scale: Any, sampling: Any) -> list[dict[str, str]]:  # fmt: skip
        """A compact model's images through the transformers path, in a worker thread, one request at a time."""
        from vllm.sampling_params import SamplingType

        from meditok.ar.generation import generate_image_codes

        settings = {
            "cfg_scale": None if cfg_scale is None else float(cfg_scale),
            # vLLM's reading of the request: greedy below its epsilon, tiny temperatures raised to 0.01, top_k -1 = off
            "temperature": 0.0 if sampling.sampling_type == SamplingType.GREEDY else sampling.temperature,
            "top_k": max(sampling.top_k, 0),
            "top_p": sampling.top_p,
        }
        # unseeded: the n images in one batch; seeded: image i alone with seed + i, as generate_image(seed=seed + i)
        chunks = [(n, None)] if seed is None else [(1, seed + i) for i in range(n)]
        stop = threading.Event()

        def work() -> list[dict[str, str]]:
            model = self.compact_model(tok)
            data = []
            for count, seed_i in chunks:
                if stop.is_set():  # the client left
                    break
                for codes in generate_image_codes(model, [prompt] * count, grid, seed=seed_i, **settings):
                    data.append({"b64_json": _png_b64(tok, codes, grid, layout.num_codebooks)})
            return data

        async with self._compact_lock:
            job = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:  # the client left: stop after the current image, and keep the lock till then
                stop.set()
                await asyncio.wait({job})
                raise


def _number(body: dict[str, Any], key: str, default: float) -> float:
    """A finite JSON number (not a bool or a string) of the body, else ValueError (HTTP 400)."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not math.isfinite(number):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return number


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Await ``work`` unless the client disconnects first; then cancel it (None). vLLM's ``generate`` aborts its engine
    request when cancelled, so an abandoned call stops generating at once (the body has been read already, so the only
    message left to receive is ``http.disconnect``)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself was cancelled (shutdown): do not leave the work running
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task  # let every engine request's abort run
    return None


def _png_b64(tok: Any, codes: Any, grid: tuple[int, int], num_codebooks: int) -> str:
    import torch

    from meditok.tokenizer.preprocessing import to_pil

    with torch.no_grad():
        pixels = tok.decode(torch.from_numpy(codes).reshape(1, num_codebooks, -1), grid=grid)
    buffer = io.BytesIO()
    to_pil(pixels.float().clamp(-1, 1))[0].save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()
