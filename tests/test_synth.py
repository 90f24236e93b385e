"""Synthetic faces: deterministic, in the real formats, with real-like label statistics, and learnable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmae.data.au_labels import read_au_jsonl
from fmae.data.problems import Problems
from fmae.data.synth.faces import AU_EFFECTS, Identity, Nuisance, render_face
from fmae.data.synth.labels import EXPRESSIONS, SubjectTendencies, sample_au_video, subject_rng
from fmae.data.synth.writer import SynthOptions, pick_subjects, synthesize
from fmae.errors import FmaeError
from fmae.registry import DATASETS


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "synth.json"):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("code", sorted({c for s in DATASETS.values() for c in s.au_codes}))
def test_every_registry_au_is_drawn_as_a_local_change(code):
    assert code in AU_EFFECTS
    face = Identity.sample(np.random.default_rng(0))
    neutral = np.asarray(render_face(face, {}, 112), np.int16)
    active = np.asarray(render_face(face, {code: 1.0}, 112), np.int16)
    subtle = np.asarray(render_face(face, {code: 0.3}, 112), np.int16)
    changed = np.abs(active - neutral).max(-1) > 8
    assert changed.sum() > 10, "the AU must be visible"
    assert changed.mean() < 0.1, "the AU must be a local change, not a new face"
    rows = np.flatnonzero(changed.any(1))
    upper = code in (1, 2, 4, 5, 6, 7)
    assert (rows.max() < 70) if upper else (rows.min() > 50), (code, rows.min(), rows.max())
    assert 0 < (np.abs(subtle - neutral).max(-1) > 8).sum() <= changed.sum() + 10  # graded


def test_fer_classes_are_au_combinations():
    for spec in (DATASETS["rafdb"], DATASETS["affectnet8"]):
        for name in spec.classes:
            assert all(code == "asym" or code in AU_EFFECTS for code in EXPRESSIONS[name.lower()])


def test_rendering_is_deterministic_and_rejects_unknown_aus():
    face = Identity.sample(np.random.default_rng(5))
    jitter = Nuisance.sample(np.random.default_rng(6))
    a = render_face(face, {6: 0.7, 12: 0.9}, 64, jitter).tobytes()
    assert a == render_face(face, {6: 0.7, 12: 0.9}, 64, jitter).tobytes()
    with pytest.raises(ValueError, match="3"):
        render_face(face, {3: 1.0}, 64)


def test_synth_is_deterministic_per_seed(tmp_path):
    opts = SynthOptions(subjects=4, frames=5, size=40, seed=11)
    synthesize(DATASETS["disfa"], tmp_path / "a", opts)
    synthesize(DATASETS["disfa"], tmp_path / "b", opts)
    synthesize(DATASETS["disfa"], tmp_path / "c", SynthOptions(subjects=4, frames=5, size=40, seed=12))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_subjects_are_real_ids_spread_over_the_folds():
    for spec in (DATASETS["bp4d"], DATASETS["bp4d_plus"], DATASETS["disfa"]):
        picked = pick_subjects(spec, 2 * spec.num_folds)
        assert set(picked) <= set(spec.subjects) and len(set(picked)) == len(picked)
        assert sorted(spec.fold_of(s) for s in picked) == sorted(list(range(1, spec.num_folds + 1)) * 2)
    with pytest.raises(FmaeError, match="at least 4 subjects"):
        pick_subjects(DATASETS["bp4d"], 3)


def test_au_output_is_the_real_format(make_synth):
    root = make_synth("bp4d")
    first = json.loads((root / "labels.jsonl").read_text().splitlines()[0])
    assert set(first) == {"img_path", "AUs"} and len(first["AUs"]) == 12
    assert all(a in (999, c) for a, c in zip(first["AUs"], DATASETS["bp4d"].au_codes))
    assert (root / first["img_path"]).is_file() and first["img_path"].split("/")[0].endswith("_T1")
    problems = Problems()
    labels = read_au_jsonl(root / "labels.jsonl", DATASETS["bp4d"], problems)
    assert not problems and len(labels) == 6 * 8
    assert (root / "fold1_train.jsonl").is_file() and (root / "AU_OCC").is_dir()
    with Image.open(root / first["img_path"]) as img:
        assert img.format == "JPEG" and img.size == (48, 48)


def test_label_statistics_look_like_the_real_data():
    """Base rates near the dataset's typical ones, AU6 with AU12 and AU1 with AU2, and per-subject
    tendencies whose strength the caller controls (the identity shortcut IAT removes). Uses the same
    label model `synthesize` draws from, without rendering."""
    spec = DATASETS["bp4d"]
    rates = np.array(spec.typical_rates)

    def labels(strength: float) -> tuple[np.ndarray, list[str]]:
        rows, subjects = [], []
        for subject in spec.subjects:
            tend = SubjectTendencies.sample(rates, strength, subject_rng(2, subject, "aus"))
            present, intensity = sample_au_video(spec.au_codes, tend, 120, subject_rng(2, subject, "frames"))
            assert ((intensity > 0) == present.astype(bool)).all() and intensity.max() <= 1
            rows.append(present)
            subjects += [subject] * len(present)
        return np.concatenate(rows).astype(float), subjects

    y, subjects = labels(1.0)
    assert np.abs(y.mean(0) - rates).max() < 0.12, y.mean(0)
    corr = np.corrcoef(y.T)
    i = {c: k for k, c in enumerate(spec.au_codes)}
    assert corr[i[6], i[12]] > 0.3 and corr[i[1], i[2]] > 0.3

    def between_subject_spread(y, subjects):
        per = np.stack([y[np.array(subjects) == s].mean(0) for s in sorted(set(subjects))])
        return per.std(0).mean()

    spreads = [between_subject_spread(*labels(strength)) for strength in (0.0, 1.0, 2.0)]
    assert spreads[0] < spreads[1] < spreads[2] and spreads[2] > 1.5 * spreads[0], spreads


def test_fer_output_is_image_folders(make_synth):
    root = make_synth("affectnet8")
    spec = DATASETS["affectnet8"]
    for split in ("train", "test"):
        assert {p.name for p in (root / split).iterdir()} <= {str(i) for i in spec.class_ids}
    test_counts = [len(list((root / "test" / str(i)).glob("*.jpg"))) for i in spec.class_ids]
    assert max(test_counts) - min(test_counts) <= 1  # AffectNet's test split is balanced


def test_faces_are_learnable_on_unseen_subjects_and_identity_is_decodable(tmp_path):
    """A linear model on raw pixels already finds most AUs on subjects it never saw, and tells
    subjects apart: the signal a ViT has to learn is there."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import roc_auc_score

    spec = DATASETS["bp4d"]
    synthesize(spec, tmp_path, SynthOptions(subjects=18, frames=30, size=64, seed=1, nuisance=0))
    parsed = read_au_jsonl(tmp_path / "labels.jsonl", spec, Problems())
    x = np.stack([np.asarray(Image.open(tmp_path / p).convert("L"), np.float32).ravel() / 255 for p in parsed.paths])
    subjects = np.array(parsed.subjects)
    test = np.isin(subjects, sorted(set(subjects))[::6])  # 3 unseen subjects
    aucs = []
    for a in range(len(spec.au_codes)):
        y = parsed.labels[:, a]
        if len(set(y[test])) < 2 or len(set(y[~test])) < 2:
            continue
        model = RidgeClassifier(alpha=1.0).fit(x[~test], y[~test])
        aucs.append(roc_auc_score(y[test], model.decision_function(x[test])))
    assert np.mean(aucs) > 0.75, aucs
    held = np.arange(len(x)) % 5 == 0
    ident = RidgeClassifier(alpha=10.0).fit(x[~held], subjects[~held])
    assert (ident.predict(x[held]) == subjects[held]).mean() > 0.9


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_benchmark_has_one_image_per_label_line(name, tmp_path):
    """More frames than one synthetic task holds, so a layout without the task (DISFA's) must number
    frames on instead of writing each task's over the previous one's."""
    from fmae.data.synth.writer import FRAMES_PER_TASK

    spec = DATASETS[name]
    frames = 2 * FRAMES_PER_TASK + 3
    subjects = spec.num_folds + 1 if spec.task == "au" else 3
    report = synthesize(spec, tmp_path, SynthOptions(subjects=subjects, frames=frames, size=32, seed=4))
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert report.images == len(on_disk) == subjects * frames
    if spec.task == "au":
        lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
        paths = [line["img_path"] for line in lines]
        assert len(paths) == len(set(paths)) == len(on_disk) and sorted(paths) == on_disk
        problems = Problems()
        assert len(read_au_jsonl(tmp_path / "labels.jsonl", spec, problems)) == len(paths) and not problems
    else:  # FER: the class folder is the label, one file per image
        assert all(p.split("/")[0] in ("train", "test") and len(p.split("/")) == 3 for p in on_disk)
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["generator"] == {"name": "fmae synth", "version": 2} and meta["images"] == len(on_disk)


