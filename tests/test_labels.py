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
DISFA = DATASETS["disfa"]


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
    ('{"img_path": "F001_T1/frame_1.jpg", "AUs": [1, 1, 999, 999, 999, 999, 999, 999, 999, 999, 999, 999]}',
     "l.jsonl:2: AU 1 fills two slots"),
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


def write_disfa_raw(folder: Path, subjects: list[str], frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """DISFA's ActionUnit_Labels: SN001/SN001_au1.txt, `frame,intensity` lines (0-5); the files are created
    in shuffled order, as a copy made by other tools would be. Returns each subject's intensities [F, A]."""
    rng = np.random.default_rng(seed)
    truth = {}
    for sn in subjects:
        levels = rng.integers(0, 6, size=(frames, len(DISFA.au_codes)))
        truth[sn] = levels
        (folder / sn).mkdir(parents=True)
        for a in rng.permutation(len(DISFA.au_codes)):
            code = DISFA.au_codes[a]
            (folder / sn / f"{sn}_au{code}.txt").write_text("".join(f"{f},{levels[f, a]}\n" for f in range(frames)))
    return truth


def original_disfa_labels(folder: Path, out: Path) -> list[list[int]]:
    """The original's DISFA preprocessing, step for step: for each subject, the AU files in the order
    `os.listdir` returns them, each frame's code appended when intensity >= 2, else 999."""
    import os

    lines, slot_orders = [], []
    for sn in sorted(os.listdir(folder)):
        files = [f for f in os.listdir(folder / sn) if f.endswith(".txt")]
        codes = [int(f.split("_au")[1].split(".")[0]) for f in files]
        slot_orders.append(codes)
        per_file = [[int(line.split(",")[1]) for line in (folder / sn / f).read_text().splitlines()] for f in files]
        for frame in range(len(per_file[0])):
            aus = [code if levels[frame] >= 2 else 999 for code, levels in zip(codes, per_file)]
            lines.append(json.dumps({"img_path": f"RightVideo{sn}/{frame}.jpg", "AUs": aus}))
    out.write_text("\n".join(lines) + "\n")
    return slot_orders


def test_disfa_labels_from_the_original_preprocessing_read_by_value(tmp_path):
    subjects = ["SN001", "SN002", "SN009", "SN016"]
    truth = write_disfa_raw(tmp_path / "ActionUnit_Labels", subjects, frames=20)
    path = tmp_path / "DISFA_labels.json"
    orders = original_disfa_labels(tmp_path / "ActionUnit_Labels", path)
    problems = Problems()
    labels = read_au_jsonl(path, DISFA, problems)
    assert not problems.errors, problems
    expected = np.concatenate([(truth[sn] >= 2).astype(np.uint8) for sn in subjects])
    assert np.array_equal(labels.labels, expected)  # every AU where its code says, whatever its slot
    assert labels.subjects == [sn for sn in subjects for _ in range(20)]
    # The note counts the lines whose present codes sit in another AU's slot.
    def out_of_order(sn: str, order: list[int], f: int) -> bool:
        """A present code outside its own AU's slot (a line with every AU present has no 999 and reads as
        the plain list of present codes, which has no slots)."""
        present = [truth[sn][f, DISFA.au_codes.index(code)] >= 2 for code in order]
        return not all(present) and any(on and code != DISFA.au_codes[i]
                                        for i, (code, on) in enumerate(zip(order, present)))

    reordered = sum(out_of_order(sn, order, f) for sn, order in zip(subjects, orders) for f in range(20))
    notes = [p for p in problems if p.severity == "info"]
    if reordered:
        assert len(notes) == 1 and notes[0].report_line().startswith(f"note: {path}: {reordered} of 80 lines hold")
        assert "read by value" in notes[0].message and "nothing to fix" in notes[0].message
    else:  # os.listdir happened to return AU order for every subject
        assert not notes


def test_codes_in_any_slot_order_read_by_value_and_unknown_codes_are_refused(tmp_path):
    path = write_lines(tmp_path / "l.jsonl",
                       '{"img_path": "SN001/frame_1.jpg", "AUs": [26, 999, 999, 2, 999, 999, 999, 1]}',
                       '{"img_path": "SN001/frame_2.jpg", "AUs": [1, 2, 999, 999, 999, 999, 999, 999]}',
                       '{"img_path": "SN001/frame_3.jpg", "AUs": [999, 999, 999, 999, 999, 999, 999, 17]}')
    problems = Problems()
    labels = read_au_jsonl(path, DISFA, problems)
    assert labels.labels.tolist() == [[1, 1, 0, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert [p.report_line() for p in problems] == [
        f"problem: {path}:3: AU 17 is not a DISFA AU (its AUs: 1, 2, 4, 6, 9, 12, 25, 26)",
        f"note: {path}: 1 of 2 lines hold their AU codes in other slots than DISFA's AU order (first: line 1); "
        "each code is read by value, as the original's reader does — nothing to fix"]


def test_an_image_listed_twice(tmp_path):
    same = write_lines(tmp_path / "same.jsonl", '{"img_path": "F001_T1/frame_1.jpg", "AUs": [1, 2]}',
                       '{"img_path": "F003_T1/frame_1.jpg", "AUs": []}',
                       '{"img_path": "F001_T1/frame_1.jpg", "AUs": [2, 1]}')
    problems = Problems()
    labels = read_au_jsonl(same, BP4D, problems)
    assert len(labels) == 3 and not problems.errors  # kept twice, as the original trains on both
    assert [p.report_line() for p in problems] == [
        f"warning: {same}:3: 'F001_T1/frame_1.jpg' is listed again with the same AUs (first at line 1); both lines "
        "are kept, so it counts twice in training"]
    other = write_lines(tmp_path / "other.jsonl", '{"img_path": "F001_T1/frame_1.jpg", "AUs": [1, 2]}',
                        '{"img_path": "F001_T1/frame_1.jpg", "AUs": [4]}')
    with pytest.raises(FmaeError) as e:
        strict(read_au_jsonl, other, BP4D)
    assert str(e.value) == (f"{other}:2: 'F001_T1/frame_1.jpg' is listed again with other AUs (line 1: AU1 AU2; here: "
                            "AU4) — keep one line per image (`fmae data check` lists every duplicate)")


def test_a_json_array_is_named_once_with_how_to_convert(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps([{"img_path": f"F001_T1/frame_{i}.jpg", "AUs": [1]} for i in range(50)], indent=2))
    problems = Problems()
    assert len(read_au_jsonl(path, BP4D, problems)) == 0
    assert [str(p) for p in problems] == [f"{path}: is one JSON array, but fmae reads JSON lines (one object a line) "
                                          "— convert it: jq -c '.[]' labels.json > labels.jsonl"]


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes("\ufeff".encode() + b'{"img_path": "F001_T1/frame_1.jpg", "AUs": [1]}\n')
    labels = strict(read_au_jsonl, path, BP4D)
    assert labels.paths == ["F001_T1/frame_1.jpg"] and labels.labels[0, 0] == 1


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
