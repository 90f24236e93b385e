"""Encoders by name, the fine-tuning / probe heads, and checkpoint reading, filtering and writing.

Only vit_tiny ever runs a forward pass; the big encoders are built on the meta device (no memory).
"""

from __future__ import annotations

import copy
import os
import pickle
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fmae.errors import FmaeError
from fmae.models import (ENCODERS, FineTuneModel, IdentityProbe, create_encoder, encoder_spec,
                         extract_state_dict, filter_state_dict, grad_reverse, load_pretrained, num_layers,
                         read_checkpoint, save_checkpoint)
from fmae.models.heads import pooled_features

# Parameter counts without a classifier head (ViT-S/B/L: 22M / 86M / 304M in the literature).
EXPECTED_PARAMS_M = {"vit_small": 21.7, "vit_base": 85.8, "vit_large": 303.3}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(img_size: int = 64, **kw) -> VisionTransformer:
    return create_encoder("vit_tiny", img_size=img_size, **kw)


# --- encoders ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_matches_its_table_row(name):
    spec = encoder_spec(name)
    with torch.device("meta"):  # vit_large at 224 px without allocating a byte
        enc = create_encoder(name)
    grid = spec.input_size // spec.patch
    assert enc.embed_dim == spec.embed_dim and num_layers(enc) == spec.depth
    assert enc.patch_embed.patch_size == (spec.patch, spec.patch)
    assert enc.pos_embed.shape == (1, 1 + grid * grid, spec.embed_dim)
    assert enc.cls_token.shape == (1, 1, spec.embed_dim)
    block = enc.blocks[0]
    assert block.attn.num_heads == spec.heads and block.attn.qkv.bias is not None
    assert block.mlp.fc1.out_features == spec.mlp_ratio * spec.embed_dim
    if os.environ.get("TIMM_FUSED_ATTN", "1") != "0":
        assert block.attn.fused_attn  # F.scaled_dot_product_attention
    assert isinstance(enc.norm, nn.Identity) and isinstance(enc.head, nn.Identity)
    assert isinstance(enc.fc_norm, nn.LayerNorm) and enc.fc_norm.eps == 1e-6 and block.norm1.eps == 1e-6
    if name in EXPECTED_PARAMS_M:
        assert sum(p.numel() for p in enc.parameters()) / 1e6 == pytest.approx(EXPECTED_PARAMS_M[name], abs=0.1)


def test_encoder_keys_are_the_mae_checkpoint_names():
    keys = set(tiny(global_pool=False).state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.3.attn.qkv.weight",
            "blocks.0.mlp.fc2.bias", "norm.weight"} <= keys
    assert not any(k.startswith("fc_norm") for k in keys)
    assert not any(k.startswith("norm.") for k in tiny().state_dict())


def _manual_tokens(enc: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    x = enc.patch_embed.proj(x).flatten(2).transpose(1, 2)              # [B, N, D]
    x = torch.cat([enc.cls_token.expand(len(x), -1, -1), x], 1) + enc.pos_embed
    for block in enc.blocks:
        x = block(x)
    return x                                                             # [B, 1 + N, D]


def test_global_pool_is_the_mean_of_patch_tokens_then_fc_norm():
    enc = tiny().eval()
    with torch.no_grad():
        nn.init.normal_(enc.fc_norm.weight)  # make fc_norm's affine part visible
        x = torch.randn(2, 3, 64, 64)
        tokens = _manual_tokens(enc, x)
        expected = F.layer_norm(tokens[:, 1:].mean(1), (96,), enc.fc_norm.weight, enc.fc_norm.bias, eps=1e-6)
        out = enc(x)
    assert out.shape == (2, 96)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_token_pooling_is_the_normed_cls_token():
    enc = tiny(global_pool=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = enc.norm(_manual_tokens(enc, x))[:, 0]
        torch.testing.assert_close(enc(x), expected, rtol=1e-5, atol=1e-5)


def test_encoder_name_and_size_errors():
    with pytest.raises(FmaeError, match="vit_tiny, vit_small, vit_base, vit_large"):
        create_encoder("vit_huge")
    with pytest.raises(FmaeError, match="input_size 70 .*patch size 8.*64 or 72"):
        create_encoder("vit_tiny", img_size=70)
    assert tiny(img_size=32).pos_embed.shape == (1, 17, 96)


# --- heads -------------------------------------------------------------------------------------
def test_fine_tune_model_shapes_and_names():
    model = FineTuneModel(tiny(), num_outputs=12, num_subjects=5, lambda_id=0.5)
    logits, id_logits = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 12) and id_logits.shape == (3, 5)
    names = [n for n, _ in model.named_parameters()]
    assert names[:4] == ["encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed.proj.weight",
                         "encoder.patch_embed.proj.bias"]
    assert {n.split(".")[0] for n in names} == {"encoder", "head", "id_head"}
    assert model.head.weight.std() < 1e-4 and not model.head.bias.any()


def test_no_identity_head_without_lambda():
    model = FineTuneModel(tiny(), num_outputs=8, num_subjects=5, lambda_id=0.0)
    assert model.id_head is None and not any("id_head" in k for k in model.state_dict())
    logits, id_logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 8) and id_logits is None


