"""What an MAE sees and makes: original / masked / reconstructed / reconstruction with the visible
patches pasted back, one row per image, as one PNG (the original project shipped a notebook for this)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

COLUMNS = ("original", "masked", "recon", "recon+visible")


@torch.no_grad()
def reconstruction_grid(model, imgs: torch.Tensor, mask_ratio: float, seed: int = 0, scale: int = 2) -> Image.Image:
    """imgs: [B, 3, H, W] normalised as for training. The masking noise comes from `seed`, so the same
    call draws the same masks (and leaves the process's RNG alone)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    imgs = imgs.to(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.rand(imgs.shape[0], model.grid**2, generator=g).to(device)
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    recon = model.reconstruct(imgs, pred.float())
    p = model.patch
    pixel_mask = mask.reshape(-1, model.grid, model.grid).repeat_interleave(p, 1).repeat_interleave(p, 2)
    pixel_mask = pixel_mask.unsqueeze(1)  # [B, 1, H, W], 1 = removed
    masked = imgs * (1 - pixel_mask)
    pasted = imgs * (1 - pixel_mask) + recon * pixel_mask
    model.train(was_training)
    columns = [_to_uint8(t) for t in (imgs, masked, recon, pasted)]
    return _grid(columns, scale)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=x.device).view(1, 3, 1, 1)
    x = (x.float() * std + mean).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)  # [B, H, W, 3]


def _grid(columns: list[np.ndarray], scale: int) -> Image.Image:
    b, h, w, _ = columns[0].shape
    h, w = h * scale, w * scale
    pad, header = 4, 14
    canvas = Image.new("RGB", (len(columns) * (w + pad) + pad, header + b * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(COLUMNS[: len(columns)]):
        draw.text((pad + c * (w + pad), 2), name[: max(4, w // 6)], fill=(0, 0, 0))
    for r in range(b):
        for c, col in enumerate(columns):
            tile = Image.fromarray(col[r]).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (pad + c * (w + pad), header + pad + r * (h + pad)))
    return canvas
