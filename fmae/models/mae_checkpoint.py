"""The MAE a pretraining checkpoint fits: its decoder's width and depth and the patch grid are read from
the weights, so a checkpoint reconstructs (`fmae visualize`) without the run that wrote it."""

from __future__ import annotations

import os
from typing import Any

from fmae.errors import FmaeError
from fmae.model_specs import encoder_spec
from fmae.models.checkpoint import extract_state_dict, read_checkpoint, strip_wrappers
from fmae.models.mae import MaskedAutoencoder
from fmae.run_spec import Model, section_of


def mae_for_checkpoint(path: str | os.PathLike, model: str | None, run_config: dict[str, Any] | None = None, *,
                       input_size: int | None = None, decoder_heads: int | None = None) -> MaskedAutoencoder:
    """A `model` MAE with `path`'s weights loaded. `run_config` (the run's run.toml, when the checkpoint
    is a run's) supplies what the weights do not say: the input size, the decoder's heads, norm_pix_loss;
    `input_size` / `decoder_heads` given here win over it."""
    cfg = run_config or {}
    state = {strip_wrappers(k): v for k, v in extract_state_dict(read_checkpoint(path), path).items()}
    if "decoder_embed.weight" not in state:
        raise FmaeError(f"{path}: holds no MAE decoder (decoder_embed.weight) — only a pretraining checkpoint "
                        "can reconstruct")
    if model is None:
        raise FmaeError(f"{path}: pass --model (e.g. vit_base): a checkpoint file does not name its encoder")
    dim = state["decoder_embed.weight"].shape[0]  # decoder_embed: [decoder_dim, embed_dim]
    depth = len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
    spec = encoder_spec(model)
    # Head count leaves no trace in the weights: the run's, else the model's default decoder's.
    heads = decoder_heads or int(cfg.get("decoder_heads") or (spec.decoder_heads if dim == spec.decoder_dim else 16))
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))  # pos_embed: [1, 1 + grid², embed_dim]
    size = input_size or int(cfg.get("input_size", grid * spec.patch))
    if dim % heads:
        raise FmaeError(f"decoder width {dim} is not a multiple of --decoder-heads {heads}")
    mae = MaskedAutoencoder(model, img_size=size, decoder_dim=dim, decoder_depth=depth, decoder_heads=heads,
                            norm_pix_loss=section_of(Model, cfg).norm_pix_loss)
    try:
        mae.load_state_dict(state)
    except RuntimeError as e:
        raise FmaeError(f"{path}: does not fit a {model} MAE at {size} px ({' '.join(str(e).split())[:160]}) — "
                        "check --model and --input-size") from None
    return mae
