"""What the speed benchmarks share: the machine line, test images, the engine's datasets, and one training
step done the engine's way ("ours") or the original FMAE-IAT way ("original-style"), timed on synthetic
tensors or through the real data loader. Used by data_speed.py, train_speed.py and gpu_train.py.

The step repeats the engine's inner loop (`fmae.train.trainer.Trainer._train_epoch`): autocast, the task's
loss (`AUTask.loss`, or the MAE's masked-patch loss), `loss.item()` (both the engine and the original check
every step that the loss is finite), the grad scaler, the optimizer step, `zero_grad(set_to_none=True)`.
What differs between the styles is only what the engine's config switches (`amp`, `fused_attn`,
`fused_optimizer`, `data_cache`, `compile`) select.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np


def machine() -> str:
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def load() -> str:
    """The load average (1, 5, 15 min): every result records the conditions it was measured under."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# --- images ---------------------------------------------------------------------------------------------

def _jpeg(path: Path, side: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (side, side, 3))  # skin-like texture
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpegs(folder: Path, count: int, side: int) -> list[Path]:
    """`count` face-crop-like JPEGs (smooth colour fields with fine texture, ~20 KB at 256 px), quickly."""
    paths = [folder / f"S{i % 8:02d}" / f"frame_{i:05d}.jpg" for i in range(count)]
    for p in {p.parent for p in paths}:
        p.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 2)) as pool:
        list(pool.map(lambda ip: _jpeg(ip[1], side, ip[0]), enumerate(paths)))
    return paths


def finetune_cfg(size: int, seed: int = 0) -> dict:
    """The engine's resolved fine-tuning config for BP4D (recipe + engine defaults) at `size`."""
    from fmae.recipes import finetune_recipe
    from fmae.run_spec import every_run_defaults

    return {**every_run_defaults(), **finetune_recipe("bp4d"), "input_size": size, "seed": seed, "dataset": "bp4d",
            "task": "au", "fold": 1, "model": "vit_base", "lambda_id": 0.0}


def engine_datasets(root: Path, paths: list[Path], cfg: dict, train: bool):
    """(original-style: JPEG + PIL per item, ours: the pixel cache) over the same files, built by the
    engine's own constructors. The cache must exist (`fmae.data.pixel_cache.build_cache`)."""
    from fmae.data.torch.cached import choose_cache, image_set

    targets = (np.random.default_rng(0).random((len(paths), 12)) < 0.3).astype(np.float32)
    cache, keys = choose_cache({**cfg, "data_cache": "auto"}, root, {"all": paths})
    if cache is None:
        raise SystemExit(f"no usable pixel cache under {root} for input_size {cfg['input_size']}")
    return (image_set(cfg, paths, targets, train=train),
            image_set(cfg, paths, targets, train=train, cache=cache, keys=keys["all"]))


def loader_batches(data, batch: int, workers: int, device) -> Iterator:
    """(model input, targets) on `device` through the DataLoader and the dataset's `to_device`, as the
    trainer makes them, epoch after epoch."""
    import torch
    from torch.utils.data import DataLoader

    from fmae.data.torch.datasets import EpochBatches

    epoch = 0
    while True:
        sampler = EpochBatches(len(data), batch, 0, shuffle=True, drop_last=True)
        sampler.epoch = data.epoch = epoch
        dl = DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())
        for x, y, _ in dl:
            yield data.to_device(x, device), y.to(device, non_blocking=True)
        epoch += 1


# --- model FLOPs ----------------------------------------------------------------------------------------

