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
    assert "# Dataset locations." in text and 'root = "d"' in text  # relative to fmae.toml's folder
    assert (tmp_path / "d" / "RightVideoSN001" / "1.jpg").is_file()
    meta = json.loads((tmp_path / "d" / "synth.json").read_text())
    assert meta["dataset"] == "disfa" and meta["images"] == 12
    check = run_fmae("data", "check", "disfa", cwd=tmp_path)
    assert check.returncode == 0, check.stderr


def test_usage_errors_exit_2(tmp_path):
    assert_one_line_error(run_fmae("synth", "bp5d", "--out", tmp_path), "unknown dataset 'bp5d'")
    assert_one_line_error(run_fmae("synth", "bp4d", "--out", tmp_path, "--layout", "flat"),
                          "--layout flat: bp4d layouts are original, task_folders, nested")
    assert_one_line_error(run_fmae("synth", "rafdb", "--out", tmp_path, "--raw"), "--raw: rafdb has no raw")
    assert run_fmae("synth", "bp4d").returncode == 2  # missing --out: click's usage error
    assert not os.listdir(tmp_path) or all(p.name != "labels.jsonl" for p in tmp_path.iterdir())


def test_an_outdated_synthetic_copy_is_made_again_or_refused(tmp_path):
    """synth.json records the generator: a configured copy written by an older one (DISFA listed every
    image four times) is made again on first use, old files gone; a copy named by --root is refused."""
    tiny_config(tmp_path)
    root = tmp_path / "data/synth/disfa"
    assert run_fmae("data", "check", "disfa", cwd=tmp_path).returncode == 0
    meta = json.loads((root / "synth.json").read_text())
    del meta["generator"]  # as generator 1 wrote it
    (root / "synth.json").write_text(json.dumps(meta))
    (root / "SN001" / "frame_99.jpg").write_bytes(b"left by the old copy")
    outdated = run_fmae("datasets", cwd=tmp_path)
    assert re.search(r"disfa .*synthetic, outdated", outdated.stdout), outdated.stdout
    again = run_fmae("data", "check", "disfa", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "making synthetic DISFA data in" in again.stderr and "written by generator 1" in again.stderr
    assert json.loads((root / "synth.json").read_text())["generator"]["version"] == 2
    assert not (root / "SN001" / "frame_99.jpg").exists() and not list(root.parent.glob(".disfa*"))
    copy = tmp_path / "old-copy"
    run_fmae("synth", "disfa", "--out", copy, "--subjects", 4, "--frames", 3, "--size", 32)
    meta = json.loads((copy / "synth.json").read_text())
    del meta["generator"]
    (copy / "synth.json").write_text(json.dumps(meta))
    assert_one_line_error(run_fmae("data", "check", "disfa", "--root", copy, cwd=tmp_path),
                          f"{copy}: a synthetic copy written by an older fmae synth (generator 1, now 2",
                          f"write a new one: fmae synth disfa --out {copy}-new --subjects 4 --frames 3 --size 32")


def test_check_sorts_duplicates_and_notes_codes_out_of_slot_order(make_synth, tmp_path):
    root = make_synth("disfa")
    lines = (root / "labels.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    # A line with some AUs present, its slots reversed: every present code sits in another AU's slot.
    j = next(i for i, line in enumerate(lines) if i and 0 < sum(a != 999 for a in json.loads(line)["AUs"]) < 8)
    reordered = dict(json.loads(lines[j]), AUs=list(reversed(json.loads(lines[j])["AUs"])))
    lines[j] = json.dumps(reordered)
    same = tmp_path / "same.jsonl"
    same.write_text("\n".join([*lines, lines[0]]) + "\n")
    ok = run_fmae("data", "check", "disfa", "--root", root, "--labels", same)
    assert ok.returncode == 0, ok.stderr
    assert f"warning: {same}:{len(lines) + 1}: '{first['img_path']}' is listed again with the same AUs" in ok.stdout
    assert f"note: {same}: 1 of {len(lines) + 1} lines hold their AU codes in other slots" in ok.stdout
    other = tmp_path / "other.jsonl"
    flipped = [999 if a != 999 else c for a, c in zip(first["AUs"], DATASETS["disfa"].au_codes)]
    other.write_text("\n".join([*lines, json.dumps(dict(first, AUs=flipped))]) + "\n")
    bad = run_fmae("data", "check", "disfa", "--root", root, "--labels", other)
    assert_one_line_error(bad, "disfa: 1 problems found")
    listed = f"problem: {other}:{len(lines) + 1}: '{first['img_path']}' is listed again with other AUs (line 1:"
    assert listed in bad.stderr


def test_root_without_labels_takes_its_labels_jsonl_and_says_so(make_synth, tmp_path):
    root = make_synth("bp4d")
    tiny_config(tmp_path)
    dry = run_fmae("train", "bp4d", "--fold", "1", "--root", root, "--model", "vit_tiny", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    rows = {line.split("│")[1].strip(): line for line in dry.stdout.splitlines() if line.count("│") >= 4}
    assert str(root / "labels.jsonl") in rows["labels"] and "--root (labels.jsonl found there)" in rows["labels"]
    bare = tmp_path / "frames-only"
    bare.mkdir()
    assert_one_line_error(run_fmae("train", "bp4d", "--fold", "1", "--root", bare, "--dry-run", cwd=tmp_path),
                          f"--root {bare}: no labels.jsonl there — pass --labels FILE")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
