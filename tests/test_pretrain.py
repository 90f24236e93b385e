"""MAE pretraining through the real CLI: the chain synth → LMDB store → pretrain → fine-tune from it
(λ = 0 and λ > 0) → identity probe, `visualize`, and the 2-process DDP path."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import assert_one_line_error, run_fmae
from fmae.run_spec import flatten

MAE_TINY = ["--model", "vit_tiny", "--batch-size", "8", "--decoder-depth", "1", "--decoder-dim", "64",
            "--decoder-heads", "4", "--set", "input_size=32", "--set", "num_workers=0", "--set", "log_every=1"]
FT_TINY = ["--model", "vit_tiny", "--batch-size", "8", "--set", "input_size=32", "--set", "num_workers=0",
           "--epochs", "1"]


def only_run(runs: Path) -> Path:
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_paper_pipeline_in_one_chain(make_synth, tmp_path):
    bp4d, rafdb = make_synth("bp4d"), make_synth("rafdb")
    store = tmp_path / "faces.lmdb"
    packed = run_fmae("data", "lmdb", bp4d, "--out", store)
    assert packed.returncode == 0, packed.stderr

    pre = run_fmae("pretrain", "--data", store, "--data", rafdb / "train", *MAE_TINY, "--epochs", "2",
                   "--runs-dir", tmp_path / "pre")
    assert pre.returncode == 0, pre.stderr
    run = only_run(tmp_path / "pre")
    assert "-pretrain-mix-s0-vit_tiny-" in run.name
    cfg = flatten(tomllib.loads((run / "run.toml").read_text())["config"])
    assert (cfg["task"], cfg["mask_ratio"], cfg["blr"], cfg["betas"], cfg["norm_pix_loss"]) == (
        "pretrain", 0.75, 1.5e-4, [0.9, 0.95], True)
    n_images = 48 + len(list((rafdb / "train").rglob("*.jpg")))
    train = [r for r in lines(run) if r["split"] == "train"]
    assert len(train) == 2 * (n_images // 8) and all(np.isfinite(r["loss"]) for r in train)
    assert [r["epoch"] for r in lines(run) if r["split"] == "train_epoch"] == [1, 2]
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "loss" and summary["last"]["epoch"] == 2
    for e in (1, 2):
        with Image.open(run / "predictions" / f"reconstructions-e00{e}.png") as png:
            assert png.width > 4 * 64 and png.height > 8 * 64  # 4 columns × 8 rows at 2× scale
    import torch

    ckpt = torch.load(run / "checkpoints" / "pretrained.pth", weights_only=True)
    assert "decoder_embed.weight" in ckpt["model"] and "blocks.0.attn.qkv.weight" in ckpt["model"]

    probes = {}
    for lam in ("0", "0.5"):
        ft_runs = tmp_path / f"ft{lam}"
        ft = run_fmae("train", "bp4d", "--fold", "1", "--root", bp4d, "--labels", bp4d / "labels.jsonl",
                      "--init", run / "checkpoints" / "pretrained.pth", "--lambda-id", lam, *FT_TINY,
                      "--runs-dir", ft_runs)
        assert ft.returncode == 0, ft.stderr
        ft_run = only_run(ft_runs)
        assert "loaded" in (ft_run / "train.log").read_text()
        probe = run_fmae("probe-id", ft_run, "--dataset", "bp4d", "--root", bp4d, "--labels", bp4d / "labels.jsonl",
                         "--set", "batch_size=8", "--set", "num_workers=0", "--epochs", "1",
                         "--runs-dir", tmp_path / f"probe{lam}")
        assert probe.returncode == 0, probe.stderr
        probes[lam] = json.loads((only_run(tmp_path / f"probe{lam}") / "summary.json").read_text())["best"]["accuracy"]
    assert all(0.0 <= a <= 1.0 for a in probes.values())

    grid = tmp_path / "grid.png"
    shown = run_fmae("visualize", run, bp4d / "2F01_T1", "--out", grid, "--seed", "3")
    assert shown.returncode == 0, shown.stderr
    with Image.open(grid) as png:
        assert png.width > 4 * 64
    again = tmp_path / "again.png"
    assert run_fmae("visualize", run, bp4d / "2F01_T1", "--out", again, "--seed", "3").returncode == 0
    assert grid.read_bytes() == again.read_bytes()  # the same seed draws the same masks

    refused = run_fmae("visualize", ft_run, bp4d / "2F01_T1", "--out", tmp_path / "x.png")
    assert_one_line_error(refused, "has no decoder")


def test_pretraining_under_torchrun_with_two_processes(make_synth, tmp_path):
    root = make_synth("rafdb")
    result = run_fmae("pretrain", "--data", root / "train", *MAE_TINY, "--epochs", "1", "--nproc", "2",
                      "--runs-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    n = len(list((root / "train").rglob("*.jpg")))
    train = [r for r in lines(run) if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, n // 16 + 1))  # rank 0 writes; global batch 2 × 8
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert (run / "checkpoints" / "pretrained.pth").is_file()


def test_pretrain_bad_input(tmp_path):
    assert_one_line_error(run_fmae("pretrain", "--data", tmp_path / "nope", "--model", "vit_tiny",
                                   "--runs-dir", tmp_path / "r"), "no such store or folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_fmae("pretrain", "--data", tmp_path / "empty", "--model", "vit_tiny", "--set",
                                   "mask_ratio=1.5", "--runs-dir", tmp_path / "r"), "mask_ratio")
