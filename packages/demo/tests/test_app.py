"""MedITok Studio in a real browser: Debian's Chromium driven by Selenium (system binaries: apt-packages.txt), against
`meditok-demo` started as a user starts it, with the tiny models of conftest.py. Expected values come from the other
doors: the `meditok` CLI (codes file, PSNR, error messages), `MedITok` and `MedITokAR` called directly (pixels, answer,
generated image). Screenshots of each tab go to $MEDITOK_DEMO_SCREENSHOTS, else the test's temporary folder."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_skip_reason, run_cli

from meditok.data.testing import require

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUESTION = "Is there a fracture?"
PROMPT = "Head CT"
GEN_SIZE = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app(models, tmp_path_factory):
    """`meditok-demo --weights TOK --ar-model AR --port P` in its own process, until the page answers."""
    import requests

    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "demo.log"
    script = Path(sys.executable).with_name("meditok-demo")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "meditok.demo.cli"]
    command += ["--weights", str(models["tokenizer"]), "--ar-model", str(models["ar"]), "--port", str(port)]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"meditok-demo did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    require(shutil.which(CHROMIUM) is not None and shutil.which(CHROMEDRIVER) is not None,
            "Debian chromium + chromium-driver (packages/demo/apt-packages.txt)")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root; explicit driver path: Selenium Manager's download is not reachable
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MEDITOK_DEMO_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


def _wait(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _image(driver, elem_id: str) -> tuple[str, np.ndarray]:
    """The (src, pixels) of the image an output element shows, once it shows one."""
    import requests
    from PIL import Image
    from selenium.webdriver.common.by import By

    def src():
        found = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        value = found[0].get_attribute("src") if found else None
        return value or None

    url = _wait(src, f"an image in #{elem_id}")
    reply = requests.get(url, timeout=30)
    reply.raise_for_status()
    return url, np.asarray(Image.open(io.BytesIO(reply.content)).convert("RGB"))


def _text(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, elem_id)  # absent until the page's JavaScript has rendered it
    return found[0].text if found else ""


def _set(driver, elem_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.TAB)  # Gradio takes the value on input/blur


def _tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name).click()


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    # A file already shown replaces the drop zone: clear it first, as a visitor does, and the input comes back.
    for button in driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label=Clear]"):
        button.click()
    field = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), "the upload field")
    field[0].send_keys(str(path))


def test_tokenize_ask_generate_and_a_bad_upload_in_chromium(app, browser, shots, models, ct_path, bad_files,
                                                             tmp_path):  # fmt: skip
    import requests
    import torch

    from meditok.ar import MedITokAR
    from meditok.tokenizer import MedITok
    from meditok.tokenizer.preprocessing import to_uint8

    tok = MedITok.from_pretrained(models["tokenizer"]).eval()
    browser.get(app)
    loaded = _wait(lambda: _text(browser, "loaded"), "the page")
    assert "small demo tokenizer (tiny" in loaded and "LlamaForCausalLM" in loaded, loaded

    # Tokenize: the real head CT; the reconstruction is the tokenizer's, the PSNR the CLI's, the codes the CLI's.
    _upload(browser, ct_path)
    _, recon = _image(browser, "reconstruction")
    with torch.no_grad():
        expected = to_uint8(tok.reconstruct(tok.prepare(str(ct_path))))[0]
    assert recon.std() > 5, "the reconstruction is blank"
    np.testing.assert_array_equal(recon, expected)
    _, original = _image(browser, "original")
    np.testing.assert_array_equal(original, to_uint8(tok.prepare(str(ct_path)))[0])
    metrics = _wait(lambda: re.search(r"PSNR ([-\d.]+) dB", _text(browser, "metrics")), "the PSNR")
    code, out, err = run_cli(["reconstruct", ct_path.name, "--weights", str(models["tokenizer"]), "-o",
                              str(tmp_path / "recon")], ct_path.parent)  # fmt: skip
    assert code == 0, err
    assert metrics.group(1) == re.search(r"PSNR ([-\d.]+) dB", out).group(1)
    from selenium.webdriver.common.by import By

    links = _wait(lambda: [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")
                           if a.get_attribute("href") and "_codes.npz" in a.get_attribute("href")], "the codes link")  # fmt: skip
    downloaded = tmp_path / "downloaded.npz"
    downloaded.write_bytes(requests.get(links[0], timeout=30).content)
    code, _, err = run_cli(["encode", ct_path.name, "--weights", str(models["tokenizer"]), "-o",
                            str(tmp_path / "cli.npz")], ct_path.parent)  # fmt: skip
    ours, cli = np.load(downloaded), np.load(tmp_path / "cli.npz")
    np.testing.assert_array_equal(ours["codes_0"], cli["codes_0"])
    assert list(ours["names"]) == list(cli["names"]) and str(ours["format"]) == str(cli["format"])
    browser.save_screenshot(str(shots / "tokenize.png"))

    # Ask: the answer MedITokAR gives for the same file and question.
    model = MedITokAR.from_pretrained(models["ar"])
    _tab(browser, "Ask")
    _set(browser, "question", QUESTION)
    browser.find_element(By.ID, "ask").click()

    def answer():
        value = browser.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
        return value or None

    shown = _wait(answer, "the answer")
    assert shown == model.answer(str(ct_path), QUESTION, max_new_tokens=64) != ""
    browser.save_screenshot(str(shots / "ask.png"))

    # Generate: a small image, equal to MedITokAR.generate_image with the page's settings (seed 0, temperature 1).
    _tab(browser, "Generate")
    _set(browser, "prompt", PROMPT)
    _set(browser, "gen-size", str(GEN_SIZE))
    browser.find_element(By.ID, "generate").click()
    _, generated = _image(browser, "generated")
    expected = np.asarray(model.generate_image(PROMPT, size=GEN_SIZE, temperature=1.0, top_k=0, seed=0))
    assert generated.shape == (GEN_SIZE, GEN_SIZE, 3)
    np.testing.assert_array_equal(generated, expected)
    assert re.search(rf"{GEN_SIZE}x{GEN_SIZE} pixels in [\d.]+ s", _text(browser, "gen-time"))
    browser.save_screenshot(str(shots / "generate.png"))

    # A bad upload: the CLI's message on the page, and the app keeps serving (the CT again reconstructs).
    _tab(browser, "Tokenize")
    for kind in ("pdf", "huge_dicom"):
        reason = cli_skip_reason(bad_files[kind], models["tokenizer"], tmp_path)
        _upload(browser, bad_files[kind])
        status = _wait(lambda reason=reason: reason in (text := _text(browser, "status")) and text, f"{kind}'s error")
        assert status.startswith("Cannot use this file:"), status
    assert not browser.find_elements(By.CSS_SELECTOR, "#reconstruction img"), "an error clears the old result"
    browser.save_screenshot(str(shots / "tokenize-error.png"))
    _upload(browser, ct_path)  # Gradio serves equal files under one URL: the image coming back is the sign
    _, again = _image(browser, "reconstruction")
    np.testing.assert_array_equal(again, recon)
    assert "Tokenized" in _text(browser, "status")