def test_grad_reverse_scales_the_gradient_by_minus_lambda():
    x = torch.randn(4, 7, requires_grad=True)
    g = torch.randn(4, 7)
    y = grad_reverse(x, 0.3)
    torch.testing.assert_close(y, x)
    y.backward(g)
    torch.testing.assert_close(x.grad, -0.3 * g)


def test_identity_loss_reaches_the_encoder_reversed():
    lam = 0.7
    model = FineTuneModel(tiny(), num_outputs=4, num_subjects=6, lambda_id=lam).eval()
    plain = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)

    _, id_logits = model(x)
    id_logits.square().sum().backward()
    plain.id_head(pooled_features(plain.encoder, x)).square().sum().backward()  # same, no reversal

    for (name, p), q in zip(model.encoder.named_parameters(), plain.encoder.parameters()):
        torch.testing.assert_close(p.grad, -lam * q.grad, rtol=1e-4, atol=1e-8, msg=name)
    torch.testing.assert_close(model.id_head.weight.grad, plain.id_head.weight.grad)  # the head itself learns normally
    assert model.head.weight.grad is None


@pytest.mark.parametrize("depth", [2, 3])
def test_the_ablations_mlp_identity_head_sits_behind_the_same_reversal(depth):
    """id_head_depth 2 or 3: that many linear layers (GELU between, hidden width = the encoder's), its
    output layer drawn as the linear head's; the encoder's gradient from it is reversed and scaled by λ."""
    lam = 0.5
    model = FineTuneModel(tiny(), num_outputs=4, num_subjects=6, lambda_id=lam, id_head_depth=depth).eval()
    linears = [m for m in model.id_head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(96, 96)] * (depth - 1) + [(96, 6)]
    assert float(linears[-1].weight.detach().std()) < 1e-4 < float(linears[0].weight.detach().std())
    plain = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    model(x)[1].square().sum().backward()
    plain.id_head(pooled_features(plain.encoder, x)).square().sum().backward()
    for p, q in zip(model.encoder.parameters(), plain.encoder.parameters()):
        torch.testing.assert_close(p.grad, -lam * q.grad, rtol=1e-4, atol=1e-10)
    with pytest.raises(ValueError, match="id_head_depth"):
        FineTuneModel(tiny(), num_outputs=4, num_subjects=6, lambda_id=lam, id_head_depth=4)


