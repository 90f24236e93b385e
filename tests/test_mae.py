"""The MAE model: masking, the loss on removed patches only, norm-pix targets, the official key layout."""

from __future__ import annotations

import pytest
import torch

from fmae.models.checkpoint import load_pretrained, save_checkpoint
from fmae.models.encoders import create_encoder
from fmae.models.heads import FineTuneModel
from fmae.models.mae import MaskedAutoencoder, sincos_pos_embed


@pytest.fixture(scope="module")
def mae() -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder("vit_tiny", img_size=32, decoder_dim=64, decoder_depth=1, decoder_heads=4)


def test_masking_keeps_a_quarter_of_the_patches(mae):
    x = torch.randn(3, 16, 8)
    kept, mask, ids_restore = mae.random_masking(x, 0.75)
    assert kept.shape == (3, 4, 8) and mask.shape == (3, 16)
    assert (mask.sum(1) == 12).all()
    for b in range(3):  # the kept tokens are exactly the unmasked ones
        visible = x[b][mask[b] == 0]
        assert sorted(map(tuple, visible.tolist())) == sorted(map(tuple, kept[b].tolist()))
    assert torch.equal(torch.sort(ids_restore, 1).values, torch.arange(16).expand(3, 16))


def test_loss_counts_only_removed_patches_with_norm_pix_targets(mae):
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    loss, pred, mask = mae(imgs, mask_ratio=0.75, noise=noise)
    target = mae.patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)
    assert loss.item() == pytest.approx((per_patch[mask == 1]).mean().item(), rel=1e-5)
    # Changing the prediction of a visible patch cannot change the loss.
    visible = (mask[0] == 0).nonzero()[0, 0]
    pred2 = pred.clone()
    pred2[0, visible] += 100
    assert mae.loss(imgs, pred2, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    # The encoder saw only the visible quarter (+ cls).
    latent, _, _ = mae.forward_encoder(imgs, 0.75, noise)
    assert latent.shape == (2, 1 + 4, 96)


def test_patchify_round_trip(mae):
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(imgs)), imgs)


def test_key_layout_is_the_official_one_and_loads_into_fine_tuning(mae, tmp_path):
    keys = set(mae.state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight",
            "mask_token", "decoder_embed.weight", "decoder_pos_embed", "decoder_blocks.0.mlp.fc1.weight",
            "decoder_norm.weight", "decoder_pred.weight"} <= keys
    assert not any(k.startswith("encoder.") for k in keys)
    assert torch.allclose(mae.pos_embed[0], torch.from_numpy(sincos_pos_embed(96, 4)).float())
    path = tmp_path / "pretrained.pth"
    save_checkpoint(path, {"model": mae.state_dict(), "epoch": 1})
    ft = FineTuneModel(create_encoder("vit_tiny", img_size=64), 12)
    report = load_pretrained(ft, path)
    assert torch.equal(ft.encoder.blocks[3].mlp.fc2.weight, mae.blocks[3].mlp.fc2.weight)
    assert ft.encoder.pos_embed.shape == (1, 65, 96)  # interpolated 4×4 → 8×8 (+ cls)
    assert "4x4" in str(report)
