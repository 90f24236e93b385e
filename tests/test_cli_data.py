"""The data commands through the real CLI process: check on every registry row, bad images, the demo
default generated on first use, synth --register, and the command list."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_fmae
from fmae.config import default_config_text
from fmae.registry import DATASETS


def test_help_lists_the_commands():
    result = run_fmae("--help")
    assert result.returncode == 0
    for command in ("datasets", "init", "synth", "data", "config"):
        assert re.search(rf"│ {command}\s", result.stdout), command
    data = run_fmae("data", "--help")
    assert "prepare" in data.stdout and "check" in data.stdout


@pytest.mark.parametrize("name", list(DATASETS))
def test_check_passes_on_synthetic_data_of_every_row(make_synth, name):
    spec = DATASETS[name]
    source = "affectnet8" if name == "affectnet7" else name  # AffectNet-7 reads an AffectNet-8 copy
    root = make_synth(source)
    args = ["data", "check", name, "--root", root]
    if spec.task == "au":
        args += ["--labels", root / "labels.jsonl"]
    result = run_fmae(*args)
    assert result.returncode == 0, result.stderr
    assert f"ok: no problems in {name}" in result.stdout
    if spec.task == "au":
        for k in range(1, spec.num_folds + 1):
            assert re.search(rf"│\s+{k} │\s+\d+ │\s+\d+ │\s+\d+ │\s+2 / {len(spec.folds[k - 1])} │", result.stdout)
        assert all(f"AU{c} " in result.stdout for c in spec.au_codes)
    else:
        assert "images per class" in result.stdout and all(c in result.stdout for c in spec.classes)


def test_check_reports_every_bad_image_and_changes_nothing(make_synth, tmp_path):
    import shutil

    root = tmp_path / "bp4d"
    shutil.copytree(make_synth("bp4d"), root)
    images = sorted(root.rglob("*.jpg"))
    images[0].write_bytes(b"")  # zero bytes
    images[1].write_bytes(images[1].read_bytes()[:200])  # truncated JPEG
    images[2].unlink()  # missing
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    result = run_fmae("data", "check", "bp4d", "--root", root, "--labels", root / "labels.jsonl")
    assert_one_line_error(result, "bp4d: 3 problems found")
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3
    assert any(str(images[0]) in p and "empty (0 bytes)" in p and "labels.jsonl:" in p for p in problems)
    assert any(str(images[1]) in p and "cannot be decoded" in p for p in problems)
    assert any(str(images[2]) in p and "image not found" in p for p in problems)
    assert before == {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    quick = run_fmae("data", "check", "bp4d", "--root", root, "--labels", root / "labels.jsonl", "--no-decode")
    assert_one_line_error(quick, "bp4d: 2 problems found")  # without decoding the truncation is not seen


def test_check_reports_label_problems_with_file_and_line(make_synth, tmp_path):
    root = make_synth("bp4d")
    labels = tmp_path / "labels.jsonl"
    lines = (root / "labels.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-3]
    labels.write_text("\n".join(lines) + "\n")
    result = run_fmae("data", "check", "bp4d", "--root", root, "--labels", labels)
    assert_one_line_error(result, "bp4d: 1 problems found")
    assert f"problem: {labels}:5: not valid JSON" in result.stderr


def tiny_config(folder: Path) -> Path:
    text = re.sub(r"synthetic = \{[^}]*\}", "synthetic = { subjects = 4, frames = 4, size = 40, seed = 0 }",
                  default_config_text())
    path = folder / "fmae.toml"
    path.write_text(text)
    return path


def test_demo_default_is_generated_on_first_use(tmp_path):
    tiny_config(tmp_path)
    first = run_fmae("data", "check", "bp4d", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "generating synthetic BP4D data" in first.stderr and "(first use;" in first.stderr
    marker = tmp_path / "data/synth/bp4d/synth.json"
    stamp = marker.stat().st_mtime_ns
    second = run_fmae("data", "check", "bp4d", cwd=tmp_path / "data")  # found from a subfolder
    assert second.returncode == 0 and "generating" not in second.stderr
    assert marker.stat().st_mtime_ns == stamp
    listing = run_fmae("datasets", cwd=tmp_path)
    assert re.search(r"bp4d .*synthetic, ready", listing.stdout)
    assert re.search(r"disfa .*synthetic, made on first use", listing.stdout)


def test_missing_root_names_the_config_line(tmp_path):
    path = tiny_config(tmp_path)
    text = path.read_text().replace('root = "data/synth/disfa"', 'root = "/no/such/disfa"')
    text = text.replace('labels = "data/synth/disfa/labels.jsonl"\nsynthetic = { subjects = 4, frames = 4, size = 40, seed = 0 }',
                        'labels = "/no/such/disfa/labels.jsonl"')
    path.write_text(text)
    line = text.splitlines().index('root = "/no/such/disfa"') + 1
    result = run_fmae("data", "check", "disfa", cwd=tmp_path)
    assert_one_line_error(result, f"fmae.toml:{line}: datasets.disfa.root: folder /no/such/disfa does not exist")


def test_synth_register_points_the_config_at_the_copy(tmp_path):
    path = tiny_config(tmp_path)
    result = run_fmae("synth", "disfa", "--out", tmp_path / "d", "--subjects", 4, "--frames", 3, "--size", 40,
                      "--layout", "video_folders", "--register", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 12 DISFA-format images of 4 subjects" in result.stdout
    assert "AU base rates (measured)" in result.stdout
    text = path.read_text()
    assert "# Dataset locations." in text and str(tmp_path / "d") in text
    assert (tmp_path / "d" / "RightVideoSN001" / "1.jpg").is_file()
    meta = json.loads((tmp_path / "d" / "synth.json").read_text())
    assert meta["dataset"] == "disfa" and meta["images"] == 12
    check = run_fmae("data", "check", "disfa", cwd=tmp_path)
    assert check.returncode == 0, check.stderr


def test_usage_errors_exit_2(tmp_path):
    assert_one_line_error(run_fmae("synth", "bp5d", "--out", tmp_path), "unknown dataset 'bp5d'")
    assert_one_line_error(run_fmae("synth", "bp4d", "--out", tmp_path, "--layout", "flat"),
                          "--layout flat: bp4d layouts are task_folders, original, nested")
    assert_one_line_error(run_fmae("synth", "rafdb", "--out", tmp_path, "--raw"), "--raw: rafdb has no raw")
    assert run_fmae("synth", "bp4d").returncode == 2  # missing --out: click's usage error
    assert not os.listdir(tmp_path) or all(p.name != "labels.jsonl" for p in tmp_path.iterdir())
