"""The encoder table, torch-free: names, sizes and native input sizes of the models fmae builds.

`fmae.models.encoders` builds them; the queue, the app and config resolution only need the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from fmae.errors import FmaeError


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    patch: int
    embed_dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    input_size: int = 224  # the size it trains at unless a recipe or the user says otherwise
    # MAE pretraining's decoder unless the user says otherwise: the paper's 8 blocks × 512 for the
    # paper's ViTs; a small encoder gets one in the paper's proportions (ViT-B: 2/3 of the encoder's
    # width and depth, 32-wide heads). A 512-wide decoder behind the 96-wide vit_tiny made pretraining
    # ~30× slower than fine-tuning it (bench/pretrain_speed.py).
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16


ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    # For CPU demos and tests: small patches on small images, trains in seconds.
    EncoderSpec("vit_tiny", patch=8, embed_dim=96, depth=4, heads=3, input_size=64,
                decoder_dim=64, decoder_depth=3, decoder_heads=2),
    EncoderSpec("vit_small", patch=16, embed_dim=384, depth=12, heads=6),
    EncoderSpec("vit_base", patch=16, embed_dim=768, depth=12, heads=12),
    EncoderSpec("vit_large", patch=16, embed_dim=1024, depth=24, heads=16),
)}


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise FmaeError(f"unknown model '{name}': choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def check_model(name: str) -> str:
    return encoder_spec(name).name
