"""`MedITok`: the user-facing tokenizer (a `MedITokModel` with loading, validation and the inference API)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    compare_keys,
    infer_config,
    read_checkpoint,
    write_atomic,
)
from .config import CONFIGS, MedITokConfig, get_config
from .model import MedITokModel
from .preprocessing import ImageInput, preprocess

FORMAT_VERSION = 1


class MedITok(MedITokModel):
    """MedITok tokenizer.

    >>> tok = MedITok.from_pretrained("meditok_simple_v1.pth")      # or a save_pretrained directory
    >>> codes = tok.encode(x)          # x: [B,3,H,W] in [-1,1], H, W multiples of 16 -> int64 [B, 8, H/16 * W/16]
    >>> x_hat = tok.decode(codes)      # -> [B,3,H,W] in [-1,1]; decode(codes, grid=(h, w)) for non-square grids
    >>> codes = tok.tokenize("ct.dcm")  # any file / PIL / array / tensor in [0,1] -> int64 [8, h, w]

    `image_input` (an `ImageInput`) is how files and pixels become `encode`'s input; it comes from the release's
    config.json (the reference's LANCZOS squash to 256 for published `.pth` weights) and is saved with the model.
    """

    image_input: ImageInput = ImageInput()

    # ------------------------------------------------------------------------------------------------ creation

    @classmethod
    def from_config(cls, config: str | MedITokConfig = "meditok-l", seed: int | None = 0) -> MedITok:
        """A randomly initialised tokenizer (for training from scratch and for tests)."""
        return cls(get_config(config)).init_weights(seed).eval()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        config: str | MedITokConfig | None = None,
        *,
        filename: str | None = None,
        revision: str | None = None,
        quantize: str | None = None,
        decoder_dtype: torch.dtype | None = None,
    ) -> MedITok:
        """Load published weights (`.pth` state dict or training checkpoint), a `.safetensors` file or a directory,
        from a local path or a Hugging Face Hub name (`"massaki75/meditok"`, `"org/name"`; `filename=` picks a file
        of the repository, `revision=` a branch, tag or commit; needs the `[hub]` extra, see `meditok.tokenizer.hub`).

        The architecture comes from the directory's config.json, else from `config`, else from the tensor shapes.
        The model is built on the meta device and takes the loaded tensors as they are, so loading holds one copy.
        ``dtype=`` / ``decoder_dtype=`` / ``quantize="int8"``: reduced precision, measured against fp32 in
        `to_inference`.
        """
        from .hub import resolve_weights

        path = resolve_weights(path, filename=filename, revision=revision)
        state_dict, stored_config = read_checkpoint(path)
        model = cls.from_state_dict(state_dict, config if config is not None else stored_config, device, dtype, path)
        model.image_input = read_image_input(path)
        if decoder_dtype is not None:
            model.to_inference(device, dtype, decoder_dtype=decoder_dtype)
        return model.quantize(quantize) if quantize is not None else model

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        config: str | MedITokConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str | os.PathLike = "<state dict>",
    ) -> MedITok:
        """Build from a core state dict in memory (strict: every key and shape must match)."""
        if config is not None:
            with torch.device("meta"):
                model = cls(get_config(config))
        else:
            model = cls._closest_architecture(state_dict, source)
        compare_keys({k: v.shape for k, v in model.state_dict().items()}, state_dict, source)
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model.to_inference(device, dtype)

    @classmethod
    def _closest_architecture(cls, state_dict: dict[str, torch.Tensor], source: str | os.PathLike) -> MedITok:
        """A bare state dict's architecture (on the meta device): the one inferred from its shapes, or, when that does
        not fit every tensor (one mis-shaped tensor among those the inference reads skews it), the preset config
        fitting the most tensors, so that the error names the mis-shaped tensors only, not the good ones."""
        candidates, error = [], None
        try:
            candidates.append(infer_config(state_dict, source))
        except (CheckpointError, ValueError) as exc:  # a missing / mis-shaped key, or sizes no config can have
            error = exc
        candidates += [c for c in CONFIGS.values() if c not in candidates]
        best, best_bad = None, None
        for cfg in candidates:
            with torch.device("meta"):
                model = cls(cfg)
            expected = model.state_dict()
            bad = sum(k not in state_dict or state_dict[k].shape != v.shape for k, v in expected.items())
            bad += sum(k not in expected for k in state_dict)
            if bad == 0:
                return model
            if best_bad is None or bad < best_bad:
                best, best_bad = model, bad
        if error is not None and best_bad * 2 > len(best.state_dict()):  # no preset is close either
            raise CheckpointError(str(error)) from None
        return best

    def to_inference(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        decoder_dtype: torch.dtype | None = None,
    ) -> MedITok:
        """Move to `device`; store the encoder, decoder and semantic head in `dtype` (the decoder in
        `decoder_dtype` when given). The projections and the quantizer stay in fp32, as in the reference's
        mixed-precision training.

        Measured against fp32 on a CPU with AMX-BF16 (BENCHMARKS.md, "meditok-tokenizer reduced precision":
        meditok-l, 256x256, seeded full-size weights, real sample images, one thread on a shared machine):
        ``dtype=torch.bfloat16`` encodes 2.2-3.8x and decodes 2.1-3.6x faster (AMX), 93.7-94.6 % of codes identical
        to fp32's, its decode of fp32's codes 44-45 dB PSNR from fp32's. ``decoder_dtype=torch.bfloat16`` (fp32
        encoder) keeps every code identical and decodes 3.5-4.0x faster at the same 44-45 dB: encode + decode
        2.0-2.1x faster. ``quantize="int8"`` encodes 1.6-2.5x / decodes 1.25-1.6x faster with 81-83 % identical codes
        (decode 33-34 dB). ``dtype=torch.float16`` keeps 99.3 % of codes but is no faster than fp32 on a CPU without
        AMX-FP16 (equal CPU seconds, measured on AVX512-FP16). Only the bf16 decoder meets "1.5x faster with >= 99 %
        identical codes" (for decoding and round trips; encoding alone has no such path here); seeded weights
        are not the published ones, so measure yours (`benchmarks/tokenizer_precision.py --model ...`) before
        encoding in bf16 or int8. Without AMX / AVX512-BF16 a CPU emulates bf16 and it is slower than fp32.
        """
        for name, value in (("dtype", dtype), ("decoder_dtype", decoder_dtype if decoder_dtype else dtype)):
            if value not in (torch.float32, torch.bfloat16, torch.float16):
                raise ValueError(f"{name} must be float32, bfloat16 or float16, got {value}")
        self.to(device=device, dtype=torch.float32)
        for part in (self.encoder, self.decoder, self.fc_norm, self.projection):
            part.to(dtype)
        if decoder_dtype is not None:
            self.decoder.to(decoder_dtype)
        return self.eval()

    def quantize(self, scheme: str = "int8") -> MedITok:
        """Dynamic int8 quantisation (``scheme="int8"``, CPU only) of the Linear layers of the encoder's and decoder's
        transformer blocks (most of the FLOPs): weights int8 per tensor, activations quantised per batch on the fly
        (torch.ao `quantize_dynamic`, fbgemm/x86 kernels). The conv stem and upsampler, the width-changing projections
        around the quantizer and the quantizer itself stay fp32. In place; a quantized model cannot be saved.
        Measured (meditok-l, seeded weights, one thread): encode 1.6-2.5x, decode 1.25-1.6x faster than fp32,
        81-83 % of codes identical, decode of the same codes 33-34 dB from fp32's; see `to_inference`, BENCHMARKS.md.
        """
        if scheme != "int8":
            raise ValueError(f"quantize must be 'int8', got {scheme!r}")
        if self.device.type != "cpu" or self.trunk_dtype != torch.float32:
            raise ValueError(
                f"quantize='int8' runs on the CPU from fp32 weights (got device {self.device}, dtype {self.trunk_dtype})"
            )
        import warnings

        with warnings.catch_warnings():
            # torch.ao's eager quantisation is deprecated in favour of torchao but still shipped (torch 2.13) and tested
            warnings.simplefilter("ignore")
            for part in (self.encoder, self.decoder):
                if part.norm.weight.dtype == torch.float32:  # a bf16 decoder (decoder_dtype=) is left as it is
                    torch.ao.quantization.quantize_dynamic(
                        part.blocks, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
                    )
        self.quantized = scheme
        return self

    quantized: str | None = None

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` (fp32, atomically: a crash never leaves a torn file), and a
        model card `README.md` unless the folder already has one (a card the user edited is kept)."""
        from safetensors.torch import save_file

        from .hub import MODEL_CARD_NAME, model_card

        if self.quantized:
            raise ValueError("a quantized tokenizer cannot be saved; save the fp32 model and quantize after loading")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        config = {
            "model_type": "meditok",
            "format_version": FORMAT_VERSION,
            "model": self.config.to_dict(),
            "image_input": self.image_input.to_dict(),
        }
        write_atomic(directory, WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        write_atomic(directory, CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
        if not (directory / MODEL_CARD_NAME).exists():
            write_atomic(directory, MODEL_CARD_NAME, lambda p: Path(p).write_text(model_card(config)))
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Upload this tokenizer as a release folder (config.json + model.safetensors + a model card naming
        `repo_id`) in one commit; `MedITok.from_pretrained(repo_id)` loads it back. Returns the commit URL."""
        import tempfile

        from .hub import MODEL_CARD_NAME, model_card, push_folder

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(tmp)
            card = json.loads((folder / CONFIG_NAME).read_text())
            (folder / MODEL_CARD_NAME).write_text(model_card(card, repo_id))  # the card names where it lives
            return push_folder(
                folder, repo_id, revision=revision, private=private, token=token, commit_message=commit_message
            )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------------------------------- images in

    def prepare(self, image: object, **overrides: object) -> torch.Tensor:
        """A file path (or its bytes), PIL image, array or tensor in [0,1] -> float32 [1,3,H,W] in [-1,1].

        The image-input contract (`meditok.tokenizer.preprocessing`) with this model's `image_input`; keyword
        overrides (``size=``, ``resize=``, ``resampler=``, ``ct_window=``, ``percentiles=``) replace single settings.
        """
        from .image_files import load_image

        spec = self.image_input.with_overrides(**overrides)
        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            image = load_image(image, spec)
        return preprocess(image, spec)

    def tokenize(self, image: object, **overrides: object) -> torch.Tensor:
        """`prepare` then `encode`: one image -> its codes, int64 [8, h, w] (h, w = prepared height, width / 16)."""
        x = self.prepare(image, **overrides)
        return self.encode(x)[0].reshape(self.config.num_codebooks, x.shape[-2] // 16, x.shape[-1] // 16)

    # ----------------------------------------------------------------------------------------------- volumes

    def encode_volume(self, source: str | os.PathLike, **options: object):
        """A NIfTI volume, DICOM series folder, multi-frame DICOM or .inv3 -> `meditok.data.volumes.VolumeCodes`:
        every slice along ``plane=`` ("axial" default, "coronal", "sagittal") through the image-input contract,
        ``batch_size=`` at a time, codes int64 [D, 8, h*w] with the geometry to undo it; a bad slice is skipped
        (``on_skip=``, ``strict=``). Needs meditok-data. See `meditok.tokenizer.volumes.encode_volume`."""
        from .volumes import encode_volume

        return encode_volume(self, source, **options)  # type: ignore[arg-type]

    def decode_volume(self, volume_codes: object, **options: object):
        """`VolumeCodes` -> `ReconstructedVolume` in HU / file units, in the file's voxel order with its affine
        (``.save("recon.nii.gz")``). See `meditok.tokenizer.volumes.decode_volume`."""
        from .volumes import decode_volume

        return decode_volume(self, volume_codes, **options)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------------------------- inference

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def trunk_dtype(self) -> torch.dtype:
        return self.encoder.norm.weight.dtype

    def _prepare_images(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor [B,3,H,W] in [-1,1], got {type(x).__name__}")
        if x.ndim == 3:
            raise ValueError(
                f"expected a batch [B,3,H,W], got shape {tuple(x.shape)}; use x.unsqueeze(0) for one image"
            )
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape [B,3,H,W], got {tuple(x.shape)} (3 channels are required)")
        height, width = x.shape[-2:]
        if height % 16 or width % 16 or height == 0 or width == 0:
            raise ValueError(
                f"image height and width must be positive multiples of 16, got {height}x{width}; "
                f"resize or pad first (meditok.tokenizer.preprocess does this)"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point tensor in [-1,1], got dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("input images contain NaN or infinite values")
        return x.to(self.device, self.trunk_dtype)

    def _prepare_codes(self, codes: torch.Tensor, grid: tuple[int, int] | None) -> tuple[torch.Tensor, tuple[int, int]]:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of codes, got {type(codes).__name__}")
        k = self.config.num_codebooks
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.ndim == 4 and codes.shape[1] == k:
            if grid is not None and tuple(grid) != tuple(codes.shape[2:]):
                raise ValueError(f"grid {tuple(grid)} disagrees with the codes' shape {tuple(codes.shape)}")
            grid = (codes.shape[2], codes.shape[3])
            codes = codes.flatten(2)
        elif codes.ndim != 3 or codes.shape[1] != k:
            raise ValueError(f"codes must have shape [B,{k},L] or [B,{k},h,w], got {tuple(codes.shape)}")
        length = codes.shape[2]
        if grid is None:
            side = int(round(length**0.5))
            if side * side != length:
                raise ValueError(f"{length} positions do not form a square grid; pass grid=(h, w) with h*w == {length}")
            grid = (side, side)
        if len(grid) != 2 or grid[0] * grid[1] != length or min(grid) < 1:
            raise ValueError(f"grid {tuple(grid)} does not hold {length} positions")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size - 1}], found values in [{low}, {high}]")
        return codes.to(self.device, torch.long), (int(grid[0]), int(grid[1]))

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] -> codes int64 [B, 8, (H/16)*(W/16)], raster order, one sub-code per codebook."""
        return self.codes(self._prepare_images(x))

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes [B,8,L] (or [B,8,h,w]) -> images float32 [B,3,16h,16w] in [-1,1]."""
        codes, grid = self._prepare_codes(codes, grid)
        return self.images(codes, grid)

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare_images(x)
        return self.images(self.codes(x), (x.shape[-2] // 16, x.shape[-1] // 16))

    @torch.inference_mode()
    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """The l2-normalised text-aligned embedding [B, embed_dim] (the reference's encode_image(normalize=True))."""
        return torch.nn.functional.normalize(self.semantic_embedding(self._prepare_images(x)).float(), dim=-1)

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the encoder's tokens before quantization [B, width] (the reference's forward_features)."""
        return self.encoder_features(self._prepare_images(x)).float()

    @torch.inference_mode()
    def quantized_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized latent [B, L, 64], unit norm per 8-d chunk (the reference's encode_image_vq)."""
        return self._quantized_latents(self._prepare_images(x))


def read_image_input(path: str | os.PathLike) -> ImageInput:
    """The image-input settings a release folder records (config.json "image_input"); the reference's otherwise."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        return ImageInput()
    try:
        recorded = json.loads(config_file.read_text()).get("image_input")
        return ImageInput.from_dict(recorded, where=f"{config_file}: image_input")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{config_file}: not a MedITok config ({exc})") from None
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


__all__ = ["MedITok", "CheckpointError", "ImageInput", "read_image_input"]
