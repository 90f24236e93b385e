"""The newcomer's first run is defined once (fmae.recipes.DEMO_RUN and the demo recipe) and the README's first
`fmae train` line and the app's ctrl+t in Launch both take it from there.

The demo fine-tunes from an MAE-pretrained vit_tiny shipped in the package (`init = "fmae:vit_tiny_mae_synth"`,
made by bench/demo_init.py) at 32 px on the built-in fmae.toml's bp4d copy (nuisance below the benchmarks' 1).
Whether it learns (AUC >= 0.70 on the unseen subjects, F1@0.5 above the all-positive F1, within 3 minutes on 2
CPU cores) is measured by bench/demo_calibration.py, not here: that takes minutes. What is checked here is the
demo's shape, and that the calibration record is of the settings fmae ships."""

from __future__ import annotations

import shlex

from conftest import REPO
from fmae.recipes import DEMO_RUN, finetune_recipe, recipe_names
from fmae.registry import DATASETS
from fmae.run_config import config_warnings


def first_train_line() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = readme.split("## A short tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    line = next(x for x in block.splitlines() if x.startswith("fmae train "))
    return shlex.split(line.partition("#")[0])


def test_the_readmes_first_train_line_is_the_demo_plan():
    argv = first_train_line()
    assert argv == ["fmae", "train", DEMO_RUN["dataset"], "--fold", str(DEMO_RUN["fold"]), "--model",
                    DEMO_RUN["model"], "--recipe", DEMO_RUN["recipe"]]


def test_every_dataset_has_the_demo_recipe_and_it_warns_of_nothing():
    for name in DATASETS:
        assert recipe_names(name)[-1] == DEMO_RUN["recipe"]
        recipe = finetune_recipe(name, DEMO_RUN["recipe"])
        # the paper's 2-epoch warmup would cover a short run whole: the demo has none
        assert recipe["warmup_epochs"] == 0 and config_warnings(recipe) == []
        assert recipe["lambda_id"] == DEMO_RUN["lambda_id"] == 0.0


def test_the_readmes_demo_line_resolves_to_the_demo_recipe(tmp_path):
    from conftest import run_fmae

    result = run_fmae(*first_train_line()[1:], "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 3}
    assert "recipe bp4d/demo" in rows["warmup_epochs"] and " 0 " in rows["warmup_epochs"]
    # the recipe's own 32 px, above vit_tiny's 64 (a third of the time a step: bench/results/demo_calibration-*)
    size = str(finetune_recipe("bp4d", "demo")["input_size"])
    assert "vit_tiny" in rows["model"] and f" {size} " in rows["input_size"] and "recipe bp4d/demo" in rows["input_size"]


async def test_ctrl_t_in_launch_fills_the_demo_plan(tmp_path):
    from textual.widgets import Input, Select

    from fmae.config import default_config_text
    from fmae_tui.app import create_app
    from fmae_tui.screens.launch import LaunchScreen
    from tui_support import wait_until

    (tmp_path / "fmae.toml").write_text(default_config_text())
    app = create_app(tmp_path / "fmae.toml", tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen.previews > 0, what="launch")
        launch = app.screen
        previews = launch.previews
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: launch.previews > previews, what="try-it preview")
        await pilot.pause(0.5)  # a refill from a recipe change would land here
        assert launch.query_one("#recipe", Select).value == DEMO_RUN["recipe"]
        assert launch.query_one("#model", Select).value == DEMO_RUN["model"]
        assert launch.query_one("#epochs", Input).value == str(finetune_recipe("bp4d", "demo")["epochs"])
        assert launch.query_one("#folds", Input).value == str(DEMO_RUN["fold"])
        assert launch.query_one("#seeds", Input).value == str(DEMO_RUN["seed"])
        assert launch.query_one("#lambdas", Input).value == "0"


def test_the_demo_fine_tunes_from_the_packaged_mae_encoder(tmp_path):
    from conftest import run_fmae
    from fmae.models import FineTuneModel, create_encoder, load_pretrained
    from fmae.models.checkpoint import read_checkpoint

    result = run_fmae(*first_train_line()[1:], "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.count("│") >= 3 and line.split("│")[1].strip() == "init")
    asset = REPO / "fmae" / "assets" / "vit_tiny_mae_synth.pth"
    assert "recipe bp4d/demo" in row and "vit_tiny_mae_synth" in row
    ckpt = read_checkpoint(asset)  # weights_only: the one loader every run uses
    assert ckpt["model"] and all(str(t.dtype) == "torch.float16" for t in ckpt["model"].values())
    assert not any(k.startswith("decoder") for k in ckpt["model"])  # the encoder only: ~1 MB in the package
    assert asset.stat().st_size < 3e6
    model = FineTuneModel(create_encoder("vit_tiny", img_size=finetune_recipe("bp4d", "demo")["input_size"]), 12)
    report = load_pretrained(model, asset)
    assert report.loaded > 40 and not [k for k in report.missing if k.startswith("encoder.blocks")]


def test_an_unknown_packaged_init_is_a_one_line_error(tmp_path):
    from conftest import run_fmae

    result = run_fmae("train", "bp4d", "--fold", "1", "--model", "vit_tiny", "--recipe", "demo",
                      "--set", "init=fmae:nope", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "fmae:nope" in err and "fmae:vit_tiny_mae_synth" in err


def test_the_calibration_record_is_of_the_demo_fmae_ships():
    """The built-in fmae.toml's demo copy takes less nuisance than the benchmarks' 1, and the calibration result
    (bench/demo_calibration.py) names the data and the recipe values the demo resolves to now, so the record
    cannot silently describe another demo."""
    from fmae.config import default_config_text, parse_project

    data = parse_project(default_config_text(), "fmae.toml", REPO).dataset(DEMO_RUN["dataset"]).synthetic
    assert data is not None and 0 <= data.nuisance < 1 and data.size >= finetune_recipe("bp4d", "demo")["input_size"]
    record = (REPO / "bench" / "results" / "demo_calibration-x86_64-2cpu.md").read_text()
    assert (f"{data.subjects} subjects × {data.frames} frames, {data.size} px, identity strength "
            f"{data.identity_strength:g}, nuisance {data.nuisance:g}, seed {data.seed}") in record
    recipe = finetune_recipe(DEMO_RUN["dataset"], DEMO_RUN["recipe"])
    for key in ("blr", "batch_size", "epochs", "input_size", "init"):
        assert f"{key} {recipe[key]!r}" in record, key
    assert "| the demo |" in record and "quiet-machine bound" in record
