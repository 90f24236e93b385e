"""Layer-wise lr decay groups and the warmup + half-cosine schedule, against the original's rules."""

from __future__ import annotations

import math

import pytest
import torch

from fmae.models.encoders import create_encoder
from fmae.models.heads import FineTuneModel
from fmae.train.optim import Schedule, effective_lr, layer_id, make_optimizer, param_groups


@pytest.mark.parametrize("name, expected", [
    ("encoder.cls_token", 0), ("encoder.pos_embed", 0), ("encoder.patch_embed.proj.weight", 0),
    ("encoder.blocks.0.attn.qkv.weight", 1), ("encoder.blocks.3.mlp.fc2.bias", 4),
    ("encoder.fc_norm.weight", 5), ("head.weight", 5), ("id_head.bias", 5),
    ("blocks.11.norm1.weight", 12),  # a bare encoder (pretraining) reads the same
])
def test_layer_ids(name, expected):
    assert layer_id(name, 4 if "11" not in name else 12) == expected


def test_param_groups_scale_and_weight_decay():
    model = FineTuneModel(create_encoder("vit_tiny", img_size=32), 12, num_subjects=41, lambda_id=1.0)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.65, num_layers=4)
    seen = {}
    for g in groups:
        for name in g["param_names"]:
            seen[name] = (g["lr_scale"], g["weight_decay"])
    assert set(seen) == {n for n, _ in model.named_parameters()}
    assert seen["encoder.pos_embed"] == (pytest.approx(0.65 ** 5), 0.0)
    assert seen["encoder.cls_token"][1] == 0.0
    assert seen["encoder.patch_embed.proj.weight"] == (pytest.approx(0.65 ** 5), 0.05)
    assert seen["encoder.blocks.2.attn.qkv.weight"] == (pytest.approx(0.65 ** 2), 0.05)
    assert seen["encoder.blocks.2.attn.qkv.bias"] == (pytest.approx(0.65 ** 2), 0.0)
    assert seen["encoder.fc_norm.weight"] == (1.0, 0.0)
    assert seen["head.weight"] == (1.0, 0.05) and seen["id_head.weight"] == (1.0, 0.05)
    opt = make_optimizer(model, {"weight_decay": 0.05, "layer_decay": 0.65}, 4, torch.device("cpu"))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(seen)


def test_schedule_warmup_then_half_cosine():
    s = Schedule(lr=1e-3, min_lr=1e-6, warmup_epochs=2, epochs=10)
    assert s.at(0) == 0.0
    assert s.at(1) == pytest.approx(5e-4)
    assert s.at(2) == pytest.approx(1e-3)
    assert s.at(6) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # halfway through the cosine
    assert s.at(10) == pytest.approx(1e-6)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr_scale": 0.5}, {"params": [model.bias]}])
    assert s.apply(opt, 1.0) == pytest.approx(5e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 5e-4])
    # No warmup: the cosine starts at the peak.
    assert Schedule(1.0, 0.0, 0, 4).at(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_effective_lr_is_blr_times_effective_batch_over_256():
    assert effective_lr(5e-4, 64, 1, 1) == pytest.approx(1.25e-4)
    assert effective_lr(5e-4, 32, 2, 4) == pytest.approx(5e-4)
