"""Models: ViT encoders by name, the fine-tuning / probing heads, and checkpoint loading.

Importing this package imports torch and timm; torch-free code (the app, the queue, config
resolution) reads the encoder table from `fmae.model_specs` instead.
"""

from fmae.models.checkpoint import (LoadReport, extract_state_dict, filter_state_dict, load_pretrained,
                                    read_checkpoint, save_checkpoint)
from fmae.models.encoders import ENCODERS, EncoderSpec, create_encoder, encoder_spec, num_layers
from fmae.models.heads import FineTuneModel, GradientReversal, IdentityProbe, grad_reverse

__all__ = [
    "ENCODERS", "EncoderSpec", "FineTuneModel", "GradientReversal", "IdentityProbe", "LoadReport",
    "create_encoder", "encoder_spec", "extract_state_dict", "filter_state_dict", "grad_reverse",
    "load_pretrained", "num_layers", "read_checkpoint", "save_checkpoint",
]
