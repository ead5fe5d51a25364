"""The Gradio page: one upload (with its CT window and slice) shared by the Tokenize and Ask tabs, and a Generate tab.

Element ids (``elem_id``) are the browser test's handles: upload, status, original, reconstruction, error-map,
metrics, code-grid, usage, codes-file, recon-file, question, ask, answer, prompt, gen-size, gen-cfg, gen-temperature,
gen-top-k, gen-seed, generate, generated, gen-time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import core

WINDOW_DEFAULT = "model default"
NO_MODEL = "No unified model is loaded: start the demo with `--ar-model FOLDER` or `--server URL`."


def _upload_name(upload: Any) -> tuple[Path, str]:
    path = Path(upload if isinstance(upload, (str, os.PathLike)) else upload.name)
    # Gradio keeps the visitor's file name as the last part of its temporary path.
    return path, path.name


def _window(choice: str | None) -> str | None:
    return None if not choice or choice == WINDOW_DEFAULT else choice


def _slice(value: Any) -> int | None:
    return None if value is None or value == "" or int(value) < 0 else int(value)


def _error(message: str) -> str:
    return f"**Cannot use this file:** {message}"


def build(tok: Any, tokenizer_source: str, backend: Any | None, workdir: Path) -> Any:
    """The page for a loaded tokenizer and (optionally) a unified model (`core.LocalModel` / `core.ServerModel`)."""
    import gradio as gr
    from PIL import Image

    from meditok.tokenizer.image_files import ImageFileError

    loaded = f"**Tokenizer:** {core.describe_tokenizer(tok, tokenizer_source)}  \n**Ask / Generate:** " + (
        backend.describe() if backend is not None else "nothing loaded (`--ar-model FOLDER` or `--server URL`)"
    )
    recorded = tok.image_input.ct_window
    window_choices = [WINDOW_DEFAULT, *core.CT_WINDOW_CHOICES]
    empty = (None,) * 7
    tracker = gr.Progress()  # Gradio fills a function's progress bar through a gr.Progress default argument

    def tokenize(upload: Any, window: str, slice_value: Any, progress: Any = tracker) -> tuple:
        if upload is None:
            return ("", *empty)
        path, name = _upload_name(upload)
        request_dir = core.fresh_dir(workdir)
        try:
            result = core.tokenize_upload(tok, path, name, request_dir, _window(window), _slice(slice_value),
                                          progress=progress)  # fmt: skip
        except ImageFileError as exc:
            core.remove_dir(request_dir)
            return (_error(str(exc)), *empty)
        progress(0.9, desc="writing the downloads")
        base = core.stem(name)
        codes_file = core.write_codes(result, request_dir / f"{base}_codes.npz")
        recon_file = request_dir / f"{base}_reconstruction.png"
        Image.fromarray(result.reconstruction).save(recon_file)
        core.remove_dir(request_dir / "series")
        h, w = result.codes.shape[1:]
        metrics = (
            f"**PSNR {result.psnr:.2f} dB** (as `meditok reconstruct` prints it) · **SSIM {result.ssim:.4f}** "
            f"(as `meditok-eval recon`) · {h * 16}x{w * 16} pixels, a {h}x{w} grid of 8 codes"
        )
        usage_rows = "\n".join(
            f"| {k} | {used} of {positions} | {100 * used / tok.config.codebook_size:.2f} % |"
            for k, (used, positions) in enumerate(result.usage)
        )
        usage = (
            f"| sub-codebook | distinct codes / positions | of the {tok.config.codebook_size} codes |\n"
            f"|---|---|---|\n{usage_rows}"
        )
        status = "  \n".join(result.notes) or f"Tokenized **{name}**."
        return (
            status,
            result.original,
            result.reconstruction,
            result.error_map,
            metrics,
            result.code_grid,
            usage,
            [str(codes_file), str(recon_file)],
        )

    def ask(upload: Any, window: str, slice_value: Any, question: str, max_tokens: Any, progress: Any = tracker):
        if backend is None:
            yield NO_MODEL
            return
        if upload is None:
            yield "Upload an image first (above the tabs)."
            return
        if not (question or "").strip():
            yield "Type a question."
            return
        path, name = _upload_name(upload)
        request_dir = core.fresh_dir(workdir)
        try:
            progress(0.1, desc="reading the image")
            image = core.question_image(backend, path, name, request_dir, _window(window), _slice(slice_value))
            progress(0.3, desc="answering")
            yield from backend.answer(image, question.strip(), int(max_tokens or 64))
        except (ImageFileError, core.DemoError) as exc:
            yield _error(str(exc))
        finally:
            core.remove_dir(request_dir)

    def generate(prompt: str, size: Any, cfg: Any, temperature: Any, top_k: Any, seed: Any,
                 progress: Any = tracker):  # fmt: skip
        if backend is None:
            return None, NO_MODEL
        try:
            side = int(size)
            if side <= 0 or side % 16:
                raise core.DemoError(f"size {side} must be a positive multiple of 16")
            progress(0.1, desc=f"sampling {8 * (side // 16) ** 2} codes, then decoding")
            cfg_scale = None if cfg in (None, "") or float(cfg) == 1.0 else float(cfg)
            image, seconds = core.timed(backend.generate, prompt or "", side, cfg_scale, float(temperature),
                                        int(top_k or 0), None if seed in (None, "") else int(seed))  # fmt: skip
        except (core.DemoError, ValueError) as exc:
            return None, _error(str(exc))
        return image, f"{side}x{side} pixels in {seconds:.1f} s"

    cache = (core.KEEP_SECONDS, core.KEEP_SECONDS)  # Gradio's copies of uploads and downloads: hourly, older than 1 h
    with gr.Blocks(title="MedITok Studio", analytics_enabled=False, delete_cache=cache) as page:
        gr.Markdown("# MedITok Studio\nA medical image becomes a grid of discrete codes and back; an LLM reads and "
                    "writes those codes.")  # fmt: skip
        gr.Markdown(loaded, elem_id="loaded")
        with gr.Row():
            upload = gr.File(label="Image: DICOM, zipped DICOM series, NIfTI, PNG / JPEG / TIFF", elem_id="upload",
                             scale=3)  # fmt: skip
            window = gr.Dropdown(window_choices, value=WINDOW_DEFAULT, elem_id="ct-window", scale=1,
                                 label=f"CT window (the model's: {recorded})")  # fmt: skip
            slice_box = gr.Number(label="Slice of a volume (-1: the middle one)", value=-1, precision=0,
                                  elem_id="slice", scale=1)  # fmt: skip
        status = gr.Markdown(elem_id="status")
        with gr.Tabs():
            with gr.Tab("Tokenize", id="tokenize"):
                with gr.Row():
                    original = gr.Image(label="original (as tokenised)", format="png", elem_id="original")
                    reconstruction = gr.Image(label="reconstruction", format="png", elem_id="reconstruction")
                    error_map = gr.Image(label="absolute error", format="png", elem_id="error-map")
                metrics = gr.Markdown(elem_id="metrics")
                with gr.Row():
                    code_grid = gr.Image(label="codes of sub-codebook 0", format="png", elem_id="code-grid")
                    usage = gr.Markdown(elem_id="usage")
                downloads = gr.File(label="codes (.npz, as `meditok encode` writes) and reconstruction (.png)",
                                    file_count="multiple", elem_id="downloads")  # fmt: skip
            with gr.Tab("Ask", id="ask"):
                question = gr.Textbox(label="Question about the uploaded image", elem_id="question",
                                      value="What does this image show?")  # fmt: skip
                max_tokens = gr.Number(label="Max new tokens", value=64, precision=0, elem_id="max-tokens")
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                answer = gr.Textbox(label="Answer", lines=4, elem_id="answer", interactive=False)
            with gr.Tab("Generate", id="generate"):
                prompt = gr.Textbox(label="Prompt", value="Chest radiograph", elem_id="prompt")
                with gr.Row():
                    size = gr.Number(label="Size (pixels, multiple of 16)", value=256, precision=0, elem_id="gen-size")
                    cfg = gr.Number(label="CFG scale (1: none)", value=1.0, elem_id="gen-cfg")
                    temperature = gr.Number(label="Temperature (0: greedy)", value=1.0, elem_id="gen-temperature")
                    top_k = gr.Number(label="Top-k (0: all)", value=0, precision=0, elem_id="gen-top-k")
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="gen-seed")
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                # a fixed height: a 32x32 result would otherwise show as a 32-pixel stamp
                generated = gr.Image(label="generated", format="png", elem_id="generated", height=320)
                gen_time = gr.Markdown(elem_id="gen-time")
        outputs = [status, original, reconstruction, error_map, metrics, code_grid, usage, downloads]
        # a slice is taken on Enter or when the box loses focus, not on each keystroke (each would re-encode)
        for trigger in (upload.change, window.change, slice_box.submit, slice_box.blur):
            trigger(tokenize, [upload, window, slice_box], outputs)
        ask_button.click(ask, [upload, window, slice_box, question, max_tokens], answer)
        generate_button.click(generate, [prompt, size, cfg, temperature, top_k, seed], [generated, gen_time])
    return page
