"""meditok-eval with hostile and broken inputs (issue 12, points 11 and 12): nothing outside the data root is read or
uploaded, nothing but images is uploaded, one file is counted once, and broken labels or pixels give one clear error
or a counted, reported skip."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from PIL import Image

from meditok.evals import vqa
from meditok.evals.cli import main
from meditok.evals.data import load_manifest
from meditok.evals.errors import EvalError


class _CountingServer(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        _CountingServer.requests.append(("GET", self.path, None))
        self._send({"data": [{"id": "fake"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _CountingServer.requests.append(("POST", self.path, body))
        self._send({"choices": [{"message": {"role": "assistant", "content": "yes"}}]})


@pytest.fixture()
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _CountingServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _CountingServer.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def layout(tmp_path):
    """data/ (the root) holding img.png and a text file named like an image; outside/secret.txt next to it."""
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(data / "img.png")
    (data / "fake.png").write_text("SECRET inside the root, named like a PNG")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET outside the root")
    Image.new("L", (32, 32)).save(outside / "elsewhere.png")
    return data


def _questions(folder, image: str):
    path = folder / "questions.jsonl"
    path.write_text(json.dumps({"question_id": 1, "image": image, "question": "Is it normal?", "answer": "yes"}) + "\n")
    return path


def _sent_bytes() -> bytes:
    return b"".join(json.dumps(body).encode() for _, _, body in _CountingServer.requests if body)


@pytest.mark.parametrize("image", ["../outside/secret.txt", "/etc/hostname", "sub/../../outside/elsewhere.png"])
def test_vqa_url_refuses_images_outside_the_root(layout, server, tmp_path, capsys, image):
    questions = _questions(layout, image)
    rc = main(["vqa", "--questions", str(questions), "--url", server, "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "outside the image root" in err and "--allow-outside-root" in err
    assert _CountingServer.requests == []  # refused before the server is even asked for its models


def test_vqa_url_uploads_nothing_but_images(layout, server, tmp_path, capsys):
    for image, extra in (("fake.png", []), ("../outside/secret.txt", ["--allow-outside-root"])):
        questions = _questions(layout, image)
        rc = main(["vqa", "--questions", str(questions), "--url", server, "-o", str(tmp_path / "o"), "--quiet", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "not an image, nothing sent" in err and "not a recognised image format" in err
        assert b"SECRET" not in _sent_bytes() and _CountingServer.requests == []
    # an image outside the root is sent only with the flag; one inside always
    questions = _questions(layout, "../outside/elsewhere.png")
    args = ["vqa", "--questions", str(questions), "--url", server, "-o", str(tmp_path / "o2"), "--quiet"]
    assert main([*args, "--allow-outside-root"]) == 0
    posts = [body for method, _, body in _CountingServer.requests if method == "POST"]
    assert len(posts) == 1 and posts[0]["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png")
    question = vqa.load_questions(_questions(layout, "./sub/../img.png"), check_images=True)[0]
    assert question.image == str((layout / "img.png").resolve())


def test_manifest_rows_resolve_under_the_root_and_count_once(layout, tmp_path, capsys):
    manifest = layout / "manifest.jsonl"
    rows = [
        {"path": p, "modality": "xray"} for p in ("img.png", "./img.png", "sub/../img.png", str(layout / "img.png"))
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_manifest(manifest)
    assert len(loaded) == 1 and loaded.duplicates == 3
    assert "3 duplicate row(s) dropped" in capsys.readouterr().err
    hostile = layout / "hostile.jsonl"
    hostile.write_text(
        "".join(json.dumps({"path": p, "modality": "xray"}) + "\n" for p in ("img.png", "../outside/elsewhere.png"))
    )
    with pytest.raises(EvalError, match=r"1 row\(s\) name files outside the data root .*--allow-outside-root"):
        load_manifest(hostile)
    assert len(load_manifest(hostile, allow_outside_root=True)) == 2
    assert len(load_manifest(hostile, data_root=tmp_path)) == 2
    # absolute rows (what `meditok-data index ROOT -o elsewhere.jsonl` writes) are read, and said; --data-root
    # confines them too
    absolute = layout / "absolute.jsonl"
    absolute.write_text(json.dumps({"path": str(tmp_path / "outside" / "elsewhere.png"), "modality": "xray"}) + "\n")
    assert len(load_manifest(absolute)) == 1
    assert "1 row(s) name files outside its folder by absolute path" in capsys.readouterr().err
    with pytest.raises(EvalError, match="outside the data root"):
        load_manifest(absolute, data_root=layout)
    csv_manifest = layout / "hostile.csv"
    csv_manifest.write_text("identifier,modality\nimg.png,xray\n../outside/elsewhere.png,xray\n")
    with pytest.raises(EvalError, match="outside the data root"):
        load_manifest(csv_manifest)
    # the command line: refused before any weights load, one line
    for args in ([], ["--data-root", str(layout)]):
        manifest = hostile if not args else absolute
        rc = main(
            ["codebook", "--weights", str(tmp_path / "w"), "--data", str(manifest), "-o", str(tmp_path / "c"), *args]
        )
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "outside the data root" in err
