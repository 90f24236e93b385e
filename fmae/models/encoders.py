"""Build the ViT encoders fmae fine-tunes, by name, as timm `VisionTransformer`s.

The sizes live in the torch-free table `fmae.model_specs.ENCODERS` (re-exported here) so that the
queue and the app can list models without importing torch. Parameter names are timm's
(`patch_embed.proj.weight`, `cls_token`, `pos_embed`, `blocks.N.*`, `norm.*`, `fc_norm.*`), which are
also the official MAE checkpoints' names, so those load without renaming.
"""

from __future__ import annotations

from functools import partial

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fmae.errors import FmaeError
from fmae.model_specs import ENCODERS, EncoderSpec, encoder_spec

__all__ = ["ENCODERS", "EncoderSpec", "create_encoder", "describe_encoder", "encoder_spec", "num_layers",
           "set_fused_attn"]


def create_encoder(name: str, img_size: int | None = None, drop_path: float = 0.0,
                   global_pool: bool = True) -> VisionTransformer:
    """A headless ViT (`num_classes=0`) whose forward returns pooled features [B, embed_dim].

    global_pool=True (MAE fine-tuning): mean of the patch tokens (cls excluded), then `fc_norm`;
    the final `norm` is Identity. global_pool=False (MAE pretraining encoders): the cls token after
    `norm`; `fc_norm` is Identity. Attention uses F.scaled_dot_product_attention (timm's default,
    unless the environment sets TIMM_FUSED_ATTN=0).
    """
    spec = encoder_spec(name)
    size = spec.input_size if img_size is None else _check_img_size(spec, img_size)
    return VisionTransformer(
        img_size=size, patch_size=spec.patch, num_classes=0,
        global_pool="avg" if global_pool else "token", fc_norm=None,  # None: fc_norm iff avg pooling
        embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.heads, mlp_ratio=spec.mlp_ratio,
        qkv_bias=True, class_token=True, drop_path_rate=float(drop_path),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # as MAE's models_vit
    )


def _check_img_size(spec: EncoderSpec, img_size: int) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
        raise FmaeError(f"input_size must be a positive whole number of pixels, not {img_size!r}")
    if img_size % spec.patch:
        below = img_size // spec.patch * spec.patch
        options = " or ".join(str(s) for s in (below, below + spec.patch) if s > 0)
        raise FmaeError(f"input_size {img_size} is not a multiple of {spec.name}'s patch size {spec.patch}: "
                        f"use {options}")
    return img_size


def set_fused_attn(model: nn.Module, enabled: bool) -> int:
    """Switch every timm attention layer of `model` between F.scaled_dot_product_attention (fused: flash /
    memory-efficient kernels on GPUs; the engine's default, config `fused_attn = true`) and the explicit
    softmax(q·kᵀ/√d)·v that the original's timm 0.3.2 computed. The same function; returns how many
    layers were switched. Set it before `torch.compile`."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = bool(enabled)
            switched += 1
    return switched


def num_layers(encoder: VisionTransformer) -> int:
    """The number of transformer blocks: layer-wise lr decay gives block i the layer id i + 1."""
    return len(encoder.blocks)


def describe_encoder(encoder: VisionTransformer) -> str:
    """The table name of an encoder's architecture, or its sizes when it matches no row."""
    patch = encoder.patch_embed.patch_size[0]
    for spec in ENCODERS.values():
        if (spec.patch, spec.embed_dim, spec.depth) == (patch, encoder.embed_dim, len(encoder.blocks)):
            return spec.name
    return f"ViT (patch {patch}, embed {encoder.embed_dim}, depth {len(encoder.blocks)})"
