"""The paper's training recipes as data (seed README commands and the original scripts' defaults).

A recipe is a flat mapping of config keys to values. The lowest layer of every run's config:
`fmae.toml` and the command line override it (see `config.layer`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from fmae.errors import FmaeError
from fmae.registry import DATASETS, get_dataset

# Shared by every fine-tuning recipe (the original scripts' argparse defaults).
FINETUNE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "input_size": 224,
        "layer_decay": 0.65,
        "weight_decay": 0.05,
        "drop_path": 0.1,
        "min_lr": 1e-6,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "random_erase_prob": 0.25,
        "random_erase_mode": "pixel",
        # RandomResizedCrop's smallest area fraction: timm's default, which the original used. Small
        # images of small faces may need a larger one (the synthetic quality benchmark uses 0.5).
        "crop_scale": 0.08,
        "accum_iter": 1,
        "lambda_id": 0.0,
        # As the original evaluates: Resize([s, s]) with torchvision's default (bilinear; "bicubic" is
        # the train crop's), and head.weight re-drawn after loading a checkpoint ("keep": a fitting
        # checkpoint head is kept).
        "eval_interpolation": "bilinear",
        "head_init": "redraw",
        # IAT's identity head: 1 = linear, as the paper; 2 or 3 = an MLP of that many layers (its ablation)
        "id_head_depth": 1,
    }
)

# Per dataset: recipe name -> the values that differ from FINETUNE_DEFAULTS.
_FINETUNE: dict[str, dict[str, dict[str, Any]]] = {
    "bp4d": {
        "fmae": {"blr": 2e-4, "batch_size": 64, "epochs": 20, "warmup_epochs": 2, "lambda_id": 0.0},
        "fmae_iat": {"blr": 5e-4, "batch_size": 64, "epochs": 30, "warmup_epochs": 3, "lambda_id": 2.0},
    },
    "bp4d_plus": {
        "fmae": {"blr": 5e-4, "batch_size": 64, "epochs": 20, "warmup_epochs": 2, "lambda_id": 0.0},
        "fmae_iat": {"blr": 5e-4, "batch_size": 64, "epochs": 30, "warmup_epochs": 3, "lambda_id": 1.0},
    },
    "disfa": {
        "fmae": {"blr": 5e-4, "batch_size": 64, "epochs": 20, "warmup_epochs": 2, "lambda_id": 0.0},
        "fmae_iat": {"blr": 5e-4, "batch_size": 64, "epochs": 20, "warmup_epochs": 2, "lambda_id": 0.5},
    },
    "rafdb": {
        "fmae": {"blr": 1e-3, "batch_size": 32, "epochs": 60, "warmup_epochs": 6},
    },
    "affectnet8": {
        "fmae": {"blr": 5e-4, "batch_size": 64, "epochs": 30, "warmup_epochs": 3, "accum_iter": 1},
    },
    # The seed gives no separate AffectNet-7 command; the paper trains it like AffectNet-8.
    "affectnet7": {
        "fmae": {"blr": 5e-4, "batch_size": 64, "epochs": 30, "warmup_epochs": 3, "accum_iter": 1},
    },
}

# The newcomer's first run, defined once: README.md's first `fmae train`, the app's ctrl+t in Launch and
# tests/test_demo.py read it. The paper's schedule is for 20+ epochs of real data: its 2 warmup epochs
# would eat a short run (the lr never leaves warmup), and its augmentation slows learning on small
# synthetic sets; the demo takes the settings under which bench/quality_iat.py learns, at 32 px (a third
# of 64 px's time a step, so enough steps fit a few CPU minutes) on the built-in fmae.toml's bp4d copy
# (150 frames a subject, nuisance 0.3). Calibration: bench/demo_calibration.py,
# bench/results/demo_calibration-*.md.
DEMO_RUN: Mapping[str, Any] = MappingProxyType(
    {"dataset": "bp4d", "recipe": "demo", "model": "vit_tiny", "fold": 1, "seed": 0, "lambda_id": 0.0}
)
_DEMO: Mapping[str, Any] = MappingProxyType(
    {
        "blr": 8e-3,  # × batch 32 / 256 = 1e-3
        "batch_size": 32,
        "epochs": 10,
        "input_size": 32,  # the recipe's own choice, above vit_tiny's 64 (explicit_keys below)
        "warmup_epochs": 0,
        "layer_decay": 1.0,
        "drop_path": 0.0,
        "auto_augment": "",
        "random_erase_prob": 0.0,
        "crop_scale": 1.0,
        "lambda_id": 0.0,
        # fmae/assets/vit_tiny_mae_synth.pth: MAE-pretrained by `fmae pretrain` on synthetic faces of other
        # people (bench/demo_init.py, bench/results/demo_init-*.md), as the paper fine-tunes from MAE.
        "init": "fmae:vit_tiny_mae_synth",
    }
)

PRETRAIN: Mapping[str, Any] = MappingProxyType(
    {
        "mask_ratio": 0.75,
        "norm_pix_loss": True,
        "blr": 1.5e-4,
        "weight_decay": 0.05,
        "betas": (0.9, 0.95),
        "epochs": 50,
        "warmup_epochs": 2,
        "input_size": 224,
        "batch_size": {"vit_small": 256, "vit_base": 256, "vit_large": 128},
        "gpus": {"vit_small": 2, "vit_base": 2, "vit_large": 4},
    }
)

ID_PROBE: Mapping[str, Any] = MappingProxyType(
    {
        "blr": 2e-4,
        "batch_size": 64,
        "epochs": 20,
        "warmup_epochs": 2,
        "input_size": 224,
        "weight_decay": 0.05,
        "min_lr": 1e-6,
        "frames_per_subject": 100,
        "train_frames_per_subject": 70,
        "eval_interpolation": "bilinear",  # the probe's frames take the AU evaluation transform
    }
)


def recipe_names(dataset: str) -> list[str]:
    """The paper's recipes for a dataset, then "demo" (every dataset has it)."""
    return [*_FINETUNE[get_dataset(dataset).name], DEMO_RUN["recipe"]]


def explicit_keys(dataset: str, recipe: str) -> set[str]:
    """The keys a recipe's own row sets (not the shared defaults): an explicit choice, above the model's own
    defaults (the demo's input size over vit_tiny's)."""
    if recipe == DEMO_RUN["recipe"]:
        return set(_DEMO)
    return set(_FINETUNE[get_dataset(dataset).name].get(recipe, {}))


def finetune_recipe(dataset: str, recipe: str = "fmae") -> dict[str, Any]:
    """The paper's full fine-tuning recipe for a dataset: shared defaults, then the dataset's row. The demo
    recipe is the dataset's fmae row with the demo's changes on top."""
    spec = get_dataset(dataset)
    rows = _FINETUNE[spec.name]
    if recipe == DEMO_RUN["recipe"]:
        return {**FINETUNE_DEFAULTS, **rows["fmae"], **_DEMO}
    if recipe not in rows:
        raise FmaeError(
            f"dataset {spec.name} has no recipe '{recipe}': choose one of {', '.join(recipe_names(spec.name))}"
        )
    return {**FINETUNE_DEFAULTS, **rows[recipe]}


assert set(_FINETUNE) == set(DATASETS), "every registry row needs a recipe"