def test_identity_probe_trains_only_its_bias_free_layer():
    probe = IdentityProbe(tiny(drop_path=0.5), num_subjects=5)
    assert probe.head.bias is None
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    probe.train()
    assert probe.training and not probe.encoder.training  # stays in eval: no drop-path
    x = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(probe(x), probe(x))

    before = copy.deepcopy(probe.state_dict())
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(probe(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert all(p.grad is None for p in probe.encoder.parameters())
    after = probe.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("encoder."))
    assert not torch.equal(before["head.weight"], after["head.weight"])


# --- checkpoints -------------------------------------------------------------------------------
def mae_pretrain_state(img_size: int = 32, **arch) -> dict[str, torch.Tensor]:
    """What MAE's pretraining saves: bare encoder keys (with `norm`), decoder keys, mask_token."""
    if arch:
        enc = VisionTransformer(img_size=img_size, patch_size=8, num_classes=0, global_pool="token",
                                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                **{"embed_dim": 96, "depth": 4, "num_heads": 3, **arch})
    else:
        enc = tiny(img_size, global_pool=False)
    state = dict(enc.state_dict())
    state.update({
        "mask_token": torch.randn(1, 1, 64),
        "decoder_embed.weight": torch.randn(64, 96), "decoder_embed.bias": torch.randn(64),
        "decoder_pos_embed": torch.randn(1, 1 + (img_size // 8) ** 2, 64),
        "decoder_blocks.0.norm1.weight": torch.randn(64), "decoder_blocks.0.attn.qkv.weight": torch.randn(192, 64),
        "decoder_norm.weight": torch.randn(64), "decoder_pred.weight": torch.randn(192, 64),
    })
    return state


def test_official_mae_checkpoint_loads_into_a_fine_tune_model(tmp_path):
    state = mae_pretrain_state(img_size=32)                     # 4x4 patch grid
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 799}, path)

    model = FineTuneModel(tiny(64), num_outputs=12)               # 8x8 patch grid
    head_before = model.head.weight.clone()
    report = load_pretrained(model, path)

    got = model.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.bias", "patch_embed.proj.weight", "cls_token"):
        assert torch.equal(got[f"encoder.{key}"], state[key]), key
    pos = state["pos_embed"]
    grid = pos[:, 1:].reshape(1, 4, 4, 96).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 64, 96)], 1)
    torch.testing.assert_close(got["encoder.pos_embed"], expected)
    assert report.pos_embed == "4x4 -> 8x8"

    assert torch.equal(model.head.weight, head_before)
    assert sorted(report.missing) == ["encoder.fc_norm.bias", "encoder.fc_norm.weight", "head.bias", "head.weight"]
    assert not report.unexpected
    assert {"norm.weight", "norm.bias", "mask_token", "decoder_embed.weight", "decoder_pos_embed",
            "decoder_blocks.0.attn.qkv.weight", "decoder_pred.weight"} <= set(report.dropped)
    assert "decoder_blocks.* (2)" in str(report) and "4x4 -> 8x8" in str(report)


def test_wrapper_prefixes_are_stripped_at_any_nesting():
    model_state = FineTuneModel(tiny(), 3).state_dict()
    state = {"module._orig_mod.cls_token": torch.zeros(1, 1, 96),
             "_orig_mod.module.encoder.blocks.0.norm1.weight": torch.zeros(96)}
    filtered, dropped = filter_state_dict(state, model_state)
    assert set(filtered) == {"encoder.cls_token", "encoder.blocks.0.norm1.weight"} and not dropped


