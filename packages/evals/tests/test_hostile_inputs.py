"""meditok-eval with hostile and broken inputs (issue 12, points 11 and 12): nothing outside the data root is read or
uploaded, nothing but images is uploaded, one file is counted once, and broken labels or pixels give one clear error
or a counted, reported skip."""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
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


def test_mistaken_question_and_prediction_files_are_one_line(layout, tmp_path, capsys):
    binary = layout / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    questions = _questions(layout, "img.png")
    for args in (["--questions", str(layout), "--predictions", str(binary)],
                 ["--questions", str(binary), "--predictions", str(binary)],
                 ["--questions", str(questions), "--predictions", str(layout)]):  # fmt: skip
        assert main(["vqa", *args, "-o", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "is a directory" in err or "cannot read" in err


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


# ------------------------------------------------------------------------------------------------ point 12


def test_label_vectors_of_different_lengths_are_an_error(layout, tmp_path, capsys):
    from meditok.evals.data import label_matrix

    with pytest.raises(EvalError, match=r"different lengths: length 2 \(first at row 2\), length 3 \(first at row 1\)"):
        label_matrix([[0, 1, 1], [1, 0], [0, 1, 1]])
    with pytest.raises(EvalError, match="not 0/1 vectors"):
        label_matrix([[0, 1, 1], ["edema"]])
    m, names = label_matrix([[3, 7], [7]])  # class ids (not 0/1) stay names, as before
    assert names == ["3", "7"] and m.tolist() == [[1, 1], [0, 1]]
    manifest = layout / "labels.jsonl"
    rows = [{"path": "img.png", "modality": "xray", "findings": v} for v in ([0, 1, 1], [1, 0])]
    Image.new("L", (32, 32)).save(layout / "img2.png")
    rows[1]["path"] = "img2.png"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "probe"
    args = ["probe", "--data", str(manifest), "--label-key", "findings", "--weights", str(tmp_path / "none")]
    assert main([*args, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "different lengths" in err and not out.exists()


class _MeanColour:
    """Features = per-channel means (what separates the synthetic classes below)."""

    name = "mean colour"

    def features(self, images):
        return images.mean(dim=(2, 3))


def _synthetic(labels: list[str], splits: list[str], seed: int = 0):
    import torch

    from meditok.evals.data import EvalSet

    g = torch.Generator().manual_seed(seed)
    colour = {c: torch.tensor([i % 3 == 0, i % 3 == 1, i >= 2], dtype=torch.float32) for i, c in enumerate("abcd")}
    images = torch.stack([colour[c][:, None, None] + 0.3 * torch.randn(3, 8, 8, generator=g) for c in labels])
    return EvalSet("synthetic", images, ["x"] * len(labels), [str(i) for i in range(len(labels))], labels, splits)


def test_test_classes_never_seen_in_training_are_excluded_and_reported(tmp_path):
    from meditok.evals.probe import evaluate_probe, write_probe_report
    from meditok.evals.report import Report

    labels = list("ab" * 12) + list("ab" * 4) + ["c"] * 5
    splits = ["train"] * 24 + ["test"] * 13
    result = evaluate_probe(_synthetic(labels, splits), [_MeanColour()], batch_size=8, progress=False)
    assert result["excluded_unseen_test"] == {"c": 5} and result["n_test"] == 8
    keep = [i for i, c in enumerate(labels) if c != "c"]
    clean = _synthetic(labels, splits)
    clean.images, clean.labels, clean.splits = clean.images[keep], [labels[i] for i in keep], [splits[i] for i in keep]
    clean.keys, clean.groups = [clean.keys[i] for i in keep], [clean.groups[i] for i in keep]
    expected = evaluate_probe(clean, [_MeanColour()], batch_size=8, progress=False)["adapters"]["mean colour"]
    got = result["adapters"]["mean colour"]
    # the scores are those of the data without the unseen class (its column is an extra, empty one)
    assert got["accuracy"] == expected["accuracy"] and got["auc"] == pytest.approx(expected["auc"])
    assert got["accuracy"] > 0.9
    report = Report(tmp_path / "r", "probe")
    write_probe_report(report, {"synthetic": result}, [])
    report.write()
    text = (tmp_path / "r" / "report.md").read_text()
    assert "5 test image(s) excluded" in text and "c: 5" in text
    only_unseen = _synthetic(list("ab" * 6) + ["c"] * 3, ["train"] * 12 + ["test"] * 3)
    with pytest.raises(EvalError, match="every test image's class is absent from the training split"):
        evaluate_probe(only_unseen, [_MeanColour()], batch_size=8, progress=False)


def test_multilabel_classes_without_training_positives_leave_the_means(tmp_path):
    from meditok.evals.metrics import multilabel_metrics
    from meditok.evals.probe import evaluate_probe

    labels = list("ab" * 15)
    data = _synthetic(labels, ["train"] * 20 + ["test"] * 10)
    matrix = np.array([[c == "a", c == "b", 0] for c in labels], dtype=np.int64)
    matrix[20:23, 2] = 1  # class 2: positives only in the test split (the probe never saw one)
    data.label_matrix, data.label_names = matrix, ["a", "b", "rare"]
    result = evaluate_probe(data, [_MeanColour()], batch_size=8, progress=False)
    m = result["adapters"]["mean colour"]
    assert result["excluded_untrained_classes"] == ["rare"]
    assert m["per_class_auc"][2] is None and m["classes_scored"] == 2
    full = multilabel_metrics(np.array(m["scores"]), np.array(m["targets"]))
    assert full["per_class_auc"][2] is not None  # it would have been averaged in
    assert m["auc"] == pytest.approx(np.mean(full["per_class_auc"][:2]))


def test_a_nan_nifti_or_bomb_png_row_is_one_line(layout, tmp_path, capsys):
    import nibabel as nib

    from meditok.evals.data import load_eval_set, load_npz

    volume = np.ones((16, 16, 3), dtype=np.float32)
    volume[2, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), layout / "nan.nii.gz")
    bomb = layout / "bomb.png"  # a valid 1x1 PNG whose header then declares 60000x60000
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", 60000, 60000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    bomb.write_bytes(bytes(data))
    for name, reason in (("nan.nii.gz", "non-finite"), ("bomb.png", "")):
        manifest = layout / f"{name}.jsonl"
        rows = [{"path": "img.png", "modality": "xray"}, {"path": name, "modality": "mri"}]
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(EvalError, match=f"cannot read .*{name}.*{reason}"):
            load_eval_set(manifest, progress=False)
        rc = main(["recon", "--data", str(manifest), "--no-fid", "-o", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and name in err and "Traceback" not in err
    npz = tmp_path / "nan.npz"
    images = np.full((4, 8, 8), 0.5, dtype=np.float32)
    images[1, 2, 2] = np.nan
    np.savez(npz, train_images=images, train_labels=np.array([0, 1, 0, 1]), test_images=images,
             test_labels=np.array([0, 1, 0, 1]))  # fmt: skip
    with pytest.raises(EvalError, match=r"train_images\[1\]: image contains NaN"):
        load_npz(npz, size=16, progress=False)
