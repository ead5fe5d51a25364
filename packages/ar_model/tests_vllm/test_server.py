"""A real vLLM server (``vllm serve``, vLLM's own CLI) on 127.0.0.1, started once for this module, stopped by process group.

CPU settings from the notes: float32, a 256 MB KV cache, eager mode. Images are served at 64 px (4x4 grid)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from conftest import CAPTION, IMAGE_SIZE, QUESTION, data_url, vllm_serve
from PIL import Image

from meditok.ar.layout import find_image_blocks, token_ids_to_codes
from meditok.data.testing_contract import CASES as CONTRACT_CASES
from meditok.data.testing_contract import materialize, reference_input

GRID = (IMAGE_SIZE // 16, IMAGE_SIZE // 16)
N_CODES = 8 * GRID[0] * GRID[1]
MAX_PIXELS = 2000 * 2000  # VLLM_MAX_IMAGE_PIXELS (the sample DICOM is 1841x1955): 2048x2048 is "oversized"


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    # the hostile-input test relies on the plugin's media connector (data URLs only, no redirects)
    env = {"VLLM_MAX_IMAGE_PIXELS": str(MAX_PIXELS), "MEDITOK_VLLM_IMAGE_SIZE": str(IMAGE_SIZE),
           "VLLM_MEDIA_CONNECTOR": "meditok", "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}  # fmt: skip
    with vllm_serve(model_dir, tmp_path_factory.mktemp("server") / "vllm.log", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def reference(model_dir):
    """The transformers path on the same folder."""
    from meditok.ar.model import MedITokAR

    return MedITokAR.from_pretrained(model_dir)


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def _chat(url: str, images: list[str], question: str = QUESTION, max_tokens: int = 8) -> requests.Response:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": question}]
    body = {"model": "meditok", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "return_token_ids": True}  # fmt: skip
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def _generate(url: str, prompt_ids: list[int], **extra) -> requests.Response:
    body = {"model": "meditok", "prompt": prompt_ids, "max_tokens": N_CODES + 2, "temperature": 0,
            "return_token_ids": True, "vllm_xargs": {"image_size": IMAGE_SIZE}, **extra}  # fmt: skip
    return requests.post(f"{url}/v1/completions", json=body, timeout=120)


def _expected_prompt(reference, image: bytes) -> list[int]:
    """The transformers path's prompt for the bytes the client sent: `MedITokAR.encode_image` + its prompt builder
    (nothing from the plugin, so the server is checked against an independent door)."""
    codes, grid = reference.encode_image(image, size=IMAGE_SIZE)
    assert grid == GRID
    return reference.builder.question_prompt(codes, QUESTION, grid)


def test_chat_with_a_real_xray_png(server, reference, xray_png):
    response = _chat(server["url"], [data_url(xray_png)])
    assert response.status_code == 200, response.text
    data = response.json()
    choice = data["choices"][0]
    assert isinstance(choice["message"]["content"], str) and data["usage"]["completion_tokens"] >= 1
    # the chat template + processor give exactly the transformers path's prompt (image block in place of <image>)
    assert data["prompt_token_ids"] == _expected_prompt(reference, xray_png)


def test_chat_with_dicom_bytes(server, reference, xray_dicom):
    data = xray_dicom.read_bytes()
    response = _chat(server["url"], [data_url(data, "application/dicom")])
    assert response.status_code == 200, response.text
    assert response.json()["prompt_token_ids"] == _expected_prompt(reference, data)


def test_greedy_text_equals_transformers(server, reference, xray_png):
    from meditok.ar.generation import generate_text

    prompt = _expected_prompt(reference, xray_png)
    expected = generate_text(reference, prompt, max_new_tokens=12, temperature=0.0)
    body = {"model": "meditok", "prompt": prompt, "max_tokens": 12, "temperature": 0, "return_token_ids": True,
            "allowed_token_ids": list(range(reference.layout.text_vocab_size))}  # fmt: skip
    response = requests.post(f"{server['url']}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    got = [t for t in response.json()["choices"][0]["token_ids"] if t != reference.builder.eos]
    assert got == expected and len(expected) >= 1


def test_generation_is_layout_valid_and_equals_transformers(server, reference):
    from meditok.ar.generation import generate_image_tokens

    prompt = reference.builder.generation_prompt(CAPTION, GRID)
    response = _generate(server["url"], prompt)
    assert response.status_code == 200, response.text
    tokens = response.json()["choices"][0]["token_ids"]
    layout = reference.layout
    assert tokens[N_CODES] == layout.eoi_token_id and len(tokens) <= N_CODES + 2
    block = prompt[-3:] + tokens[: N_CODES + 1]
    codes, grid = token_ids_to_codes(block, layout)  # raises if any step broke the layout
    assert grid == GRID
    expected = generate_image_tokens(reference, [CAPTION], GRID, temperature=0.0)[0]
    assert block == expected
    # without the header in the prompt the server also writes <boi> <h> <w>
    response = _generate(server["url"], prompt[:-3], max_tokens=N_CODES + 5)
    head = response.json()["choices"][0]["token_ids"]
    assert find_image_blocks(head[: N_CODES + 4], layout) == [(0, N_CODES + 4)]


def test_generate_image_cli_against_the_server(server, reference, model_dir, tmp_path):
    from meditok.ar.cli import main

    out = tmp_path / "out.png"
    assert main(["generate-image", str(model_dir), "--server", server["url"], "--prompt", CAPTION,
                 "--size", str(IMAGE_SIZE), "--temperature", "0", "-o", str(out)]) == 0  # fmt: skip
    picture = Image.open(out)
    assert picture.size == (IMAGE_SIZE, IMAGE_SIZE) and picture.format == "PNG"
    expected = reference.generate_image(CAPTION, size=IMAGE_SIZE, temperature=0.0)
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected.convert("RGB")))


def test_images_endpoint_returns_the_greedy_png(server, reference):
    url = f"{server['url']}/v1/images/generations"
    body = {"prompt": CAPTION, "size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "temperature": 0, "n": 2}
    response = requests.post(url, json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2
    expected = np.asarray(reference.generate_image(CAPTION, size=IMAGE_SIZE, temperature=0.0).convert("RGB"))
    for item in data:
        picture = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert picture.format == "PNG" and np.array_equal(np.asarray(picture.convert("RGB")), expected)
    for bad in ({"prompt": CAPTION, "size": "20x20"}, {"prompt": CAPTION, "size": "64x64", "cfg_scale": -2.0},
                {"size": "64x64"}, {"prompt": CAPTION, "size": "64x64", "n": 9},
                {"prompt": CAPTION, "size": "64x64", "seed": "x"}):  # fmt: skip
        response = requests.post(url, json=bad, timeout=60)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["message"]


CFG_SCALE = 3.0


def test_guided_pair_equals_transformers_cfg(server, reference):
    """One completions request with the conditional and the unconditional prompt: both rows follow the guided
    greedy sequence of the transformers path (two KV caches), which differs from the unguided one."""
    from meditok.ar.generation import generate_image_tokens

    builder = reference.builder
    prompts = [builder.generation_prompt(CAPTION, GRID), builder.generation_prompt("", GRID)]
    xargs = {"image_size": IMAGE_SIZE, "cfg_scale": CFG_SCALE, "cfg_pair": "greedy-1"}
    response = _generate(server["url"], prompts, vllm_xargs=xargs)
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda c: c["index"])
    cond, uncond = (c["token_ids"] for c in choices)
    assert cond == uncond and cond[N_CODES] == reference.layout.eoi_token_id
    guided = generate_image_tokens(reference, [CAPTION], GRID, cfg_scale=CFG_SCALE, temperature=0.0)[0]
    assert prompts[0][-3:] + cond[: N_CODES + 1] == guided
    assert guided != generate_image_tokens(reference, [CAPTION], GRID, temperature=0.0)[0]
    # plain `vllm serve` got the paired scheduler from the plugin's config hook (vLLM logs a custom scheduler class)
    assert "meditok.ar.vllm_plugin.scheduler.AutoPairedScheduler" in server["log"].read_text()


def test_guided_images_endpoint_and_sampled_cli(server, reference, model_dir, tmp_path):
    from meditok.ar.cli import main

    url = f"{server['url']}/v1/images/generations"
    body = {"prompt": CAPTION, "size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "temperature": 0, "cfg_scale": CFG_SCALE, "n": 2}
    response = requests.post(url, json=body, timeout=120)
    assert response.status_code == 200, response.text
    expected = np.asarray(reference.generate_image(CAPTION, size=IMAGE_SIZE, cfg_scale=CFG_SCALE, temperature=0.0))
    for item in response.json()["data"]:
        picture = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(Image.fromarray(expected).convert("RGB")))
    # sampled guidance: the pair stays in lockstep (the client checks both rows agree) and a seed reproduces it
    outs = []
    for name in ("a.png", "b.png", "c.png"):
        seed = 11 if name != "c.png" else 12
        assert main(["generate-image", str(model_dir), "--server", server["url"], "--prompt", CAPTION, "--size",
                     str(IMAGE_SIZE), "--temperature", "1", "--seed", str(seed), "--cfg-scale", str(CFG_SCALE),
                     "-o", str(tmp_path / name)]) == 0  # fmt: skip
        outs.append(np.asarray(Image.open(tmp_path / name).convert("RGB")))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_bad_input_gets_400_and_the_server_keeps_serving(server, reference, xray_png):
    url = server["url"]
    truncated = data_url(xray_png[: len(xray_png) // 3])
    wav = data_url(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64), "image/png")
    big = data_url(_png(Image.new("RGB", (2048, 2048), (40, 40, 40))))
    cases = {
        "malformed image": _chat(url, [truncated]),
        "unsupported format": _chat(url, [wav]),
        "oversized image": _chat(url, [big]),
        "too many images": _chat(url, [data_url(xray_png)] * 2),
        "not base64": _chat(url, ["data:image/png;base64,@@@@"]),
        "bad image size": _generate(url, [1, 2, 3], vllm_xargs={"image_size": 20}),
        "cfg without pair": _generate(url, [1, 2, 3], vllm_xargs={"image_size": IMAGE_SIZE, "cfg_scale": 3.0}),
        "sampled cfg without seed": _generate(
            url, [1, 2, 3], temperature=1.0, vllm_xargs={"image_size": IMAGE_SIZE, "cfg_scale": 3.0, "cfg_pair": "a"}
        ),
    }
    for name, response in cases.items():
        assert response.status_code == 400, (name, response.status_code, response.text[:300])
        assert response.json()["error"]["message"], name
    assert "pixels" in cases["oversized image"].json()["error"]["message"]
    assert "cfg_pair" in cases["cfg without pair"].json()["error"]["message"]
    assert "seed" in cases["sampled cfg without seed"].json()["error"]["message"]
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    assert _chat(url, [data_url(xray_png)]).status_code == 200


def test_eight_concurrent_mixed_requests(server, reference, xray_png):
    url, layout = server["url"], reference.layout
    prompts = [reference.builder.generation_prompt(f"{CAPTION} Case {i}.", GRID) for i in range(4)]

    def understand(i: int):
        return "chat", _chat(url, [data_url(xray_png)], f"{QUESTION} ({i})", max_tokens=16)

    uncond = reference.builder.generation_prompt("", GRID)

    def generate(i: int):
        if i < 2:  # a guided pair (conditional + unconditional in one request) among the plain requests
            xargs = {"image_size": IMAGE_SIZE, "cfg_scale": CFG_SCALE, "cfg_pair": f"mix-{i}"}
            return "gen", _generate(url, [prompts[i], uncond], temperature=1.0, seed=i, vllm_xargs=xargs)
        return "gen", _generate(url, prompts[i], temperature=1.0, seed=i)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(understand, i) for i in range(4)] + [pool.submit(generate, i) for i in range(4)]
        results = [f.result() for f in futures]
    blocks = []
    for kind, response in results:
        assert response.status_code == 200, (kind, response.text[:300])
        if kind == "gen":
            choices = sorted(response.json()["choices"], key=lambda c: c["index"])
            tokens = choices[0]["token_ids"]
            assert all(c["token_ids"] == tokens for c in choices)  # a guided pair came back in lockstep
            blocks.append(prompts[0][-3:] + tokens[: N_CODES + 1])
            token_ids_to_codes(blocks[-1], layout)
        else:
            assert response.json()["usage"]["completion_tokens"] >= 1
    assert len({tuple(b) for b in blocks}) == 4  # sampled with different seeds: different images


@pytest.mark.parametrize("case", CONTRACT_CASES)
def test_image_contract_server_prompt_ids_equal_the_reference(server, reference, case, tmp_path):
    """The image-input contract through `vllm serve`: the file's bytes in a data URL (DICOM and NIfTI too) become the
    prompt ids of the independent reference (pydicom / nibabel / PIL / numpy at the served size), the same ids as
    `MedITokAR.encode_image(path)` and `meditok-eval vqa --model-path` give."""
    path = materialize(case, tmp_path)
    mime = "image/png" if path.suffix == ".png" else "application/octet-stream"
    response = _chat(server["url"], [data_url(path.read_bytes(), mime)])
    assert response.status_code == 200, response.text
    codes = reference.image_tokenizer.encode(reference_input(case, path, size=IMAGE_SIZE))[0]
    assert response.json()["prompt_token_ids"] == reference.builder.question_prompt(codes, QUESTION, GRID)


def _metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples on /metrics (all label sets)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((f"{name}{{", f"{name} "))
    )


def test_hostile_input_set_gets_clear_400s_and_good_answers_stay_unchanged(server, reference, xray_png):
    """Issue 12, points 6-10, through the real server: every hostile request is a 400 with a message (none reaches a
    remote host, none costs more than a few seconds), an abandoned images request is aborted in the engine, and a
    fixed set of good requests answers exactly as before."""

    from hostile import BOMB_SIDE, deflated_dicom_bomb, listener, nifti_gz_bomb, png_bomb_header, zero_png

    url = server["url"]
    images = f"{url}/v1/images/generations"

    def good() -> tuple:
        chat = _chat(url, [data_url(xray_png)], max_tokens=12)
        picture = requests.post(
            images, json={"prompt": CAPTION, "size": f"{IMAGE_SIZE}", "temperature": 0}, timeout=120
        )
        assert chat.status_code == 200 and picture.status_code == 200, (chat.text[:300], picture.text[:300])
        choice = chat.json()["choices"][0]
        return chat.json()["prompt_token_ids"], choice["token_ids"], picture.json()["data"][0]["b64_json"]

    before = good()
    prompt = reference.builder.generation_prompt(CAPTION, GRID)
    pair = [prompt, reference.builder.generation_prompt("", GRID)]
    huge = 1e39  # finite in Python, inf in float32
    big_side = 192  # a 12 x 12 grid: 1152 codes, more than --max-model-len 1024
    timings = {}

    def timed(name: str, send):
        start = time.monotonic()
        response = send()
        timings[name] = time.monotonic() - start
        return response

    with listener() as remote:
        cases = {
            # 6: no server-side fetch of any URL; open and closed ports answer alike (no port scanner)
            "http url, open port": (lambda: _chat(url, [remote["url"]]), "data URLs only"),
            "http url, closed port": (lambda: _chat(url, ["http://127.0.0.1:9/x.png"]), "data URLs only"),
            "file url": (lambda: _chat(url, ["file:///etc/hostname"]), "allowed-local-media-path"),
            # 7: refused from the DICOM header, before the 128 MB data set is inflated
            "deflated dicom bomb": (
                lambda: _chat(url, [data_url(deflated_dicom_bomb(), "application/dicom")]),
                f"{BOMB_SIDE} x {BOMB_SIDE} pixels",
            ),
            "gzipped nifti bomb": (
                lambda: _chat(url, [data_url(nifti_gz_bomb(), "application/octet-stream")]),
                "1024 x 1024 x 256 = 268435456 voxels",
            ),
            # 8: pixel bombs, out-of-range integers, sizes that cannot fit: 400 at once
            "png bomb header": (lambda: _chat(url, [data_url(png_bomb_header(60000))]), "3600000000 pixels"),
            "real 20000^2 png": (lambda: _chat(url, [data_url(zero_png(20000, 20000))]), "400000000 pixels"),
            "completions seed 2**70": (lambda: _generate(url, prompt, seed=2**70), "seed"),
            "completions top_k 1e300": (lambda: _generate(url, prompt, top_k=1e300), "top_k"),
            "images seed 2**70": (
                lambda: requests.post(images, json={"prompt": CAPTION, "seed": 2**70}, timeout=60),
                "seed",
            ),
            "images top_k 1e300": (
                lambda: requests.post(images, json={"prompt": CAPTION, "top_k": 1e300}, timeout=60),
                "top_k",
            ),
            "images size beyond max-model-len": (
                lambda: requests.post(images, json={"prompt": CAPTION, "size": str(big_side)}, timeout=60),
                "--max-model-len 1024",
            ),
            "completions size beyond max-model-len": (
                lambda: _generate(url, prompt[:-3], max_tokens=None, vllm_xargs={"image_size": big_side}),
                "1153 output tokens",
            ),
            # 9: a guidance scale that is infinite in float32
            "completions cfg_scale 1e39": (
                lambda: _generate(url, pair, vllm_xargs={"image_size": IMAGE_SIZE, "cfg_scale": huge, "cfg_pair": "h"}),
                "float32",
            ),
            "images cfg_scale 1e39": (
                lambda: requests.post(images, json={"prompt": CAPTION, "size": "64", "cfg_scale": huge}, timeout=60),
                "float32",
            ),
        }
        answers = {name: timed(name, send) for name, (send, _) in cases.items()}
        assert remote["hits"] == 0
    for name, (_, expected) in cases.items():
        response = answers[name]
        assert response.status_code == 400, (name, response.status_code, response.text[:300])
        message = response.json()["error"]["message"]
        assert expected in message, (name, message[:300])
        assert timings[name] < 15, (name, timings[name])  # the bomb cost 35 s, the oversized generation 35 s
    ports = [answers[f"http url, {kind} port"].json()["error"]["message"] for kind in ("open", "closed")]
    assert ports[0].replace(remote["url"], "URL") == ports[1].replace("http://127.0.0.1:9/x.png", "URL")

    # 10: a client that leaves an images request: its 8 engine requests are aborted, not run to the end
    side = 160  # 10 x 10 grid: 800 codes per image, 8 images (with the prompt well inside --max-model-len 1024)
    body = {"prompt": CAPTION, "size": str(side), "n": 8, "temperature": 1.0, "seed": 3}
    tokens_before = _metric(url, "vllm:generation_tokens_total")
    # Why a raw socket and not a client timeout: on a loaded machine the 8 requests may start later than any fixed
    # timeout; the client leaves only once the engine reports them running, however long that takes.
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    client = socket.create_connection((host, int(port)), timeout=10)
    client.sendall(
        b"POST /v1/images/generations HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload
    )
    running, running_deadline, early = 0.0, time.monotonic() + 60, b""
    client.setblocking(False)
    while running < 8 and time.monotonic() < running_deadline and not early:
        running = _metric(url, "vllm:num_requests_running")
        try:
            early = client.recv(4096)  # an answer before the requests ran (a refusal) fails the test with its text
        except BlockingIOError:
            pass
    assert running == 8, (running, early[:500])  # the 8 requests are running when the client leaves
    client.close()
    left = time.monotonic()
    deadline = left + 20
    while _metric(url, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = time.monotonic()
    generated = _metric(url, "vllm:generation_tokens_total") - tokens_before
    assert stopped - left < 5, stopped - left
    # measured on 2 CPU cores (side 176): running 8 -> 0 in 0.15 s after the client left, 1625 of 7760 tokens generated
    assert generated < 8 * (8 * (side // 16) ** 2 + 2), generated  # not the 8 full images

    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    assert good() == before