def test_synthetic_copies_read_as_the_original_reads_them(tmp_path):
    """BP4D in the original's layout by default (its reader cuts the subject as img_path[1:4]); BP4D+ as
    `F001_T1/…` (img_path[0:4]); DISFA's subject is the last five characters of the first path
    component. fmae's own parser reads each to the canonical id."""
    cuts = {"bp4d": lambda p: p[1:4], "bp4d_plus": lambda p: p[0:4], "disfa": lambda p: p.split("/")[0][-5:]}
    for name, cut in cuts.items():
        spec = DATASETS[name]
        synthesize(spec, tmp_path / name, SynthOptions(subjects=spec.num_folds + 1, frames=2, size=32))
        lines = [json.loads(line)["img_path"] for line in (tmp_path / name / "labels.jsonl").read_text().splitlines()]
        for path in lines:
            subject = spec.parse_subject(path)
            short = f"{subject[0]}{int(subject[1:]):02d}" if name == "bp4d" else subject
            assert cut(path) == short, (name, path)
    assert lines[0] == "SN001/frame_1.jpg" or lines[0].endswith("/frame_1.jpg")
    first_bp4d = (tmp_path / "bp4d" / "labels.jsonl").read_text().splitlines()[0]
    assert json.loads(first_bp4d)["img_path"].startswith("2F0") and "_T1/frame_1.jpg" in first_bp4d
    synthesize(DATASETS["bp4d"], tmp_path / "task_folders", SynthOptions(subjects=4, frames=2, size=32,
                                                                        layout="task_folders"))
    assert (tmp_path / "task_folders" / "labels.jsonl").read_text().startswith('{"img_path": "F0')


