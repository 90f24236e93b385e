"""The masked autoencoder of MAE pretraining (He et al.), on the same timm ViT the fine-tuning uses.

Parameter names are the official checkpoints': the encoder's (`patch_embed.*`, `cls_token`,
`pos_embed`, `blocks.N.*`, `norm.*`) at the top level, then `mask_token` and `decoder_*`. So a
pretraining run's checkpoint and an official MAE/FMAE one load into fine-tuning the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn

from fmae.models.encoders import create_encoder, encoder_spec


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings [(1 +) grid², dim], as MAE initialises them."""
    assert dim % 4 == 0, "sin-cos embeddings need a dimension divisible by 4"
    coords = np.stack(np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64)), 0)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one_axis(pos: np.ndarray) -> np.ndarray:  # [M] → [M, dim/2]
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_axis(coords[0]), one_axis(coords[1])], axis=1)  # [grid², dim]
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb


class MaskedAutoencoder(nn.Module):
    def __init__(self, model: str, img_size: int | None = None, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, norm_pix_loss: bool = True) -> None:
        super().__init__()
        spec = encoder_spec(model)
        enc = create_encoder(model, img_size=img_size, global_pool=False)
        # Adopt the encoder's modules at the top level: the official key layout.
        self.patch_embed, self.cls_token, self.pos_embed = enc.patch_embed, enc.cls_token, enc.pos_embed
        self.blocks, self.norm = enc.blocks, enc.norm
        self.patch = spec.patch
        self.grid = enc.patch_embed.grid_size[0]
        dim = spec.embed_dim
        self.pos_embed.requires_grad_(False)  # fixed sin-cos during pretraining, learnt when fine-tuning

        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, spec.mlp_ratio, qkv_bias=True, norm_layer=_norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = _norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * 3)
        self.norm_pix_loss = norm_pix_loss
        self.depth = spec.depth
        self._init_weights()

    def _init_weights(self) -> None:
        pos = sincos_pos_embed(self.pos_embed.shape[-1], self.grid)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        dpos = sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid)
        self.decoder_pos_embed.data.copy_(torch.from_numpy(dpos).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data  # initialised like a Linear layer, as MAE does
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if name == "patch_embed.proj":
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- patches ------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [B, 3, H, W] → [B, L, p²·3]"""
        p, h = self.patch, imgs.shape[2] // self.patch
        x = imgs.reshape(imgs.shape[0], 3, h, p, h, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], h * h, p * p * 3)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, p²·3] → [B, 3, H, W]"""
        p, h = self.patch, int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, h, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 3, h * p, h * p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep a random (1 − mask_ratio) of the tokens of each sample (shuffle by per-sample noise).
        x: [B, L, D] → kept [B, L_keep, D], mask [B, L] (1 = removed), ids_restore [B, L]"""
        b, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, length, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    # --- encoder / decoder --------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        x = self.patch_embed(imgs)  # [B, L, D]
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)  # only visible patches go on
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # [B, 1 + L_keep, D]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)  # [B, 1 + L_keep, Dd]
        b, length = ids_restore.shape
        masks = self.mask_token.expand(b, length + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:, :], masks], dim=1)  # visible then masked, shuffled order
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]  # [B, L, p²·3]

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches only; with norm_pix_loss each target patch is
        normalised by its own mean and variance (MAE's better-representations setting)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # [B, L]
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(imgs, pred, mask), pred, mask

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predicted patches back in image space (undoing norm_pix with the true patch statistics, as
        MAE's visualisation does) → [B, 3, H, W]."""
        if self.norm_pix_loss:
            target = self.patchify(imgs)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        return self.unpatchify(pred)


def _norm(dim: int, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)
