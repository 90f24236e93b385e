"""Reading AU label files (both arrangements) and FER folders, and every bad input as one clear line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fmae.config import DatasetLocation
from fmae.data.au_labels import load_au_fold, read_au_jsonl
from fmae.data.fer_folders import read_fer_split
from fmae.data.problems import Problems
from fmae.errors import FmaeError
from fmae.registry import DATASETS

BP4D = DATASETS["bp4d"]


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def strict(fn, *args):
    """The training path: load, then raise the first problem as one line."""
    problems = Problems()
    value = fn(*args, problems)
    problems.raise_first()
    return value


def test_slot_and_plain_forms_read_the_same(tmp_path):
    path = write_lines(
        tmp_path / "l.jsonl",
        '{"img_path": "2F15_T8/frame_1.jpg", "AUs": [999, 999, 4, 999, 999, 10, 999, 999, 999, 999, 999, 999]}',
        '{"img_path": "F015_T8/frame_2.jpg", "AUs": [4, 10]}',
        '{"img_path": "M003/T1/0001.jpg", "AUs": []}',
        "",
    )
    labels = strict(read_au_jsonl, path, BP4D)
    assert labels.subjects == ["F015", "F015", "M003"]
    assert labels.labels[0].tolist() == labels.labels[1].tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert labels.labels[2].sum() == 0 and labels.lines == [1, 2, 3]
    assert labels.subject_index().tolist() == [BP4D.subjects.index("F015")] * 2 + [BP4D.subjects.index("M003")]


BAD_LINES = [
    ('{"img_path": "F001_T1/frame_1.jpg", "AUs": [1, 2', "l.jsonl:2: not valid JSON"),
    ('{"img_path": "F001_T1/frame_1.jpg", "AUs": [3]}', "l.jsonl:2: AU 3 is not a BP4D AU"),
    ('{"img_path": "F001_T1/frame_1.jpg", "AUs": [1, 999, 999]}', "l.jsonl:2: the AU list has 3 slots but BP4D has 12 AUs"),
    ('{"img_path": "F001_T1/frame_1.jpg", "AUs": [2, 999, 999, 999, 999, 999, 999, 999, 999, 999, 999, 999]}',
     "l.jsonl:2: slot 1 holds AU 2, but slot 1 of BP4D is AU 1"),
    ('{"img_path": "F099_T1/frame_1.jpg", "AUs": []}', "l.jsonl:2: subject F099 (from 'F099_T1/frame_1.jpg') is in no bp4d fold"),
    ('{"img_path": "frames/x.jpg", "AUs": []}', "l.jsonl:2: cannot read a BP4D subject id from 'frames/x.jpg'"),
    ('{"path": "F001_T1/frame_1.jpg", "AUs": []}', 'l.jsonl:2: expected {"img_path"'),
    ('{"img_path": "F001_T1/frame_1.jpg", "AUs": "1,2"}', 'l.jsonl:2: "AUs" must be a list'),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_bad_label_lines_are_one_line_errors(tmp_path, line, message):
    path = write_lines(tmp_path / "l.jsonl", '{"img_path": "F001_T1/frame_0.jpg", "AUs": [1]}', line)
    with pytest.raises(FmaeError) as e:
        strict(read_au_jsonl, path, BP4D)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_all_problems_are_collected_not_just_the_first(tmp_path):
    path = write_lines(tmp_path / "l.jsonl", *(line for line, _ in BAD_LINES))
    problems = Problems()
    labels = read_au_jsonl(path, BP4D, problems)
    assert len(labels) == 0 and len(problems.errors) == len(BAD_LINES)
    with pytest.raises(FmaeError, match=r"and 7 more problems: run `fmae data check`"):
        problems.raise_first()


def test_single_file_is_split_by_the_fold_table(make_synth):
    root = make_synth("bp4d")
    loc = DatasetLocation("bp4d", root=root, labels=root / "labels.jsonl")
    for k in (1, 2, 3):
        fold = strict(load_au_fold, BP4D, loc, k)
        assert set(fold.test.subjects) <= BP4D.test_subjects(k) and fold.test.subjects
        assert not set(fold.train.subjects) & BP4D.test_subjects(k) and fold.train.subjects
        assert len(fold.train) + len(fold.test) == 48


def test_per_fold_files_read_the_same_as_the_single_file(make_synth):
    root = make_synth("bp4d")
    single = DatasetLocation("bp4d", root=root, labels=root / "labels.jsonl")
    per_fold = DatasetLocation("bp4d", root=root, train_labels=str(root / "fold{fold}_train.jsonl"),
                               test_labels=str(root / "fold{fold}_test.jsonl"))
    for k in (1, 2, 3):
        a, b = strict(load_au_fold, BP4D, single, k), strict(load_au_fold, BP4D, per_fold, k)
        assert a.train.paths == b.train.paths and a.test.paths == b.test.paths
        assert np.array_equal(a.test.labels, b.test.labels)


def test_subject_in_train_and_test_files(make_synth, tmp_path):
    root = make_synth("bp4d")
    shutil.copy(root / "fold1_test.jsonl", tmp_path / "fold1_test.jsonl")
    leak = (root / "fold1_test.jsonl").read_text().splitlines()[0]
    (tmp_path / "fold1_train.jsonl").write_text((root / "fold1_train.jsonl").read_text() + leak + "\n")
    loc = DatasetLocation("bp4d", root=root, train_labels=str(tmp_path / "fold{fold}_train.jsonl"),
                          test_labels=str(tmp_path / "fold{fold}_test.jsonl"))
    subject = BP4D.parse_subject(json.loads(leak)["img_path"])
    with pytest.raises(FmaeError, match=f"fold 1: subject {subject} is in both fold1_train.jsonl .train. and "
                                        "fold1_test.jsonl .test.: folds must be subject-exclusive"):
        strict(load_au_fold, BP4D, loc, 1)


def test_empty_split_and_missing_fold(tmp_path):
    fold1_only = BP4D.folds[0][0]
    path = write_lines(tmp_path / "l.jsonl", f'{{"img_path": "{fold1_only}_T1/frame_1.jpg", "AUs": [1]}}')
    loc = DatasetLocation("bp4d", root=tmp_path, labels=path)
    with pytest.raises(FmaeError, match="fold 1: the train split is empty"):
        strict(load_au_fold, BP4D, loc, 1)
    with pytest.raises(FmaeError, match="fold 2: the test split is empty"):
        strict(load_au_fold, BP4D, loc, 2)
    with pytest.raises(FmaeError, match="fold 4 does not exist for bp4d: use 1..3"):
        strict(load_au_fold, BP4D, loc, 4)
    with pytest.raises(FmaeError, match="l2.jsonl: label file not found"):
        strict(load_au_fold, BP4D, replace(loc, labels=tmp_path / "l2.jsonl"), 1)
    with pytest.raises(FmaeError, match="has no label file"):
        strict(load_au_fold, BP4D, replace(loc, labels=None), 1)


def test_fer_folders_by_id_and_by_name(make_synth, tmp_path):
    root = make_synth("rafdb")
    spec = DATASETS["rafdb"]
    by_id = strict(read_fer_split, spec, root, "train")
    assert len(by_id) > 0 and set(by_id.targets.tolist()) <= set(range(7))
    renamed = tmp_path / "raf"
    shutil.copytree(root, renamed)
    for split in ("train", "test"):
        for folder in (renamed / split).iterdir():
            folder.rename(folder.parent / spec.classes[spec.class_ids.index(int(folder.name))])
    (renamed / "test").rename(renamed / "val")  # the test split may be called val
    by_name = strict(read_fer_split, spec, renamed, "train")
    assert by_name.class_counts().tolist() == by_id.class_counts().tolist()
    assert len(strict(read_fer_split, spec, renamed, "test")) == len(strict(read_fer_split, spec, root, "test"))


def test_affectnet7_reads_an_affectnet8_copy_without_contempt(make_synth):
    root = make_synth("affectnet8")
    problems = Problems()
    seven = read_fer_split(DATASETS["affectnet7"], root, "test", problems)
    eight = strict(read_fer_split, DATASETS["affectnet8"], root, "test")
    assert not problems.errors and any("skipped" in p.message for p in problems)
    assert len(seven) == len(eight) - eight.class_counts()[7]


def test_fer_bad_folders(tmp_path):
    spec = DATASETS["rafdb"]
    (tmp_path / "train" / "Joy").mkdir(parents=True)
    with pytest.raises(FmaeError, match="Joy: unknown class folder for RAF-DB"):
        strict(read_fer_split, spec, tmp_path, "train")
    with pytest.raises(FmaeError, match="no test split: expected a folder test or val or validation"):
        strict(read_fer_split, spec, tmp_path, "test")
    (tmp_path / "train" / "Joy").rmdir()
    (tmp_path / "train" / "4").mkdir()
    with pytest.raises(FmaeError, match="the train split is empty"):
        strict(read_fer_split, spec, tmp_path, "train")
