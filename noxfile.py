"""Project sessions.

    nox -s test          # every package's tests, each package in its own fresh venv
    nox -s "test(package='tokenizer')"   # one package
    nox -s lint
    nox -s build install_wheels          # sdist + wheel per package, checked; the wheels installed in a fresh venv

Each test session installs the CPU torch wheel first (so that nothing can pull a CUDA build), then only the package
under test with its declared `[test]` extra, so an import the package forgot to declare fails here.
Optional per-package files:
    packages/<pkg>/test-nodeps.txt   requirements installed with --no-deps (data packages whose own deps are heavy)
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import zipfile
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
# In CI every session's venv is removed when the session ends: all of them together hold about 19 GB (the timm one
# alone 6 GB of CUDA libraries), more than a CI machine's free disk (a CI run died of "No space left on device" in its
# sixth venv); one at a time (plus the build check's) fits.
REMOVE_VENVS = os.environ.get("CI") == "true"


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
    try:
        _test(session, package)
    finally:
        _remove_venv_in_ci(session)


def _remove_venv_in_ci(session: nox.Session) -> None:
    location = getattr(session.virtualenv, "location", None)
    if REMOVE_VENVS and location and Path(location).is_dir():
        size = sum(f.stat().st_size for f in Path(location).rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(location, ignore_errors=True)
        session.log(f"removed {location} ({size / 1e9:.1f} GB) to leave the disk to the next session")


def _test(session: nox.Session, package: str) -> None:
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


# The distributions `build` makes and `install_wheels` installs, in dependency order: folder -> (name, import name).
DISTRIBUTIONS = {
    "tokenizer": ("meditok-tokenizer", "tokenizer"),
    "data": ("meditok-data", "data"),
    "ar_model": ("meditok-ar", "ar"),
    "evals": ("meditok-evals", "evals"),
}
DIST = ROOT / "dist"


@nox.session
def build(session: nox.Session) -> None:
    """sdist + wheel of each package into dist/, then checked: `twine check --strict` (metadata, README rendering)
    and, read from the archives here, one `meditok/<name>/` tree per wheel with no `meditok/__init__.py` (the four
    share the namespace, so such a file would clash), file versions equal to `__version__`, and every sibling
    requirement with a version range."""
    # hatchling directly, not `python -m build`: build's isolated environments download hatchling once per archive.
    session.install("hatchling>=1.18", "twine>=5")
    shutil.rmtree(DIST, ignore_errors=True)
    for folder in DISTRIBUTIONS:
        session.chdir(ROOT / "packages" / folder)
        session.run("python", "-m", "hatchling", "build", "-d", str(DIST), silent=True)
    session.chdir(ROOT)
    archives = sorted(str(p) for p in DIST.iterdir())
    session.run("twine", "check", "--strict", *archives)
    for folder, (name, module) in DISTRIBUTIONS.items():
        _check_wheel(session, folder, name, module)
    session.log(f"built and checked {len(archives)} archives in {DIST}")
    _log_cpu(session, "build")


def _check_wheel(session: nox.Session, folder: str, name: str, module: str) -> None:
    version_file = ROOT / "packages" / folder / "src" / "meditok" / module / "__init__.py"
    version = re.search(r'^__version__ = "([^"]+)"', version_file.read_text(), re.M).group(1)
    stem = f"{name.replace('-', '_')}-{version}"
    wheel, sdist = DIST / f"{stem}-py3-none-any.whl", DIST / f"{stem}.tar.gz"
    if not wheel.is_file() or not sdist.is_file():
        session.error(f"{name}: expected {wheel.name} and {sdist.name} (version {version} from {version_file})")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{stem}.dist-info/METADATA").decode()
    stray = [n for n in names if not n.startswith((f"meditok/{module}/", f"{stem}.dist-info/"))]
    if stray:
        session.error(f"{wheel.name}: files outside meditok/{module}/: {stray[:5]}")
    siblings = {n for n, _ in DISTRIBUTIONS.values()} - {name}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist: meditok-"):
            requirement = line.split(": ", 1)[1].split(";")[0]
            base = re.match(r"[a-z-]+", requirement).group(0)
            if base in siblings and not ("<" in requirement and ">=" in requirement):
                session.error(f"{wheel.name}: sibling requirement without a version range: {requirement}")


@nox.session(reuse_venv=False)
def install_wheels(session: nox.Session) -> None:
    """A fresh venv: the CPU torch first (nothing may pull a CUDA build), then the four packages from dist/'s wheels
    alone (pip records each as a .whl, never a folder), then every CLI's --help and one real command each, on a
    PNG and a tiny tokenizer written in a temporary folder."""
    try:
        _install_wheels(session)
    finally:
        _remove_venv_in_ci(session)


def _install_wheels(session: nox.Session) -> None:
    wheels = [DIST / _wheel_name(folder, name, module) for folder, (name, module) in DISTRIBUTIONS.items()]
    missing = [w.name for w in wheels if not w.is_file()]
    if missing:
        session.error(f"no {', '.join(missing)} in {DIST}: run `nox -s build` first")
    # --no-compile: byte-compiling every installed module (transformers alone has thousands) is most of the install's
    # CPU time on 2 cores; Python compiles what the commands import when they import it.
    session.install("--no-compile", TORCH)
    session.install("--no-compile", *map(str, wheels))
    check = (
        "import json, importlib.metadata as m\n"
        "for name in %r:\n"
        "    url = json.loads(m.distribution(name).read_text('direct_url.json'))['url']\n"
        "    assert url.endswith('.whl'), (name, url)\n"
        "    print(name, m.version(name), 'from', url.rsplit('/', 1)[-1])\n"
    ) % [name for name, _ in DISTRIBUTIONS.values()]
    session.run("python", "-c", check)
    work = Path(session.create_tmp())
    session.chdir(work)
    shutil.rmtree(work / "smoke", ignore_errors=True)
    session.run("python", "-c", SMOKE_INPUTS)
    _log_cpu(session, "installs and inputs")
    # The installs skip byte-compiling (--no-compile); the first command to import a module writes its .pyc for the
    # next ones, also where PYTHONDONTWRITEBYTECODE is set (it is on our build machines: every command then compiled
    # transformers, scipy, ... from source again).
    session.env["PYTHONDONTWRITEBYTECODE"] = ""
    for cli in ("meditok", "meditok-data", "meditok-ar", "meditok-eval"):
        session.run(cli, "--help", silent=True)
        _log_cpu(session, f"{cli} --help")
    session.run("meditok-data", "-q", "index", "smoke/images", "-o", "smoke/manifest.jsonl")
    _log_cpu(session, "meditok-data index")
    session.run("meditok", "reconstruct", "smoke/images/a.png", "--weights", "smoke/tiny", "-o", "smoke/recon")
    _log_cpu(session, "meditok reconstruct")
    result = session.run("meditok-ar", "pretokenize", "smoke/manifest.jsonl", "-o", "smoke/codes", "--tokenizer",
                         "smoke/tiny", silent=True)  # fmt: skip
    if '"skipped_rows": 0' not in (result or ""):  # pretokenize skips unreadable rows and still exits 0
        session.error(f"meditok-ar pretokenize skipped rows: {result}")
    _log_cpu(session, "meditok-ar pretokenize")
    session.run("meditok-eval", "codebook", "--data", "smoke/manifest.jsonl", "--weights", "smoke/tiny", "--quiet",
                "-o", "smoke/eval")  # fmt: skip
    _log_cpu(session, "meditok-eval codebook")


def _log_cpu(session: nox.Session, what: str) -> None:
    """CPU seconds the session's commands used so far: on a shared machine wall time says little about what the same
    work costs on CI's two cores, CPU time does (the 4-minute budget of build + install_wheels is set in CPU-bound
    work plus downloads)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    session.log(f"{what}: {total - _CPU_SEEN[0]:.1f} s CPU ({total:.0f} s so far, user + system of all commands)")
    _CPU_SEEN[0] = total


_CPU_SEEN = [0.0]


def _wheel_name(folder: str, name: str, module: str) -> str:
    version_file = ROOT / "packages" / folder / "src" / "meditok" / module / "__init__.py"
    version = re.search(r'^__version__ = "([^"]+)"', version_file.read_text(), re.M).group(1)
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


# Two 64x64 PNGs (a gradient and a disc) and a randomly initialised tiny tokenizer with a 64-pixel image input.
SMOKE_INPUTS = """
import numpy as np
from PIL import Image
from pathlib import Path
from meditok.tokenizer import ImageInput, MedITok
images = Path("smoke/images"); images.mkdir(parents=True)
y, x = np.mgrid[:64, :64]
Image.fromarray((x * 4).astype(np.uint8)).save(images / "a.png")
Image.fromarray((((x - 32) ** 2 + (y - 32) ** 2 < 400) * 200).astype(np.uint8)).save(images / "b.png")
tok = MedITok.from_config("tiny", seed=0)
tok.image_input = ImageInput(size=64)
tok.save_pretrained("smoke/tiny")
"""


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))
