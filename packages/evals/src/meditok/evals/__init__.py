"""meditok.evals: MedITok's evaluation suite.

`meditok-eval {recon,probe,zeroshot,vqa,gen,codebook,bench}` each write ``report.md``, ``metrics.json`` and PNGs
into an output folder. The maths lives in `meditok.evals.metrics` (PSNR/SSIM/AUC/mAP via torchmetrics, Fréchet
distance, precision/recall, codebook statistics) and `meditok.evals.vqa` (VQA scorers).
"""

from meditok.evals.adapters import DownsampleBaseline, FeatureAdapter, MedITokAdapter, TokenizerAdapter
from meditok.evals.errors import EvalError

__version__ = "0.1.0"

__all__ = ["DownsampleBaseline", "EvalError", "FeatureAdapter", "MedITokAdapter", "TokenizerAdapter", "__version__"]
