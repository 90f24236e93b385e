"""Checkpoints written exactly as the original FMAE / FMAE-IAT code writes them (a test helper).

The original's `misc.save_model` saves `{"model": model.state_dict(), "optimizer": optimizer.state_dict(),
"epoch": epoch, "scaler": loss_scaler.state_dict(), "args": args}` with `args` its `argparse.Namespace`,
and the state dict is the whole model's, with timm's encoder names at the top level. The key names and
shapes are spelled out here (not taken from fmae's or timm's models) so that a drift on fmae's side shows.
Layouts:

- "pretrain": MAE pretraining (`models_mae`): encoder with its final `norm`, `mask_token`, `decoder_*`;
- "fmae": FMAE fine-tuned (`models_vit`, global pool): encoder, `fc_norm`, `head` over the AUs;
- "fmae_iat": FMAE-IAT fine-tuned: as "fmae" plus the identity head `ID_head` over all subjects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# vit_tiny in fmae's table: patch 8, 96-d, 4 blocks of 3 heads, MLP 4x.
TINY = dict(patch=8, dim=96, depth=4, mlp=384)
SMALL = dict(patch=16, dim=384, depth=12, mlp=1536)
BP4D_AUS, BP4D_SUBJECTS = 12, 41


def _block(prefix: str, dim: int, mlp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
            f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.qkv.bias": (3 * dim,),
            f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
            f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
            f"{prefix}.mlp.fc1.weight": (mlp, dim), f"{prefix}.mlp.fc1.bias": (mlp,),
            f"{prefix}.mlp.fc2.weight": (dim, mlp), f"{prefix}.mlp.fc2.bias": (dim,)}


def original_shapes(layout: str, img_size: int = 64, patch: int = 8, dim: int = 96, depth: int = 4,
                    mlp: int = 384, aus: int = BP4D_AUS, subjects: int = BP4D_SUBJECTS) -> dict[str, tuple[int, ...]]:
    tokens = 1 + (img_size // patch) ** 2
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        shapes.update(_block(f"blocks.{i}", dim, mlp))
    if layout == "pretrain":
        dec = 64
        shapes.update({"norm.weight": (dim,), "norm.bias": (dim,), "mask_token": (1, 1, dec),
                       "decoder_embed.weight": (dec, dim), "decoder_embed.bias": (dec,),
                       "decoder_pos_embed": (1, tokens, dec)})
        shapes.update(_block("decoder_blocks.0", dec, 4 * dec))
        shapes.update({"decoder_norm.weight": (dec,), "decoder_norm.bias": (dec,),
                       "decoder_pred.weight": (patch * patch * 3, dec), "decoder_pred.bias": (patch * patch * 3,)})
        return shapes
    shapes.update({"fc_norm.weight": (dim,), "fc_norm.bias": (dim,), "head.weight": (aus, dim), "head.bias": (aus,)})
    if layout == "fmae_iat":
        shapes.update({"ID_head.weight": (subjects, dim), "ID_head.bias": (subjects,)})
    elif layout != "fmae":
        raise ValueError(layout)
    return shapes


def original_state_dict(layout: str, seed: int = 0, light: bool = False, **arch) -> dict[str, torch.Tensor]:
    """Random weights of the layout; `light`: zeros stored as one number each (a big encoder in a small file,
    for tests that look only at the shapes)."""
    shapes = original_shapes(layout, **arch)
    if light:
        return {k: torch.zeros(1).expand(shape) for k, shape in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in shapes.items()}


def original_args(layout: str) -> argparse.Namespace:
    """The fields of the original's argparse (main_finetune / main_pretrain), values as it ran them."""
    common = dict(batch_size=64, epochs=20, accum_iter=1, input_size=224, weight_decay=0.05, lr=None, blr=5e-4,
                  min_lr=1e-6, warmup_epochs=2, output_dir="./output_dir", log_dir="./output_dir", device="cuda",
                  seed=0, resume="", start_epoch=0, num_workers=10, pin_mem=True, world_size=2, local_rank=-1,
                  dist_on_itp=False, dist_url="env://", distributed=True, rank=0, gpu=0, dist_backend="nccl")
    if layout == "pretrain":
        return argparse.Namespace(**common, model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True,
                                  data_path=["/data/lmdb/EmotioNet", "/data/lmdb/AffectNet"])
    return argparse.Namespace(**common, model="vit_base_patch16", drop_path=0.1, clip_grad=None, layer_decay=0.65,
                              color_jitter=None, aa="rand-m9-mstd0.5-inc1", smoothing=0.1, reprob=0.25,
                              remode="pixel", recount=1, resplit=False, mixup=0, cutmix=0, cutmix_minmax=None,
                              mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", finetune="mae_pretrain.pth",
                              global_pool=True, data_path="/data/BP4D/", nb_classes=BP4D_AUS, eval=False,
                              dist_eval=False, fold=1, lambda_id=2.0 if layout == "fmae_iat" else 0.0)


def original_optimizer_state(state: dict[str, torch.Tensor], step: bool = True) -> dict:
    """A real AdamW state over the model's parameters after one step (or none), with the original's
    `lr_scale` groups."""
    params = [torch.nn.Parameter(v if not step else v.clone()) for v in state.values()]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0, "lr_scale": 0.65},
                             {"params": decay, "weight_decay": 0.05, "lr_scale": 1.0}], lr=1e-3)
    if step:
        for p in params:
            p.grad = torch.ones_like(p) * 1e-3
        opt.step()
    return opt.state_dict()


def save_like_original(path: Path, layout: str, *, epoch: int = 19, seed: int = 0, light: bool = False,
                       **arch) -> dict[str, torch.Tensor]:
    """Write `path` as the original's misc.save_model does; returns the state dict it saved. `light`: see
    original_state_dict (and an optimizer that has not stepped yet, so no moment tensors)."""
    state = original_state_dict(layout, seed=seed, light=light, **arch)
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 412}  # torch.cuda.amp.GradScaler.state_dict() of an fp16 run
    torch.save({"model": state, "optimizer": original_optimizer_state(state, step=not light), "epoch": epoch,
                "scaler": scaler,
                "args": original_args(layout)}, path)
    return state
