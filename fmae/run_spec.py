"""A run's config as typed, frozen sections — identity, model, optim, schedule, augment, data, execution —
each field with its one default, its choices and what it means (as torchtitan's `config/job_config.py`).

The resolver (`run_config.py`) layers values into a flat mapping, one key per field, named as the field
(the keys run.toml has always had: `blr`, `input_size`…); `RunSpec.from_flat` reads it into sections,
and each component takes only its own (the optimizer `spec.optim`, the transforms `spec.augment`). A
default here is what a key means when no layer set it — for recipe keys, what a run.toml written before
the key existed ran with. `run.toml` holds the sections as `[config.<section>]` tables (`sectioned`);
`flatten` reads both that layout and the flat one of earlier releases.

The experiment key (`config_key`) hashes the flat values except the fields marked `how` (the execution
section, the data locations, and the fast-path switches a component owns: same numbers either way).
No torch here: the queue, the report and the app read configs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping


Task = Literal["au", "fer", "id_probe", "pretrain"]


def how(default: Any) -> Any:
    """A field that says how the run executes or where its data lie, not what it computes: two runs
    differing only here are one experiment (a laptop's run and a GPU box's are one cell)."""
    return field(default=default, metadata={"how": True})


def every_run(default: Any, *, how_: bool = False) -> Any:
    """A field every run has, whatever its recipe: its default is the lowest layer of the config."""
    return field(default=default, metadata={"every_run": True, "how": how_})


@dataclass(frozen=True)
class Identity:
    """What the run is: the cell of a study."""

    task: Task = "au"
    """au (AU detection), fer (expression classes), id_probe (identity linear probe), pretrain (MAE)."""
    dataset: str = ""
    """The benchmark (`fmae datasets`), or the pretraining data's name."""
    recipe: str = ""
    """The paper's recipe the values started from (fmae, fmae_iat, demo, id_probe, pretrain)."""
    fold: int = 0
    """The test fold (AU benchmarks, 1..folds); 0 for one train/test split."""
    seed: int = 0
    """Seeds the weights, the data order and every augmentation draw."""
    lambda_id: float = 0.0
    """Weight of the identity-adversarial loss (FMAE-IAT); 0 = no identity head."""
    source_run: str = ""
    """The run an identity probe or a re-evaluation reads (its id)."""
    eval_checkpoint: str = ""
    """A re-evaluation (`fmae eval`): the checkpoint scored on the test split, with no training."""
    eval_dataset: str = ""
    """Cross-dataset evaluation (`fmae eval --dataset`): the other AU benchmark whose every frame is scored,
    over the AUs both label; `dataset` stays the model's own."""


@dataclass(frozen=True)
class Model:
    """The network and where its weights start."""

    model: str = every_run("vit_base")
    """The encoder (`fmae.model_specs.ENCODERS`: vit_tiny, vit_small, vit_base, vit_large)."""
    init: str = every_run("")
    """Checkpoint to start from ("" = random init; `fmae:NAME` = one shipped in fmae/assets)."""
    drop_path: float = 0.0
    """Stochastic depth rate of the encoder's blocks."""
    head_init: Literal["redraw", "keep"] = "keep"
    """After loading `init`: redraw head.weight as the original does, or keep a checkpoint head that fits."""
    id_head_depth: Literal[1, 2, 3] = 1
    """IAT's identity head: 1 = linear (the paper's), 2 or 3 = an MLP of that many layers (its ablation)."""
    fused_attn: bool = every_run(True, how_=True)
    """F.scaled_dot_product_attention; false = the explicit softmax(q·kᵀ)·v (same numbers)."""
    decoder_dim: int = 512
    """MAE decoder width (a model may own a smaller one: `model_specs.EncoderSpec`)."""
    decoder_depth: int = 8
    """MAE decoder blocks."""
    decoder_heads: int = 16
    """MAE decoder attention heads (decoder_dim must be a multiple)."""
    mask_ratio: float = 0.75
    """MAE: the share of patches masked."""
    norm_pix_loss: bool = True
    """MAE: the loss on per-patch normalised pixels."""


