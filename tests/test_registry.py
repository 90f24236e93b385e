"""The registry against the reference facts, and subject parsing of every layout users have."""

from __future__ import annotations

import tomllib

import pytest

from conftest import SHARED_REFERENCE
from fmae.errors import FmaeError
from fmae.recipes import FINETUNE_DEFAULTS, finetune_recipe, recipe_names
from fmae.registry import DATASETS, get_dataset


@pytest.fixture(scope="module")
def reference() -> dict:
    path = SHARED_REFERENCE / "datasets.toml"
    if not path.exists():
        pytest.skip(f"reference facts not found at {path}")
    return tomllib.loads(path.read_text())


AU_ROWS = [name for name, spec in DATASETS.items() if spec.task == "au"]
FER_ROWS = [name for name, spec in DATASETS.items() if spec.task == "fer"]


@pytest.mark.parametrize("name", AU_ROWS)
def test_au_rows_match_reference(reference, name):
    spec, ref = DATASETS[name], reference[name]
    assert list(spec.au_codes) == ref["au_codes"]
    assert len(spec.subjects) == ref["num_subjects"]
    ref_folds = [ref[k] for k in sorted(k for k in ref if k.startswith("fold"))]
    assert [list(f) for f in spec.folds] == ref_folds
    assert len(spec.typical_rates) == len(spec.au_codes)
    for k in range(1, spec.num_folds + 1):  # subject-exclusive and complete
        assert spec.test_subjects(k) | spec.train_subjects(k) == set(spec.subjects)
        assert not spec.test_subjects(k) & spec.train_subjects(k)


@pytest.mark.parametrize("name", FER_ROWS)
def test_fer_rows_match_reference(reference, name):
    spec, ref = DATASETS[name], reference[name]
    assert len(spec.classes) == ref["num_classes"]
    if "classes" in ref:
        assert list(spec.classes) == ref["classes"]
    assert len(spec.class_ids) == len(spec.classes) == len(spec.typical_rates)
    assert abs(sum(spec.typical_rates) - 1) < 0.01


@pytest.mark.parametrize("name", list(DATASETS))
def test_recipes_match_reference(reference, name):
    recipes = reference["recipes"]
    ref_rows = recipes.get(name) or recipes["affectnet8"]  # AffectNet-7 trains like AffectNet-8
    assert recipe_names(name) == [*ref_rows, "demo"]  # the paper's recipes, then fmae's demo (issue 15)
    for recipe, values in ref_rows.items():
        resolved = finetune_recipe(name, recipe)
        for key, value in values.items():
            assert resolved[key] == value, (name, recipe, key)
    for key in ("input_size", "layer_decay", "weight_decay", "drop_path", "min_lr"):
        assert FINETUNE_DEFAULTS[key] == recipes["defaults"][key]


def test_unknown_names_fail_with_the_list():
    with pytest.raises(FmaeError, match="choose one of bp4d, bp4d_plus, disfa"):
        get_dataset("bp5d")
    with pytest.raises(FmaeError, match="fmae, fmae_iat"):
        finetune_recipe("bp4d", "fmea")
    assert get_dataset("BP4D+").name == "bp4d_plus"
    assert get_dataset("AffectNet-8").name == "affectnet8"


def test_fold_errors():
    with pytest.raises(FmaeError, match="fold 4 does not exist for bp4d: use 1..3"):
        DATASETS["bp4d"].test_subjects(4)
    with pytest.raises(FmaeError, match="no subject folds"):
        DATASETS["rafdb"].test_subjects(1)


@pytest.mark.parametrize("path, subject", [
    ("2F15_T8/frame_1.jpg", "F015"),          # the original's BP4D frames
    ("F015_T8/frame_1.jpg", "F015"),
    ("F015/T8/0001.jpg", "F015"),
    ("/data/BP4D/F015/T8/0001.jpg", "F015"),
    ("F015_T8_0001.jpg", "F015"),
    ("M003_T1/frame_20.jpg", "M003"),
    ("1M03_T1/frame_20.jpg", "M003"),
    ("M03/T1/0020.png", "M003"),
    ("F082_T2/frame_5.jpg", "F082"),           # BP4D+ ids reach 82
    ("frames/F1/x.jpg", None),                 # one digit is not a subject
    ("Frames/T8/0001.jpg", None),
])
def test_bp4d_subject_parsing(path, subject):
    assert DATASETS["bp4d"].parse_subject(path) == subject
    assert DATASETS["bp4d_plus"].parse_subject(path) == subject


@pytest.mark.parametrize("name", AU_ROWS)
def test_every_layout_of_every_subject_reads_back_into_its_fold(name):
    """Each path layout `fmae synth` can write (the first is its default) parses back to the subject, for
    every subject of the fold table; BP4D's default is the original's `2F01_T1/frame_1.jpg`."""
    spec = DATASETS[name]
    layouts = spec.subject_scheme.layouts
    for template in layouts.values():
        for subject in spec.subjects:
            short = f"{subject[0]}{int(subject[1:]):02d}" if subject[0] in "FM" else subject
            path = template.format(subject=subject, short=short, task=3, frame=17)
            assert spec.parse_subject(path) == subject and spec.fold_of(subject) is not None, (template, path)
    default = next(iter(layouts.values())).format(subject="F001", short="F01", task=1, frame=1)
    assert default == {"bp4d": "2F01_T1/frame_1.jpg", "bp4d_plus": "F001_T1/frame_1.jpg",
                       "disfa": "F001/frame_1.jpg"}[name]


@pytest.mark.parametrize("path, subject", [
    ("SN001/frame_1.jpg", "SN001"),
    ("SN001/1.jpg", "SN001"),
    ("RightVideoSN001/12.jpg", "SN001"),
    ("RightVideoSN001_comp/12.jpg", "SN001"),
    ("LeftVideoSN032/0001.png", "SN032"),
    ("disfa/frames/SN027/0001.png", "SN027"),
    ("SN0001/1.jpg", None),
])
def test_disfa_subject_parsing(path, subject):
    assert DATASETS["disfa"].parse_subject(path) == subject


@pytest.mark.parametrize("name", AU_ROWS)
def test_every_layout_round_trips(name):
    """Each layout synth can write parses back to the subject it was written for."""
    spec = DATASETS[name]
    for subject in spec.subjects:
        short = f"{subject[0]}{int(subject[1:]):02d}" if subject[0] in "FM" else subject
        for template in spec.subject_scheme.layouts.values():
            path = template.format(subject=subject, short=short, task=3, frame=17)
            assert spec.parse_subject(path) == subject, path


def test_class_folders_by_name_or_id():
    raf = DATASETS["rafdb"]
    assert raf.class_index("Happiness") == 3 == raf.class_index("4") == raf.class_index("happiness")
    assert raf.class_index("0") is None and raf.class_index("Contempt") is None
    aff7 = DATASETS["affectnet7"]
    assert aff7.class_index("7") is None and "Contempt" in aff7.skip_classes
    assert DATASETS["affectnet8"].class_index("7") == 7
