"""Every checkpoint layout the original FMAE / FMAE-IAT code writes loads into fmae (MAE pretraining,
FMAE fine-tuned, FMAE-IAT fine-tuned with its `ID_head`, each in the full `misc.save_model` dict with
an `argparse.Namespace`), through `fmae train --init` and `fmae probe-id`, saying in one line what was
loaded, renamed, dropped and not read; the head is re-drawn after loading, as the original does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_fmae
from fmae.errors import FmaeError
from fmae.models import FineTuneModel, IdentityProbe, create_encoder, load_pretrained, read_checkpoint
from original_checkpoints import BP4D_AUS, BP4D_SUBJECTS, SMALL, save_like_original

RUN = ["--model", "vit_tiny", "--set", "input_size=32", "--set", "num_workers=0", "--set", "batch_size=8",
       "--epochs", "1"]


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    folder = tmp_path_factory.mktemp("original")
    return {layout: (folder / f"{layout}.pth", save_like_original(folder / f"{layout}.pth", layout, seed=i))
            for i, layout in enumerate(("pretrain", "fmae", "fmae_iat"))}


def _tiny(size: int = 32):
    return create_encoder("vit_tiny", img_size=size)


def _encoder_equal(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    got = model.state_dict()
    prefix = "encoder." if "encoder.cls_token" in got else ""
    blocks = [k for k in state if k.startswith(("blocks.", "patch_embed.")) or k == "cls_token"]
    return bool(blocks) and all(torch.equal(got[prefix + k], state[k]) for k in blocks)


@pytest.mark.parametrize("layout, model, kept, dropped", [
    ("pretrain", "au", [], ["norm.* (2)", "mask_token", "decoder_blocks.* (12)", "decoder_pred.* (2)"]),
    ("fmae", "au", ["head"], []),
    ("fmae_iat", "au", ["head"], ["ID_head.* (2)"]),
    ("fmae_iat", "iat", ["head", "id_head"], []),
    ("fmae_iat", "probe", [], ["head.* (2)", "ID_head.* (2)"]),
])
def test_every_original_layout_loads(originals, layout, model, kept, dropped):
    path, state = originals[layout]
    net = {"au": lambda: FineTuneModel(_tiny(64), BP4D_AUS),
           "iat": lambda: FineTuneModel(_tiny(64), BP4D_AUS, BP4D_SUBJECTS, lambda_id=2.0),
           "probe": lambda: IdentityProbe(_tiny(64), BP4D_SUBJECTS)}[model]()
    report = load_pretrained(net, path)
    line = str(report)
    assert _encoder_equal(net, state) and torch.equal(net.encoder.pos_embed, state["pos_embed"])
    if layout != "pretrain":
        assert torch.equal(net.encoder.fc_norm.weight, state["fc_norm.weight"])
    for head in kept:
        original = "ID_head" if head == "id_head" else head
        assert torch.equal(getattr(net, head).weight, state[f"{original}.weight"])
    assert ("renamed ID_head.* -> id_head.* (2)" in line) == ("id_head" in kept)
    for name in dropped:
        assert name in line.split("dropped from the checkpoint: ")[1], line
    assert line.endswith("not read: optimizer, epoch, scaler, args") and "\n" not in line
    assert read_checkpoint(path)["args"].blr > 0  # the Namespace itself, under weights_only


def _au_config(tmp_path: Path, init: Path, **cli):
    from fmae.config import load_project
    from fmae.run_config import resolve_run_config

    resolved = resolve_run_config(load_project(cwd=tmp_path), "bp4d", fold=1, root=tmp_path,
                                  labels=tmp_path / "labels.jsonl", generate=False,
                                  cli={"model": "vit_tiny", "input_size": 32, "init": str(init), **cli})
    return resolved.values


def test_the_head_is_redrawn_after_loading_as_the_original(originals, tmp_path, caplog):
    """head_init = "redraw" (the paper's recipes): head.weight drawn again (trunc_normal std 2e-5) even
    though the checkpoint's head fits; its bias and the identity head keep what was loaded. "keep" keeps it."""
    from fmae.train.tasks import make_task

    path, state = originals["fmae_iat"]
    values = _au_config(tmp_path, path, lambda_id=2.0)
    assert values["head_init"] == "redraw"
    with caplog.at_level("INFO", logger="fmae.train"):
        model, _ = make_task(values).build_model()
    assert not torch.equal(model.head.weight, state["head.weight"])
    assert model.head.weight.std().item() < 1e-4 < state["head.weight"].std().item()  # std 2e-5 vs 0.02
    assert torch.equal(model.head.bias, state["head.bias"]) and torch.equal(model.id_head.weight, state["ID_head.weight"])
    assert "head.weight re-drawn (trunc_normal, std 2e-5; head_init = redraw)" in caplog.text

    kept, _ = make_task(_au_config(tmp_path, path, lambda_id=2.0, head_init="keep")).build_model()
    assert torch.equal(kept.head.weight, state["head.weight"])
    old = {k: v for k, v in values.items() if k != "head_init"}  # a run.toml from before the key kept it
    assert torch.equal(make_task(old).build_model()[0].head.weight, state["head.weight"])


def _loaded_line(run: Path) -> str:
    lines = [line for line in (run / "train.log").read_text().splitlines() if " INFO loaded " in line]
    assert len(lines) == 1, lines
    return lines[0]


def _only_run(runs: Path, stdout: str) -> Path:
    run_id = re.search(r"^run (\S+)$", stdout, re.M).group(1)
    return runs / run_id


def test_an_iat_checkpoint_fine_tunes_and_is_probed_through_the_cli(originals, make_synth, tmp_path):
    """The issue's case: `fmae train --init` and `fmae probe-id` of an FMAE-IAT checkpoint used to stop
    with "not a vit_tiny checkpoint (it holds a vit_tiny) — 2 unexpected weights (ID_head.weight, …)"."""
    root = make_synth("bp4d")
    path, state = originals["fmae_iat"]
    runs = tmp_path / "runs"
    data = ["--root", root, "--labels", root / "labels.jsonl", "--runs-dir", runs]

    made = run_fmae("train", "bp4d", "--fold", "1", "--lambda-id", "0.5", "--init", path, *RUN, *data)
    assert made.returncode == 0, made.stderr
    run = _only_run(runs, made.stdout)
    line = _loaded_line(run)
    assert f"loaded {path}: 58 weights loaded; renamed ID_head.* -> id_head.* (2); pos_embed resampled 8x8 -> 4x4; " \
           "not read: optimizer, epoch, scaler, args; head.weight re-drawn" in line
    trained = read_checkpoint(run / "checkpoints" / "last.pt")["model"]
    # one epoch at a warmup lr of ~5e-6 moves a weight by far less than 1e-3: these are the loaded ones
    assert (trained["id_head.weight"] - state["ID_head.weight"]).abs().max() < 1e-3
    assert (trained["encoder.blocks.2.mlp.fc1.weight"] - state["blocks.2.mlp.fc1.weight"]).abs().max() < 1e-3
    assert trained["head.weight"].abs().max() < 1e-3 < state["head.weight"].abs().max()  # re-drawn

    probed = run_fmae("probe-id", path, "--dataset", "bp4d", *RUN, *data)
    assert probed.returncode == 0, probed.stderr
    assert "identity probe top-1 accuracy" in probed.stdout
    probe_run = _only_run(runs, probed.stdout)
    line = _loaded_line(probe_run)
    assert "54 weights loaded" in line and "dropped from the checkpoint: head.* (2), ID_head.* (2)" in line
    assert "re-drawn" not in line  # the probe's own head always starts fresh
    frozen = read_checkpoint(probe_run / "checkpoints" / "last.pt")["model"]
    assert torch.equal(frozen["encoder.blocks.3.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])


def test_a_checkpoint_of_another_size_is_refused_naming_both(tmp_path, make_synth):
    root = make_synth("bp4d")
    path = tmp_path / "vit_small_fmae.pth"
    save_like_original(path, "fmae", img_size=64, light=True, **SMALL)
    refused = run_fmae("train", "bp4d", "--fold", "1", "--init", path, *RUN, "--root", root,
                       "--labels", root / "labels.jsonl", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(refused, f"{path}: not a vit_tiny checkpoint (it holds a vit_small)",
                          "pick the --model the checkpoint was trained with (--model vit_small)")


def test_a_refusal_of_the_right_size_does_not_contradict_itself(tmp_path):
    """Weights that do not fit although the encoder is the expected size: said so, not "not a vit_tiny
    checkpoint (it holds a vit_tiny)"."""
    path = tmp_path / "extra.pth"
    state = save_like_original(path, "fmae")
    torch.save({"model": {**state, "aux_head.weight": torch.zeros(3, 96)}}, path)
    with pytest.raises(FmaeError) as err:
        load_pretrained(FineTuneModel(_tiny(), BP4D_AUS), path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: holds a vit_tiny encoder, as this model expects, but its weights do not fit")
    assert "1 unexpected weight (aux_head.weight)" in msg and "not a vit_tiny" not in msg
