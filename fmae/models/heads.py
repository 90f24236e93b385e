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


ID_HEAD_DEPTHS = (1, 2, 3)  # linear (the paper's), 2- or 3-layer MLP (its ablation of the identity head)


def identity_head(dim: int, num_subjects: int, depth: int = 1) -> nn.Module:
    """IAT's identity head: a linear layer (depth 1; keys `id_head.weight/bias`, as the original's), or
    `depth` linear layers with GELU between, hidden width = the encoder's (keys `id_head.0.*`, …)."""
    if depth not in ID_HEAD_DEPTHS:
        raise ValueError(f"id_head_depth must be one of {ID_HEAD_DEPTHS}, got {depth}")
    if depth == 1:
        return nn.Linear(dim, num_subjects)
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(dim, dim), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(dim, num_subjects))


class FineTuneModel(nn.Module):
    """Encoder + linear head, for AU detection (multi-label logits) and FER (class logits).

    With lambda_id > 0 an identity head sees the same pooled features through gradient reversal,
    so training it pushes the encoder *away* from identity (the paper's IAT).
    """

    pretrained_heads = True  # load_pretrained keeps checkpoint heads whose shapes fit

    def __init__(self, encoder: VisionTransformer, num_outputs: int, num_subjects: int = 0,
                 lambda_id: float = 0.0, id_head_depth: int = 1) -> None:
        super().__init__()
        if lambda_id < 0:
            raise ValueError(f"lambda_id must be >= 0, got {lambda_id}")
        if lambda_id > 0 and num_subjects <= 0:
            raise ValueError("an identity head (lambda_id > 0) needs num_subjects > 0")
        self.encoder = encoder
        self.lambda_id = float(lambda_id)
        dim = encoder.embed_dim
        self.head = nn.Linear(dim, num_outputs)
        self.id_head = identity_head(dim, num_subjects, id_head_depth) if lambda_id > 0 else None
        layers = [self.head] + ([] if self.id_head is None else
                                [m for m in self.id_head.modules() if isinstance(m, nn.Linear)])
        outputs = {id(self.head)} | ({id(self._last(self.id_head))} if self.id_head is not None else set())
        for layer in layers:
            # an output layer as MAE fine-tuning draws it (after loading the encoder); an MLP's hidden
            # layers as timm's ViT draws its linear layers
            trunc_normal_(layer.weight, std=2e-5 if id(layer) in outputs else 0.02)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def _last(head: nn.Module) -> nn.Module:
        return head[-1] if isinstance(head, nn.Sequential) else head

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
