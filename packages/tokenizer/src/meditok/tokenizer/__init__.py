"""meditok.tokenizer: the MedITok medical image tokenizer (encoder, multi-codebook quantizer, decoder, semantic head).

from meditok.tokenizer import MedITok
tok = MedITok.from_pretrained("meditok_simple_v1.pth")
codes = tok.encode(x)            # [B,3,H,W] in [-1,1] -> int64 [B, 8, H/16 * W/16]
x_hat = tok.decode(codes)        # -> [B,3,H,W] in [-1,1]
codes = tok.tokenize("ct.dcm")   # a file / PIL / array through the image-input contract -> int64 [8, h, w]
"""

from .api import MedITok
from .checkpoint import CheckpointError, infer_config, read_checkpoint
from .config import CONFIGS, MedITokConfig, get_config
from .model import MedITokModel
from .preprocessing import ImageInput, preprocess

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "ImageInput",
    "MedITok",
    "MedITokConfig",
    "MedITokModel",
    "get_config",
    "infer_config",
    "preprocess",
    "read_checkpoint",
    "__version__",
]
