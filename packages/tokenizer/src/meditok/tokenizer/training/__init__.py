"""Two-stage MedITok training (needs the `train` extra: deepspeed, plus meditok-data from this checkout)."""

from ..auxiliary import AuxModelError, save_aux
from .config import TrainConfig, load_config
from .trainer import Trainer, export_checkpoint, lr_factor, main, param_groups

__all__ = [
    "AuxModelError",
    "TrainConfig",
    "Trainer",
    "export_checkpoint",
    "load_config",
    "lr_factor",
    "main",
    "param_groups",
    "save_aux",
]
