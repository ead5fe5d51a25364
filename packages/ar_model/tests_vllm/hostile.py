"""Hostile inputs of issue 12 (points 6-10), built here without the code under test: a deflate-compressed DICOM whose
data set inflates to 128 MB, a PNG whose header declares 60000 x 60000, a real (streamed) 20000 x 20000 PNG, and a
local HTTP listener that counts the connections a server makes to it."""

from __future__ import annotations

import functools
import http.server
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

BOMB_SIDE = 8000  # the deflated DICOM declares (and holds) 8000 x 8000 16-bit pixels: 64 M values, 128 MB


@functools.lru_cache(maxsize=1)
def deflated_dicom_bomb() -> bytes:
    from meditok.data.testing import synthetic_dicom

    data = synthetic_dicom(BOMB_SIDE, BOMB_SIDE, bytes(BOMB_SIDE * BOMB_SIDE * 2), deflated=True)
    assert len(data) < 1_000_000 and data[128:132] == b"DICM"
    return data


@functools.lru_cache(maxsize=1)
def nifti_gz_bomb() -> bytes:
    """A gzipped NIfTI of 1024 x 1024 x 256 zero voxels: 268 M voxels, 268 MB inflated, about 260 KB as sent."""
    import gzip

    import nibabel as nib
    import numpy as np

    raw = nib.Nifti1Image(np.zeros((1024, 1024, 256), np.uint8), np.eye(4)).to_bytes()
    data = gzip.compress(raw, 6)
    assert len(data) < 1_000_000
    return data


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb_header(side: int = 60000) -> bytes:
    """A valid 1x1 PNG whose IHDR is rewritten to declare ``side`` x ``side`` (CRC fixed)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = buffer.getvalue()
    assert data[12:16] == b"IHDR"
    body = struct.pack(">II", side, side) + data[24:29]
    return data[:8] + _chunk(b"IHDR", body) + data[33:]


@functools.lru_cache(maxsize=1)
def zero_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real, decodable 8-bit grayscale PNG of zeros, written row by row (never 400 MB in memory)."""
    compressor, row, parts = zlib.compressobj(9), b"\x00" * (width + 1), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


@contextmanager
def listener() -> Iterator[dict]:
    """An HTTP server on 127.0.0.1 serving a 16 x 16 PNG at every path; ``hits`` counts the requests it got."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "PNG")
    state = {"hits": 0, "png": buffer.getvalue()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state["hits"] += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(state["png"])))
            self.end_headers()
            self.wfile.write(state["png"])

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/x.png"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
