"""Heads on top of an encoder: AU / FER fine-tuning (with the optional identity-adversarial head)
and the frozen-encoder identity probe.

Parameter names stay `encoder.cls_token`, `encoder.pos_embed`, `encoder.patch_embed.*`,
`encoder.blocks.i.*`, then `encoder.fc_norm.*`, `head.*`, `id_head.*`: layer-wise lr decay reads them.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


class GradientReversal(torch.autograd.Function):
    """Identity on the way forward; multiplies the gradient by −λ on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * -ctx.lambd, None


def grad_reverse(x: Tensor, lambd: float) -> Tensor:
    return GradientReversal.apply(x, lambd)


def pooled_features(encoder: VisionTransformer, x: Tensor) -> Tensor:
    """x: [B, 3, H, W] -> [B, D]: the encoder's pooled (and fc_norm-ed) features, before any head."""
    tokens = encoder.forward_features(x)                    # [B, 1 + N, D]
    return encoder.forward_head(tokens, pre_logits=True)    # [B, D]


class FineTuneModel(nn.Module):
    """Encoder + linear head, for AU detection (multi-label logits) and FER (class logits).

    With lambda_id > 0 an identity head sees the same pooled features through gradient reversal,
    so training it pushes the encoder *away* from identity (the paper's IAT).
    """

    pretrained_heads = True  # load_pretrained keeps checkpoint heads whose shapes fit

    def __init__(self, encoder: VisionTransformer, num_outputs: int, num_subjects: int = 0,
                 lambda_id: float = 0.0) -> None:
        super().__init__()
        if lambda_id < 0:
            raise ValueError(f"lambda_id must be >= 0, got {lambda_id}")
        if lambda_id > 0 and num_subjects <= 0:
            raise ValueError("an identity head (lambda_id > 0) needs num_subjects > 0")
        self.encoder = encoder
        self.lambda_id = float(lambda_id)
        dim = encoder.embed_dim
        self.head = nn.Linear(dim, num_outputs)
        self.id_head = nn.Linear(dim, num_subjects) if lambda_id > 0 else None
        for head in (self.head, self.id_head):
            if head is not None:
                trunc_normal_(head.weight, std=2e-5)  # as MAE fine-tuning, after loading the encoder
                nn.init.zeros_(head.bias)

    def redraw_head(self) -> str:
        """What the original does after loading a checkpoint (head_init = "redraw"): `head.weight` drawn
        again, trunc_normal std 2e-5, even when the checkpoint's head fitted. Its bias and the identity
        head keep what was loaded, as there. Returns what it did, for the load's log line."""
        trunc_normal_(self.head.weight, std=2e-5)
        return "head.weight re-drawn (trunc_normal, std 2e-5; head_init = redraw)"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        # x: [B, 3, H, W]
        feats = pooled_features(self.encoder, x)       # [B, D]
        logits = self.head(feats)                      # [B, K]
        if self.id_head is None:
            return logits, None
        id_logits = self.id_head(grad_reverse(feats, self.lambda_id))  # [B, S]
        return logits, id_logits


class IdentityProbe(nn.Module):
    """A bias-free linear layer over the features of a frozen encoder (kept in eval mode)."""

    pretrained_heads = False  # the probe always starts fresh, even if a checkpoint head fits

    def __init__(self, encoder: VisionTransformer, num_subjects: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.head = nn.Linear(encoder.embed_dim, num_subjects, bias=False)
        trunc_normal_(self.head.weight, std=0.01)  # as MAE's linear probe
        self.encoder.eval()

    def train(self, mode: bool = True) -> IdentityProbe:
        super().train(mode)
        self.encoder.eval()  # no dropout / drop-path in the frozen encoder, ever
        return self

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, 3, H, W]
        with torch.no_grad():
            feats = pooled_features(self.encoder, x)   # [B, D]
        return self.head(feats)                        # [B, S]
