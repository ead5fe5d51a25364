"""Speed and memory of a tokenizer: the timing code behind ``benchmarks/tokenizer_speed.py`` and ``meditok-eval bench``.

Kept in the package (torch only) so an installed meditok-tokenizer can be measured without a checkout."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def time_batches(tok: Any, batch_sizes: list[int], size: int, repeats: int, device: str) -> list[dict]:
    """Median encode / decode seconds (and process CPU seconds) per batch size, after one warm-up pass each."""
    from tqdm import tqdm

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    for batch in tqdm(batch_sizes, desc="batch sizes"):
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        codes = tok.encode(x)
        tok.decode(codes)  # warm-up: allocator, oneDNN/cuDNN primitive selection
        enc, dec, cpu = [], [], []
        for _ in range(repeats):
            sync()
            c0 = time.process_time()
            t0 = time.perf_counter()
            codes = tok.encode(x)
            sync()
            t1 = time.perf_counter()
            tok.decode(codes)
            sync()
            t2 = time.perf_counter()
            cpu.append(time.process_time() - c0)
            enc.append(t1 - t0)
            dec.append(t2 - t1)
        e, d = statistics.median(enc), statistics.median(dec)
        rows.append(
            {
                "batch": batch,
                "encode_s": e,
                "decode_s": d,
                "encode_img_s": batch / e,
                "decode_img_s": batch / d,
                "encode_decode_s": statistics.median(a + b for a, b in zip(enc, dec)),
                "cpu_s": statistics.median(cpu),
            }
        )
    return rows


MEASURE_RSS = """
import resource, json, torch
from meditok.tokenizer import MedITok
tok = MedITok.from_pretrained({weights!r}, device={device!r}, dtype=getattr(torch, {dtype!r}))
x = torch.rand(2, 3, {size}, {size}) * 2 - 1
tok.decode(tok.encode(x))
gpu = torch.cuda.max_memory_allocated() / 2**30 if {device!r}.startswith("cuda") else None
print(json.dumps({{"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_gpu_gib": gpu}}))
"""


def measure_rss(weights: str | os.PathLike, device: str, dtype: str, size: int) -> dict:
    """Peak RSS (and GPU memory) of a fresh process that loads ``weights`` and encodes+decodes one B=2 batch."""
    code = MEASURE_RSS.format(weights=str(weights), device=str(device), dtype=dtype, size=size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement of {weights} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """CPU model, core count, torch version and threads (and the GPU when there is one): the line reports carry."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"
