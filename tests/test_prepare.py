"""`fmae data prepare` on raw annotations (BP4D AU_OCC CSVs, DISFA intensity files) written by synth."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_one_line_error, run_fmae
from fmae.data.prepare import prepare_bp4d, prepare_disfa
from fmae.registry import DATASETS


def labels_by_path(path) -> dict[str, list[int]]:
    return {row["img_path"]: row["AUs"] for row in map(json.loads, path.read_text().splitlines())}


def test_bp4d_prepare_reproduces_the_labels(make_synth, tmp_path):
    root = make_synth("bp4d")
    report = prepare_bp4d(DATASETS["bp4d"], root / "AU_OCC", root, tmp_path / "out.jsonl")
    assert not report.problems.errors, report.problems
    # Unknown (9) counts as absent, columns of AUs outside the benchmark are ignored.
    assert labels_by_path(tmp_path / "out.jsonl") == labels_by_path(root / "labels.jsonl")
    assert report.frames_written == 48 and report.labelled_without_image == 0


def test_disfa_prepare_reproduces_the_labels(make_synth, tmp_path):
    root = make_synth("disfa")
    report = prepare_disfa(DATASETS["disfa"], root / "ActionUnit_Labels", root, tmp_path / "out.jsonl")
    assert not report.problems.errors, report.problems
    assert labels_by_path(tmp_path / "out.jsonl") == labels_by_path(root / "labels.jsonl")


def test_disfa_prepare_over_several_synthetic_tasks(tmp_path):
    """DISFA numbers the frames of a subject's one video on: with more frames than one synthetic task
    holds, the raw files and the images still match frame for frame (version 1 wrote over them)."""
    from fmae.data.synth.writer import FRAMES_PER_TASK, SynthOptions, synthesize

    spec = DATASETS["disfa"]
    synthesize(spec, tmp_path / "d", SynthOptions(subjects=4, frames=2 * FRAMES_PER_TASK + 5, size=32, raw=True))
    report = prepare_disfa(spec, tmp_path / "d" / "ActionUnit_Labels", tmp_path / "d", tmp_path / "out.jsonl")
    assert not report.problems.errors and report.labelled_without_image == report.images_without_label == 0
    assert labels_by_path(tmp_path / "out.jsonl") == labels_by_path(tmp_path / "d" / "labels.jsonl")
    assert report.frames_written == 4 * (2 * FRAMES_PER_TASK + 5)


def test_prepare_cli_registers_and_reports_missing_frames(make_synth, tmp_path):
    root = make_synth("bp4d")
    frames = tmp_path / "frames"
    shutil.copytree(root, frames, ignore=shutil.ignore_patterns("*.jsonl", "AU_OCC", "synth.json"))
    victim = next(iter(sorted(frames.rglob("*.jpg"))))
    victim.unlink()
    (tmp_path / "fmae.toml").write_text("# my project\n[datasets.bp4d]\nroot = \"x\"  # old\n")
    result = run_fmae("data", "prepare", "bp4d", "--annotations", root / "AU_OCC", "--frames", frames,
                      "--out", tmp_path / "bp4d.jsonl", "--register", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 47 frames" in result.stdout and "1 labelled frames have no image" in result.stdout
    text = (tmp_path / "fmae.toml").read_text()
    assert "# my project" in text and 'root = "frames"' in text and "bp4d.jsonl" in text  # relative to fmae.toml
    check = run_fmae("data", "check", "bp4d", cwd=tmp_path)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("cell, message", [
    ("7", "AU value '7' is not 1 (present), 0 (absent) or 9 (unknown)"),
    ("x", "AU value 'x' is not 1"),
])
def test_bad_csv_values_name_file_and_line(make_synth, tmp_path, cell, message):
    root = make_synth("bp4d")
    occ = tmp_path / "AU_OCC"
    shutil.copytree(root / "AU_OCC", occ)
    target = sorted(occ.glob("*.csv"))[0]
    lines = target.read_text().splitlines()
    cells = lines[2].split(",")
    cells[12] = cell  # column 12 = AU12
    lines[2] = ",".join(cells)
    target.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    result = run_fmae("data", "prepare", "bp4d", "--annotations", occ, "--frames", root, "--out", out)
    assert_one_line_error(result, "problems in the annotations", "was not written")
    assert f"{target.name}:3: {message}" in result.stderr
    assert not out.exists()


def test_disfa_missing_au_file(make_synth, tmp_path):
    root = make_synth("disfa")
    labels = tmp_path / "labels"
    shutil.copytree(root / "ActionUnit_Labels", labels)
    subject_dir = sorted(labels.iterdir())[0]
    (subject_dir / f"{subject_dir.name}_au9.txt").unlink()
    report = prepare_disfa(DATASETS["disfa"], labels, root, tmp_path / "out.jsonl")
    assert f"no {subject_dir.name}_au9.txt for AU 9" in str(report.problems.errors[0])
    assert not (tmp_path / "out.jsonl").exists()
