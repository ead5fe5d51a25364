"""MedITok Studio: a local web demo of the tokenizer (Tokenize) and the unified model (Ask, Generate).

    meditok-demo [--weights TOKENIZER] [--ar-model FOLDER | --server URL] [--host HOST] [--port PORT]

`meditok.demo.core` holds everything that is not the page (uploads through the image-input contract, metrics, the
models behind Ask and Generate), so it is tested without a browser; `meditok.demo.app` builds the Gradio page."""

__version__ = "0.1.0"