def _blocks_macs(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
    # per block: qkv 3·N·D², projection N·D², MLP 2·r·N·D², attention scores and values 2·N²·D
    return depth * (tokens * dim * dim * (4 + 2 * mlp_ratio) + 2 * tokens * tokens * dim)


def vit_macs(model: str, img_size: int) -> float:
    """Forward multiply-accumulates per image of the fine-tuning encoder (ViT-B/16 at 224: 17.6 G;
    ViT-L/16: 61.6 G, as timm counts them)."""
    from fmae.model_specs import encoder_spec  # torch-free

    s = encoder_spec(model)
    patches = (img_size // s.patch) ** 2
    return patches * 3 * s.patch ** 2 * s.embed_dim + _blocks_macs(patches + 1, s.embed_dim, s.depth, s.mlp_ratio)


def mae_macs(model: str, img_size: int, decoder_dim: int, decoder_depth: int, mask_ratio: float = 0.75) -> float:
    """Forward MACs per image of MAE pretraining: the encoder on the visible quarter, the decoder on all."""
    from fmae.model_specs import encoder_spec

    s = encoder_spec(model)
    patches = (img_size // s.patch) ** 2
    keep = int(patches * (1 - mask_ratio))
    return (patches * 3 * s.patch ** 2 * s.embed_dim + _blocks_macs(keep + 1, s.embed_dim, s.depth, s.mlp_ratio)
            + (keep + 1) * s.embed_dim * decoder_dim
            + _blocks_macs(patches + 1, decoder_dim, decoder_depth, s.mlp_ratio)
            + patches * decoder_dim * s.patch ** 2 * 3)


# --- styles and the step --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Style:
    name: str
    amp: str  # "bf16" | "fp16" | "off": autocast dtype (fp16 comes with the grad scaler)
    fused_attn: bool  # F.scaled_dot_product_attention, or the explicit softmax(q·kᵀ)·v
    fused_optimizer: bool  # fused (CUDA) / multi-tensor (CPU) AdamW, or the per-parameter loop
    data: str  # "cache" (uint8 batches finished on the device) | "jpeg" (PIL decoding, float32 batches)
    compile: str = "off"  # "off" | "blocks" (each transformer block compiled: one compile, reused) | "full"
    backend: str = "inductor"  # torch.compile's backend ("eager" traces without generating code: for tests)

    def describe(self, device_type: str = "cuda") -> str:
        fast_adamw = "fused AdamW" if device_type == "cuda" else "multi-tensor AdamW"
        parts = [self.amp if self.amp != "off" else "fp32", "fused attention" if self.fused_attn else "unfused attention",
                 fast_adamw if self.fused_optimizer else "per-parameter AdamW"]
        if self.compile != "off":
            backend = "" if self.backend == "inductor" else f", {self.backend} backend"
            parts.append(f"torch.compile ({self.compile}{backend})")
        return ", ".join(parts)


def bf16_ok(device) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def styles(device, compile_mode: str = "off", backend: str = "inductor") -> tuple[Style, Style]:
    """(ours, original-style) for this device: bf16 where the GPU has it, fp16 + scaler otherwise, fp32 on
    the CPU (both; the engine's choice there)."""
    if device.type == "cuda":
        ours_amp, orig_amp = ("bf16" if bf16_ok(device) else "fp16"), "fp16"
    else:
        ours_amp = orig_amp = "off"
    return (Style("ours", ours_amp, True, True, "cache", compile_mode, backend),
            Style("original-style", orig_amp, False, False, "jpeg"))


class Stepper:
    """A model, its optimizer and scaler in a given style; `step(x, y)` is one training iteration."""

    def __init__(self, model, loss_fn, depth: int, style: Style, device, *, pretrain: bool = False) -> None:
        import torch

        from fmae.models.encoders import set_fused_attn
        from fmae.train.optim import make_optimizer

        self.style, self.device = style, device
        set_fused_attn(model, style.fused_attn)
        self.model = model.to(device).train()
        cfg = {"weight_decay": 0.05, "layer_decay": 1.0 if pretrain else 0.65, "fused_optimizer": style.fused_optimizer,
               "task": "pretrain" if pretrain else "au", "betas": (0.9, 0.95) if pretrain else (0.9, 0.999)}
        self.optimizer = make_optimizer(self.model, cfg, depth, device)
        for g in self.optimizer.param_groups:
            g["lr"] = 1e-4 * g.get("lr_scale", 1.0)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[style.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss_fn = loss_fn
        self.compile_error: str | None = None
        if style.compile != "off":
            self._compile(style.compile)

    def _compile(self, mode: str) -> None:
        import torch

        if mode == "full":
            self.forward_model = torch.compile(self.model, backend=self.style.backend)
            return
        for name in ("blocks", "decoder_blocks", "encoder"):
            part = getattr(self.model, name, None)
            if name == "encoder" and part is not None:
                part = part.blocks
            for block in part or []:
                block.compile(backend=self.style.backend)

    def step(self, x, y) -> float:
        import torch

        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.loss_fn(getattr(self, "forward_model", self.model), x, y)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"loss is {value}")
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return value


def finetune_stepper(model_name: str, img_size: int, style: Style, device) -> Stepper:
    """FMAE fine-tuning as the engine builds it: ViT + global pool + AU head, BCE over 12 AUs."""
    import torch

    from fmae.models.encoders import create_encoder, encoder_spec
    from fmae.models.heads import FineTuneModel
    from fmae.train.tasks import AUTask, Batch

    task = AUTask({"dataset": "bp4d", "lambda_id": 0.0})
    with torch.device(device):  # initialise on the device: a ViT-L's init on the CPU takes seconds
        model = FineTuneModel(create_encoder(model_name, img_size=img_size, drop_path=0.1), 12)

    def loss(m, x, y):
        return task.loss(m, Batch(x, y, torch.full((x.shape[0],), -1, device=x.device)))[0]

    return Stepper(model, loss, encoder_spec(model_name).depth, style, device)


def mae_stepper(model_name: str, img_size: int, style: Style, device, decoder: tuple[int, int, int]) -> Stepper:
    """MAE pretraining (mask 75 %, norm-pix loss) with a decoder of (dim, depth, heads)."""
    import torch

    from fmae.models.mae import MaskedAutoencoder

    dim, depth, heads = decoder
    with torch.device(device):
        model = MaskedAutoencoder(model_name, img_size=img_size, decoder_dim=dim, decoder_depth=depth,
                                  decoder_heads=heads)
    return Stepper(model, lambda m, x, y: m(x, mask_ratio=0.75)[0], model.depth, style, device, pretrain=True)


def synthetic_batches(batch: int, img_size: int, device) -> Iterator:
    """The same normalised-looking float batch on the device, forever: the model step alone."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, generator=g).to(device)
    y = (torch.rand(batch, 12, generator=g) < 0.3).float().to(device)
    while True:
        yield x, y


@dataclass
class Timing:
    images_per_s: float
    step_s: float
    first_step_s: float  # includes compilation when compiled
    peak_gib: float | None = None
    error: str | None = None


def time_steps(stepper: Stepper, batches: Iterator, batch: int, warmup: int, steps: int) -> Timing:
    import torch

    cuda = stepper.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first = None
    for i in range(warmup):
        stepper.step(*next(batches))
        if i == 0:
            first = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        stepper.step(*next(batches))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return Timing(batch * steps / seconds, seconds / steps, first or 0.0, peak)


def release() -> None:
    """After a measurement dropped its model and optimizer: free their GPU memory and compiled graphs."""
    import torch

    if torch.cuda.is_available():
        gc.collect()  # (a full collection takes ~0.3 s: only worth it where memory is the GPU's)
        torch.cuda.empty_cache()
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 — only a cache
        pass


def first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:200]


__all__ = ["Style", "Stepper", "Timing", "bf16_ok", "engine_datasets", "finetune_cfg", "finetune_stepper", "first_line",
           "load", "loader_batches", "machine", "mae_macs", "mae_stepper", "make_jpegs", "release", "replace",
           "styles", "synthetic_batches", "time_steps", "vit_macs"]
