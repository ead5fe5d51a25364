"""`quantize="int8"` (MedITok.quantize, from_pretrained, meditok --quantize): dynamic int8 Linear in the blocks only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meditok.tokenizer import MedITok
from meditok.tokenizer.cli import main


def test_int8_quantizes_the_block_linears_and_keeps_most_codes(tiny_weights, images, tmp_path):
    fp32 = MedITok.from_pretrained(tiny_weights["directory"])
    int8 = MedITok.from_pretrained(tiny_weights["directory"], quantize="int8")
    blocks = [m for part in (int8.encoder.blocks, int8.decoder.blocks) for m in part.modules()]
    plain = [m for part in (fp32.encoder.blocks, fp32.decoder.blocks) for m in part.modules()]
    quantized = [m for m in blocks if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == sum(isinstance(m, torch.nn.Linear) for m in plain) > 0
    assert not any(type(m) is torch.nn.Linear for m in blocks)
    assert type(int8.quant_proj.proj) is torch.nn.Linear  # around the quantizer: fp32
    codes, codes8 = fp32.encode(images), int8.encode(images)
    assert (codes == codes8).float().mean() > 0.9
    with pytest.raises(ValueError, match="cannot be saved"):
        int8.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="runs on the CPU from fp32 weights"):
        MedITok.from_pretrained(tiny_weights["directory"], dtype=torch.bfloat16, quantize="int8")
    with pytest.raises(ValueError, match="must be 'int8'"):
        fp32.quantize("int4")
    # the command line's --quantize is the same model
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(png)
    out = tmp_path / "c.npz"
    assert main(["encode", str(png), "--weights", str(tiny_weights["directory"]), "--size", "64", "--quantize", "int8",
                 "-o", str(out)]) == 0  # fmt: skip
    expected = int8.encode(int8.prepare(str(png), size=64)).reshape(8, 4, 4).numpy()
    assert np.array_equal(np.load(out)["codes_0"], expected)


def test_a_bf16_decoder_keeps_the_codes_and_decodes_close_to_fp32(tiny_weights, images):
    from meditok.tokenizer.preprocessing import psnr

    fp32 = MedITok.from_pretrained(tiny_weights["directory"])
    mixed = MedITok.from_pretrained(tiny_weights["directory"], decoder_dtype=torch.bfloat16)
    assert mixed.encoder.norm.weight.dtype == torch.float32 and mixed.decoder.norm.weight.dtype == torch.bfloat16
    codes = fp32.encode(images)
    assert torch.equal(mixed.encode(images), codes)  # the encoder is untouched: codes are fp32's, bit for bit
    decoded = mixed.decode(codes)
    assert decoded.dtype == torch.float32 and psnr(decoded, fp32.decode(codes)) > 30
    with pytest.raises(ValueError, match="decoder_dtype must be"):
        MedITok.from_pretrained(tiny_weights["directory"], decoder_dtype=torch.int8)