def test_nuisance_is_a_synthetic_setting_and_changing_it_makes_a_new_copy(tmp_path):
    """fmae.toml's `synthetic` table takes `nuisance` (default 1: the benchmarks' pose, lighting and noise);
    synth.json records it, and a copy made with another value is made again on first use."""
    from fmae.config import parse_project
    from fmae.data.locate import ensure_dataset, synthetic_changes, synthetic_ready

    def location(extra: str):
        text = ('[datasets.bp4d]\nroot = "d"\nlabels = "d/labels.jsonl"\n'
                f"synthetic = {{ subjects = 4, frames = 2, size = 32, seed = 0{extra} }}\n")
        return parse_project(text, "fmae.toml", tmp_path).dataset("bp4d")

    assert location("").synthetic.nuisance == 1.0
    said: list[str] = []
    loc = ensure_dataset(DATASETS["bp4d"], location(", nuisance = 0.3"), said.append)
    assert "generating synthetic" in said[0] and synthetic_ready(loc)
    assert json.loads((tmp_path / "d" / "synth.json").read_text())["options"]["nuisance"] == 0.3
    before = digest(tmp_path / "d")
    calmer = location(", nuisance = 0")
    assert synthetic_changes(calmer) == ["nuisance 0.3 -> 0"] and not synthetic_ready(calmer)
    ensure_dataset(DATASETS["bp4d"], calmer, said.append)
    assert "its settings changed (nuisance 0.3 -> 0" in said[1], said
    assert json.loads((tmp_path / "d" / "synth.json").read_text())["options"]["nuisance"] == 0
    assert digest(tmp_path / "d") != before and synthetic_ready(calmer)
    ensure_dataset(DATASETS["bp4d"], calmer, said.append)
    assert len(said) == 2  # the matching copy is used as it is
    with pytest.raises(FmaeError, match=r"fmae.toml:4: datasets.bp4d.synthetic.nuisance must be 0 or more"):
        location(", nuisance = -0.5")