@dataclass(frozen=True)
class Optim:
    """AdamW with layer-wise lr decay."""

    blr: float = 0.0
    """Base lr; the effective lr is blr × batch × accum × processes / 256."""
    weight_decay: float = 0.0
    """AdamW weight decay (norms, biases and tokens excepted)."""
    layer_decay: float = 1.0
    """Layer-wise lr decay (block i of L gets decay^(L + 1 - i)); 1 = none."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    clip_grad: float = every_run(0.0)
    """Max gradient norm; 0 = no clipping (the paper's recipes clip nothing)."""
    fused_optimizer: bool = every_run(True, how_=True)
    """Fused AdamW on CUDA, multi-tensor on the CPU; false = the per-parameter loop (same update)."""


@dataclass(frozen=True)
class Schedule:
    """How long, in what steps, and the lr's shape: per-iteration warmup, then half-cosine."""

    epochs: int = 1
    """Passes over the train split."""
    warmup_epochs: float = 0.0
    """Linear lr warmup (a short run keeps the recipe's only up to its length)."""
    min_lr: float = 0.0
    """The cosine's floor."""
    batch_size: int = 64
    """Images per step per process."""
    accum_iter: int = 1
    """Batches accumulated per optimizer step."""


@dataclass(frozen=True)
class Augment:
    """The train and eval transforms (timm's)."""

    input_size: int = 224
    """Square side the images train and evaluate at (a model may own its own: vit_tiny 64)."""
    auto_augment: str = ""
    """timm RandAugment spec ("" = none), e.g. rand-m9-mstd0.5-inc1."""
    random_erase_prob: float = 0.0
    """Random erasing probability."""
    random_erase_mode: str = "pixel"
    """Random erasing fill (timm: const, rand, pixel)."""
    crop_scale: float = 0.08
    """RandomResizedCrop's smallest area share (timm's default, which the original used)."""
    eval_interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    """The eval Resize's; the paper's recipes say bilinear (runs before the key evaluated bicubic)."""
    fast_augment: bool = every_run(True, how_=True)
    """From the pixel cache: crop, flip and RandAugment in OpenCV; false = timm's PIL ops."""


@dataclass(frozen=True)
class Data:
    """Where the images and labels are, and how many a probe takes."""

    data_root: str = how("")
    """The dataset's image folder."""
    labels: str = how("")
    """One labels file split by the fold table ("" when per-fold files are given)."""
    train_labels: str = how("")
    """Per-fold train labels (a file or a pattern with {fold})."""
    test_labels: str = how("")
    """Per-fold test labels."""
    max_image_pixels: int = how(0)
    """fmae.toml [data] max_image_pixels: the decompression-bomb limit (0 = fmae's default)."""
    data: tuple[str, ...] = ()
    """MAE pretraining: the image stores and folders trained on (what is learnt from, so keyed)."""
    frames_per_subject: int = 100
    """Identity probe: frames sampled per subject."""
    train_frames_per_subject: int = 70
    """Identity probe: of those, the train frames."""
    data_cache: str = every_run("auto", how_=True)
    """auto = the pixel cache of `fmae data cache` when it covers the run | off | a cache folder."""


@dataclass(frozen=True)
class Execution:
    """Where and how the run executes; never part of the experiment."""

    device: Literal["auto", "cpu", "cuda"] = every_run("auto", how_=True)
    """auto = a CUDA GPU when one is visible."""
    amp: Literal["auto", "bf16", "fp16", "off"] = every_run("auto", how_=True)
    """auto = bf16 where supported, fp16 on older GPUs, off on the CPU."""
    num_workers: int = every_run(-1, how_=True)
    """DataLoader workers; -1 = min(8, CPUs - 1)."""
    log_every: int = every_run(20, how_=True)
    """Optimizer steps between train records in metrics.jsonl."""
    compile: bool = every_run(False, how_=True)
    """torch.compile the model."""
    save_best: bool = every_run(True, how_=True)
    """Keep checkpoints/best.pt (the best epoch's weights)."""


SECTIONS: dict[str, type] = {"identity": Identity, "model": Model, "optim": Optim, "schedule": Schedule,
                             "augment": Augment, "data": Data, "execution": Execution}
# flat key -> its section; every field name is unique across sections, so the flat name is the key.
SECTION_OF: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
assert len(SECTION_OF) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values()), "field names must be unique"
HOW_KEYS = frozenset(f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls) if f.metadata.get("how"))
# Keys earlier releases wrote that nothing reads: kept in their run.toml, left out of experiment keys.
RETIRED_KEYS = frozenset({"global_pool"})
# Keys that join the experiment key only away from this value, which every run made before the key existed
# ran with: a new linear-head run is the same experiment as an older run without the key.
QUIET_DEFAULTS: Mapping[str, Any] = {"id_head_depth": 1}


