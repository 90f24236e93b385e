"""fmae.run_speed: the images/s past runs measured (same model, input size and device only), the train
split's size read from the labels, and a study's training time from both — checked by hand arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmae.config import DatasetLocation
from fmae.data.au_labels import load_au_fold
from fmae.data.problems import Problems
from fmae.registry import get_dataset
from fmae.run_speed import duration, estimate, past_speed, train_images
from test_report import au_config, new_run


def past_run(runs: Path, rates: list[float], fold: int = 1, device: str = "cpu", **extra):
    run = new_run(runs, au_config(fold, 0, input_size=64, device=device, **extra), "done")
    for step, rate in enumerate(rates, start=1):
        run.append_metrics({"split": "train", "epoch": 1, "step": step, "loss": 0.6, "images_per_s": rate})
    run.append_metrics({"split": "test", "epoch": 1, "f1_best_mean": 0.4})  # no speed in it
    return run


def test_past_speed_is_the_median_of_matching_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    a = past_run(runs, [100.0, 300.0, 200.0])  # median 200
    b = past_run(runs, [400.0])
    past_run(runs, [9999.0], device="cuda")  # another device
    past_run(runs, [1.0], fold=2)  # same model and size: counts
    new_run(runs, au_config(1, 0, input_size=32, device="cpu"), "done").append_metrics(
        {"split": "train", "images_per_s": 5.0})  # another input size
    speed = past_speed(runs, "vit_tiny", "cpu", 64)
    assert speed is not None and speed.images_per_s == 200.0  # median of 200, 400, 1
    assert a.id in speed.runs and b.id in speed.runs and len(speed.runs) == 3
    assert past_speed(runs, "vit_tiny", "cuda", 64).images_per_s == 9999.0
    assert past_speed(runs, "vit_base", "cpu", 64) is None
    assert "200 images/s, the median of 3 past vit_tiny runs at 64 px on cpu" in speed.describe()
    # device = auto: the device the trainer says it used, in train.log
    auto = past_run(runs, [777.0], device="auto")
    (auto.path / "train.log").write_text("2026-12-01 INFO lr = blr 0.0005 × batch 64 × accum 1 × 1 process(es) / 256 "
                                         "= 0.000125; 9 steps/epoch × 2 epochs; device cuda:0, precision bf16\n")
    assert past_speed(runs, "vit_tiny", "cuda", 64).images_per_s == (777.0 + 9999.0) / 2


def test_estimate_is_epochs_times_whole_batches_over_the_speed_plus_each_runs_overhead(tmp_path: Path,
                                                                                       make_synth) -> None:
    root = make_synth("bp4d")
    spec = get_dataset("bp4d")
    runs = tmp_path / "runs"
    past = past_run(runs, [50.0], batch_size=10)
    # 30 steps of 10 images at 50 images/s = 6 s of its 20 s: 14 s of start-up and evaluation
    past.update_status(started="2026-01-01T00:00:00.000Z", ended="2026-01-01T00:00:20.000Z", total_steps=30)
    loc = DatasetLocation("bp4d", root, None, str(root / "fold{fold}_train.jsonl"),
                          str(root / "fold{fold}_test.jsonl"))
    cells = []
    for fold in (1, 2):
        cell = {**au_config(fold, 0, input_size=64, epochs=3, batch_size=4), "data_root": str(root),
                "train_labels": loc.train_labels, "test_labels": loc.test_labels}
        cells.append(cell)
    sizes = [len(load_au_fold(spec, loc, f, Problems()).train) for f in (1, 2)]
    assert [train_images(c) for c in cells] == sizes
    found = estimate(runs, cells, "cpu")
    assert found.speed.overhead_s == pytest.approx(14.0)
    want = [3 * (n // 4) * 4 / 50.0 + 14.0 for n in sizes]
    assert found.per_run == pytest.approx(want) and found.seconds == pytest.approx(sum(want))
    assert found.text() == (f"≈ {duration(sum(want))} for 2 runs one after another: training at 50 images/s, the "
                            "median of 1 past vit_tiny run at 64 px on cpu + 14 s a run for start-up and evaluation")
    assert estimate(runs, cells, "cuda").text() == "no past run of vit_tiny at 64 px on cuda to estimate from"
    gone = {**cells[0], "data_root": str(tmp_path / "not-made-yet")}
    assert "not there yet" in estimate(runs, [gone], "cpu").text()


def test_run_speed_does_not_import_torch(tmp_path: Path, make_synth) -> None:
    """The Launch screen estimates in the app's process: reading speeds and label files stays torch-free."""
    import subprocess
    import sys

    root = make_synth("bp4d")
    cell = (f"dict(dataset='bp4d', task='au', fold=1, model='vit_tiny', input_size=64, epochs=1, batch_size=4, "
            f"data_root={str(root)!r}, labels={str(root / 'labels.jsonl')!r})")
    code = ("import sys; from fmae.run_speed import estimate, train_images; "
            f"assert train_images({cell}) > 0; estimate({str(tmp_path)!r}, [{cell}], 'cpu'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