@pytest.mark.parametrize("arch, needle", [
    ({"depth": 6}, "unexpected weights (blocks.4."),
    ({"depth": 3}, "encoder weights missing (blocks.3."),
    ({"embed_dim": 128, "num_heads": 4}, "weights of another shape"),
])
def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, arch, needle):
    path = tmp_path / "other.pth"
    torch.save({"model": mae_pretrain_state(img_size=64, **arch)}, path)
    model = FineTuneModel(tiny(), num_outputs=12)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(FmaeError) as err:
        load_pretrained(model, path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: not a vit_tiny checkpoint")
    assert needle in msg and "pick the --model" in msg and "(it holds a ViT with patch 8" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_mae_fine_tuned_checkpoint_keeps_fc_norm_and_drops_the_imagenet_head(tmp_path):
    enc = tiny()
    state = {**enc.state_dict(), "head.weight": torch.randn(1000, 96), "head.bias": torch.randn(1000)}
    path = tmp_path / "mae_finetuned.pth"
    torch.save({"model": state}, path)
    model = FineTuneModel(tiny(), num_outputs=12)
    report = load_pretrained(model, path)
    assert torch.equal(model.encoder.fc_norm.weight, enc.fc_norm.weight)
    assert sorted(report.dropped) == sorted(report.missing) == ["head.bias", "head.weight"]


def test_own_checkpoint_head_is_dropped_when_the_output_count_differs(tmp_path):
    source = FineTuneModel(tiny(), num_outputs=12, num_subjects=4, lambda_id=1.0)
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": source.state_dict(), "epoch": 3})

    other = FineTuneModel(tiny(), num_outputs=8)
    head_before = other.head.weight.clone()
    report = load_pretrained(other, path)
    assert torch.equal(other.head.weight, head_before)
    assert {"head.weight", "head.bias", "id_head.weight", "id_head.bias"} == set(report.dropped)
    assert torch.equal(other.encoder.blocks[2].attn.proj.weight, source.encoder.blocks[2].attn.proj.weight)

    same = FineTuneModel(tiny(), num_outputs=12)
    load_pretrained(same, path)
    assert torch.equal(same.head.weight, source.head.weight)

    probe = IdentityProbe(tiny(), num_subjects=12)  # same head shape as the AU head: still not loaded
    probe_head = probe.head.weight.clone()
    load_pretrained(probe, path)
    assert torch.equal(probe.head.weight, probe_head)
    assert torch.equal(probe.encoder.pos_embed, source.encoder.pos_embed)


def test_a_bare_encoder_loads_an_fmae_fine_tuned_checkpoint(tmp_path):
    source = FineTuneModel(tiny(), num_outputs=12)
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": source.state_dict()})
    enc = tiny()
    report = load_pretrained(enc, path)
    assert torch.equal(enc.blocks[1].mlp.fc1.weight, source.encoder.blocks[1].mlp.fc1.weight)
    assert set(report.dropped) == {"head.weight", "head.bias"} and not report.missing


def test_save_checkpoint_round_trips_under_weights_only(tmp_path):
    model = FineTuneModel(tiny(), num_outputs=3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 64, 64))[0].sum().backward()
    opt.step()
    import random
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2, "best": {"value": None},
               "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
               "config": {"model": "vit_tiny", "blr": 1e-3, "folds": [1, 2]}}
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, payload)
    assert os.listdir(path.parent) == ["last.pt"]  # no temp file left behind

    back = read_checkpoint(path)  # weights_only=True
    assert back["epoch"] == 2 and back["config"] == payload["config"] and back["rng"]["python"] == random.getstate()
    assert all(torch.equal(v, back["model"][k]) for k, v in payload["model"].items())
    assert extract_state_dict(back).keys() == payload["model"].keys()
    opt.load_state_dict(back["optimizer"])


@pytest.mark.parametrize("bad", [np.float64(0.5), np.zeros(2), pytest.param(os.path, id="module")])
def test_save_checkpoint_refuses_what_weights_only_could_not_load(tmp_path, bad):
    with pytest.raises(TypeError, match=r"payload\['best'\]\['value'\]"):
        save_checkpoint(tmp_path / "x.pt", {"best": {"value": bad}})
    assert os.listdir(tmp_path) == []


# --- unreadable and hostile files --------------------------------------------------------------
def test_missing_file_or_folder(tmp_path):
    with pytest.raises(FmaeError, match="nope.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FmaeError, match="is a folder"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint at all",
                      "empty": b""}[damage])
    with pytest.raises(FmaeError, match=r"ckpt.pt: not a readable checkpoint \(truncated or corrupt\)"):
        load_pretrained(FineTuneModel(tiny(), 3), path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": {"cls_token": torch.zeros(1)}, "extra": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=int(writer[-1]))
    # protocol 5 fails on an opcode weights_only does not read before it reaches the code: refused too
    why = "a raw pickle" if writer.endswith("5") else "the file holds Python objects other than weights"
    with pytest.raises(FmaeError, match=f"evil.pth: refused: {why}.*torch.save\\(state_dict\\)"):
        read_checkpoint(path)
    assert not marker.exists()


def test_mae_training_args_namespace_is_allowed(tmp_path):
    import argparse
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": mae_pretrain_state(), "args": argparse.Namespace(model="mae_vit_tiny", blr=1.5e-4)}, path)
    assert read_checkpoint(path)["args"].blr == 1.5e-4


def test_checkpoint_without_weights(tmp_path):
    path = tmp_path / "opt_only.pt"
    torch.save({"optimizer": {"lr": 1.0}, "epoch": 3}, path)
    with pytest.raises(FmaeError, match="opt_only.pt: holds no model weights .*found optimizer, epoch"):
        load_pretrained(FineTuneModel(tiny(), 3), path)


def test_the_refusal_names_the_checkpoint_architecture(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"model": mae_pretrain_state(img_size=32)}, path)
    with torch.device("meta"):
        model = FineTuneModel(create_encoder("vit_small", img_size=32), num_outputs=12)
    with pytest.raises(FmaeError, match=r"not a vit_small checkpoint \(it holds a vit_tiny\) — 96 encoder weights"):
        load_pretrained(model, path)
