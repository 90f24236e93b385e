"""AdamW with layer-wise lr decay, and the per-iteration warmup + half-cosine schedule (MAE's)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from fmae.run_spec import Optim, section_of

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("cls_token", "pos_embed", "patch_embed", "mask_token", "reg_token")
_NO_DECAY = ("cls_token", "pos_embed", "mask_token", "reg_token")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for block i, num_layers + 1 for everything after (norms, heads)."""
    short = name.split("encoder.", 1)[-1]
    if short.split(".")[0] in _EMBED:
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float, num_layers: int,
                 no_decay_tokens: bool = True) -> list[dict]:
    """Fine-tuning (MAE's lrd groups) exempts biases, norms and the tokens from weight decay;
    pretraining (`no_decay_tokens=False`) exempts only biases and norms, as MAE's pretraining did."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or (no_decay_tokens and name.split(".")[-1] in _NO_DECAY))
        lid = layer_id(name, num_layers)
        key = (lid, decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid)
            groups[key] = {"params": [], "names": [], "lr_scale": scale,
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    out = [groups[k] for k in sorted(groups)]
    for g in out:  # names are for logging/tests; the optimizer must not carry them in its state
        g["param_names"] = g.pop("names")
    return out


def make_optimizer(model: nn.Module, optim: Optim | Mapping[str, Any], num_layers: int, device: torch.device, *,
                   no_decay_tokens: bool = True) -> torch.optim.AdamW:
    """AdamW over `param_groups`, from the run's optim section (or a mapping of its keys). MAE
    pretraining decays the tokens too (`no_decay_tokens=False`), as the original."""
    optim = section_of(Optim, optim)
    groups = param_groups(model, float(optim.weight_decay), float(optim.layer_decay), num_layers,
                          no_decay_tokens=no_decay_tokens)
    betas = tuple(float(b) for b in optim.betas)
    for g in groups:
        g.pop("param_names")
    # fused_optimizer (default true): one fused kernel over all parameters on CUDA, the multi-tensor
    # (foreach) path on the CPU; false: the per-parameter loop the original's torch ran. Same update.
    if not optim.fused_optimizer:
        return torch.optim.AdamW(groups, lr=0.0, betas=betas, foreach=False, fused=False)
    if device.type == "cuda":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas, fused=True)
    return torch.optim.AdamW(groups, lr=0.0, betas=betas, foreach=True)


@dataclass(frozen=True)
class Schedule:
    """lr as a function of the (fractional) epoch: linear warmup, then half-cosine to min_lr."""

    lr: float  # the peak: blr × effective batch / 256
    min_lr: float
    warmup_epochs: float
    epochs: float

    def at(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.lr * epoch / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)
        progress = min(1.0, (epoch - self.warmup_epochs) / span)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        lr = self.at(epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr


def effective_lr(blr: float, batch_size: int, accum_iter: int, world_size: int) -> float:
    return blr * batch_size * accum_iter * world_size / 256
