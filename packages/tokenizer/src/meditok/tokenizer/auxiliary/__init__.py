"""The frozen pretrained parts training and evaluation load: vision teacher, text tower, LPIPS
network and the discriminator backbone. Everything comes from a user-given local path; nothing touches a hub.

A missing or mismatched file raises `AuxModelError` naming the file and the config key, at start-up.

Formats
* ``meditok``: a directory written by `save_aux` (config.json + model.safetensors), built by the same code.
* ``open_clip`` (vision teacher): BiomedCLIP's ``open_clip_pytorch_model.bin``; the timm trunk
  (``visual.trunk.*``, ViT-B/16-224) loads into `nets.ViT`.
* ``timm`` (vision teacher): ``timm.create_model(teacher.name, pretrained=False, num_classes=0,
  **teacher.model_kwargs)`` + a local state dict (``.safetensors`` / ``.pth`` / ``.bin``, or a directory holding
  ``model.safetensors`` / ``pytorch_model.bin``), read with ``weights_only``; classifier-head tensors are dropped. The
  embedding is timm's pooled pre-logits feature (``model(x)`` with ``num_classes=0``: the CLS token for ViTs, global
  average pooling for CNNs, as the model's ``global_pool`` says). Size, mean and std from timm's data config for the
  model unless the teacher config sets them. Needs ``timm`` (not in the ``train`` extra: it imports torchvision).
* ``transformers`` (vision teacher): a local Hugging Face folder (``config.json`` + weights), loaded with
  ``AutoModel.from_pretrained(path, local_files_only=True)`` (or the ``*WithProjection`` class named in
  config.json's ``architectures``, which AutoModel would load without its projection). See `load_vision_teacher`
  for the embedding each ``teacher.pooling`` takes. Size from the model config, mean/std from the folder's
  ``preprocessor_config.json``, unless the teacher config sets them.
* ``dinov2`` (discriminator): ``dinov2_vits14_pretrain.pth`` (ViT-S/14 with LayerScale).
* ``hf_bert`` (text tower): a local Hugging Face BERT folder (``config.json`` + tokenizer files, e.g.
  BiomedNLP-BiomedBERT-base-uncased-abstract) plus BiomedCLIP's ``open_clip_pytorch_model.bin``, whose
  ``text.transformer.*`` (the PubMedBERT weights) and ``text.proj.*`` (the MLP projection to 512-d) load over it.
  Needs ``transformers`` (the ``train`` extra).
* LPIPS: a ``.pth``/``.safetensors`` state dict in the lpips layout (UniTok's ``lpips_with_vgg.pth``) or a
  ``meditok`` directory.

Importable without DeepSpeed or meditok-data (meditok-evals uses the LPIPS, text-tower and text-alignment loaders).
Modules by network kind: `vit`, `teachers` (vision teachers), `text_towers`, `lpips`, `text_alignment`; `common` holds
the `meditok` directory format and strict loading. Stand-ins for tests: `meditok.tokenizer.training.testing`.
"""

from .common import AuxModelError, save_aux
from .lpips import VGG16LPIPS, load_lpips
from .teachers import VisionTeacher, load_vision_teacher
from .text_alignment import TextAlignment, TextAlignmentError, find_text_alignment, load_text_alignment
from .text_towers import OPEN_CLIP_FILE, TextConfig, TextTower, load_hf_text_tower, load_text_tower
from .vit import ViT, ViTConfig

__all__ = [
    "OPEN_CLIP_FILE",
    "AuxModelError",
    "TextAlignment",
    "TextAlignmentError",
    "TextConfig",
    "TextTower",
    "VGG16LPIPS",
    "ViT",
    "ViTConfig",
    "VisionTeacher",
    "find_text_alignment",
    "load_hf_text_tower",
    "load_lpips",
    "load_text_alignment",
    "load_text_tower",
    "load_vision_teacher",
    "save_aux",
]