def dotted(key: str) -> str:
    """`blr` -> `optim.blr`; a key no section owns stays as it is."""
    return f"{SECTION_OF[key]}.{key}" if key in SECTION_OF else key


def every_run_defaults() -> dict[str, Any]:
    """The fields every run has, at their defaults: the config's lowest layer, beneath the recipe."""
    return {f.name: f.default for cls in SECTIONS.values() for f in dataclasses.fields(cls)
            if f.metadata.get("every_run")}


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolving the annotations' strings each call cost ~0.4 ms a key


def choices(key: str) -> tuple[str, ...] | None:
    """The allowed values of a `Literal` field, else None."""
    cls = SECTIONS.get(SECTION_OF.get(key, ""))
    if cls is None:
        return None
    hint = _type_hints(cls)[key]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _section(cls: type, flat: Mapping[str, Any]) -> Any:
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in flat and flat[f.name] is not None:
            value = flat[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def section_of(cls: type, config: Any) -> Any:
    """`cls` itself, or read from a flat mapping (its own keys only; absent ones at their defaults)."""
    return config if isinstance(config, cls) else _section(cls, flatten(config))


@dataclass(frozen=True)
class RunSpec:
    """A resolved run config, in sections."""

    identity: Identity
    model: Model
    optim: Optim
    schedule: Schedule
    augment: Augment
    data: Data
    execution: Execution
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys no section owns (e.g. the retired global_pool of an older run.toml), kept as they were."""

    @classmethod
    def from_flat(cls, config: Mapping[str, Any]) -> RunSpec:
        flat = flatten(config)
        return cls(**{name: _section(sec, flat) for name, sec in SECTIONS.items()},
                   extra={k: v for k, v in flat.items() if k not in SECTION_OF})


def sectioned(flat: Mapping[str, Any]) -> dict[str, Any]:
    """run.toml's [config]: each section's keys in its own table (sections and keys in their classes'
    order), keys no section owns beside them."""
    out: dict[str, Any] = {k: v for k, v in flat.items() if k not in SECTION_OF}
    for name, cls in SECTIONS.items():
        table = {f.name: flat[f.name] for f in dataclasses.fields(cls) if f.name in flat}  # in field order
        if table:
            out[name] = table
    return out


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """A [config] table of either layout as one flat mapping (sections' keys merged; a flat layout's
    `model = "vit_tiny"` is a value, a sectioned one's [config.model] a table)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key in SECTIONS and isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


# --- the experiment's identity --------------------------------------------------------------------

def canonical_json(value: Any) -> Any:
    """A config value as the experiment key compares it: what run.toml gives back for what was written
    (no None: TOML has no null; tuples as lists, paths as text); an integral float equals its int
    (λ = 2 and λ = 2.0 are one experiment)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): canonical_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [canonical_json(v) for v in value]
    return str(value)


def config_key(cfg: Mapping[str, Any]) -> str:
    """sha1 of the canonical JSON of a config's flat values without the `how` fields and retired keys:
    two runs are the same experiment when their keys are equal. The same flat content as earlier
    releases hashed, so their run folders keep their keys (the queue re-keyed rows once: schema 3)."""
    body = {k: v for k, v in flatten(cfg).items() if k not in HOW_KEYS and k not in RETIRED_KEYS and v is not None
            and not (k in QUIET_DEFAULTS and canonical_json(v) == QUIET_DEFAULTS[k])}
    text = json.dumps(canonical_json(body), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def same_value(a: Any, b: Any) -> bool:
    """Equal as the experiment key compares values (λ = 2 equals 2.0, tuples equal lists)."""
    return canonical_json(a) == canonical_json(b)
