"""The GPU benchmark runs end to end on the CPU (`--tiny`), so it works the first time a GPU is at hand;
its FLOP counts are timm's; a failing measurement becomes a note in the table, not a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def test_gpu_train_tiny_runs_every_variant_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_train.md"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_train.py"), "--tiny", "--compile", "blocks",
                           "--compile-backend", "eager", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# gpu_train: CPU") and "load average" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    kinds = [(r.split(" | ")[0][2:], r.split(" | ")[2].split(":")[0]) for r in rows]
    assert kinds == [("fine-tune, synthetic", "ours"), ("fine-tune, synthetic", "original-style"),
                     ("MAE pretrain, synthetic, decoder paper-shape (2 × 32)", "ours"),
                     ("MAE pretrain, synthetic, decoder paper-shape (2 × 32)", "original-style"),
                     ("MAE pretrain, synthetic, decoder small (1 × 16)", "ours"),
                     ("fine-tune, real loader", "ours"), ("fine-tune, real loader", "original-style"),
                     ("fine-tune, synthetic", "ours")]
    assert all(" – | – |" not in r.split(" | ", 3)[3][:12] for r in rows), text  # every row measured
    assert "unfused attention, per-parameter AdamW, JPEG + PIL" in text and "pixel cache" in text
    assert "torch.compile (blocks, eager backend)" in rows[-1] and "first step" in rows[-1]
    assert rows[0].split(" | ")[5].endswith("×")  # ours against original-style
    assert "- vit_tiny: ours (" in text and "original-style (target ≥ 1.5×:" in text


def test_vit_flops_are_timms_counts():
    from harness import mae_macs, vit_macs

    assert vit_macs("vit_base", 224) / 1e9 == pytest.approx(17.6, abs=0.05)
    assert vit_macs("vit_large", 224) / 1e9 == pytest.approx(61.6, abs=0.1)
    # MAE: the encoder sees a quarter of the patches, so pretraining costs far less than fine-tuning
    assert mae_macs("vit_large", 224, 512, 8) < 0.4 * vit_macs("vit_large", 224)


def test_a_failing_measurement_is_a_note_not_a_crash():
    import torch
    from gpu_train import Row, Settings, measure
    from harness import styles

    ours, _ = styles(torch.device("cpu"), "blocks")
    row = Row("fine-tune, synthetic", "vit_tiny", ours, 1.0)
    settings = Settings(torch.device("cpu"), 32, 2, 1, 1, ("vit_tiny",), {}, 0, 0, 0, "blocks", "eager", 10.0)

    def build():
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    measure(row, build, lambda: iter(()), settings)
    assert row.timing is None
    assert row.note == "failed (with torch.compile): RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_quality_sweeps_reuse_only_finished_runs_with_the_same_settings(tmp_path):
    """`quality_iat.py --reuse` keeps a run only when it is done and its run.toml has every setting."""
    import json

    from quality_iat import finished_run, run_minutes

    folder = tmp_path / "runs" / "f1-s0-l2"
    run = folder / "20261129-094201-bp4d-f1-s0-l2-vit_tiny-ceb4"
    run.mkdir(parents=True)
    (run / "run.toml").write_text('[config]\nepochs = 20\nlambda_id = 2.0\nwarmup_epochs = 1\ninit = "/x/pre.pth"\n')
    status = {"state": "running", "started": "2026-11-29T09:42:01.000Z", "updated": "2026-11-29T10:17:55.000Z"}
    (run / "status.json").write_text(json.dumps(status))
    (run / "summary.json").write_text("{}")
    same = {"epochs": 20, "lambda_id": 2.0, "warmup_epochs": 1.0, "init": "/x/pre.pth"}
    assert finished_run(folder, same) is None  # still running
    (run / "status.json").write_text(json.dumps({**status, "state": "done"}))
    assert finished_run(folder, same) == run
    assert run_minutes(run) == pytest.approx(35.9, abs=0.01)
    assert finished_run(folder, {**same, "epochs": 25}) is None
    assert finished_run(folder, {**same, "init": ""}) is None
    assert finished_run(tmp_path / "runs" / "none", same) is None
    (folder / "another").mkdir()
    assert finished_run(folder, same) is None  # two runs: which one is unclear, train again
