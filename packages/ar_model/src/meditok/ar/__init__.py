"""meditok.ar: one autoregressive LLM over interleaved MedITok image tokens and text.

The token layout (:mod:`meditok.ar.layout`) imports only numpy; the model pulls in transformers lazily."""

from meditok.ar.layout import (
    ARCHITECTURE,
    CONFIG_KEY,
    ImageConstraint,
    LayoutError,
    TokenLayout,
    codes_to_token_ids,
    find_image_blocks,
    token_ids_to_codes,
)

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import meditok.ar` must not import transformers
    if name == "MedITokAR":
        from meditok.ar.model import MedITokAR

        return MedITokAR
    raise AttributeError(name)


__all__ = [
    "ARCHITECTURE",
    "CONFIG_KEY",
    "ImageConstraint",
    "LayoutError",
    "MedITokAR",
    "TokenLayout",
    "codes_to_token_ids",
    "find_image_blocks",
    "token_ids_to_codes",
]
