"""The benchmark table: one `DatasetSpec` row per dataset, read by every part of fmae.

Adding a benchmark is adding a row here (and its recipe in `recipes.py`); nothing else branches on a
dataset's name. Tests parametrize over `DATASETS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import PurePath, PurePosixPath
from typing import Literal

from fmae.errors import FmaeError
from fmae.folds import FOLDS


@dataclass(frozen=True)
class SubjectScheme:
    """How a subject id is read from an image path, and the path layouts real copies of a dataset use.

    `pattern` is matched against each path component in turn (the first match wins), so the subject
    may be a folder (`F015/T8/0001.jpg`), part of one (`2F15_T8/frame_1.jpg`, `RightVideoSN001/…`) or
    the file name itself. Every form of one subject maps to one canonical id (`F015`, `SN001`).
    """

    pattern: re.Pattern[str]
    prefix_group: str  # the named group holding the letters of the id (F/M) or None for fixed prefix
    fixed_prefix: str
    digits: int
    # Layout name -> path template; the first is what `fmae synth` writes by default.
    # Fields: {subject} canonical id, {short} unpadded form (F15), {task}, {frame}.
    layouts: dict[str, str] = field(default_factory=dict)

    def parse(self, path: str | PurePath) -> str | None:
        parts = PurePosixPath(str(path).replace("\\", "/")).parts
        for part in parts:
            m = self.pattern.search(part)
            if m:
                prefix = m.group(self.prefix_group) if self.prefix_group else self.fixed_prefix
                return f"{prefix}{int(m.group('num')):0{self.digits}d}"
        return None


# BP4D / BP4D+: F or M, a 2–3 digit number, an optional leading digit (the original's `2F15_T8`),
# an optional task suffix (`_T8`) and anything after an underscore or dot (`F015_T8_0001.jpg`).
# Synthetic BP4D is written in the original's layout by default (`2F01_T1/frame_1.jpg`: its BP4D reader
# cuts the subject as img_path[1:4]), so data made by fmae feeds the original code for side-by-side
# checks. BP4D+ keeps `F001_T1/…`, which the original's BP4D+ reader cuts as img_path[0:4].
BP4D_SUBJECTS = SubjectScheme(
    pattern=re.compile(r"^\d?(?P<sex>[FM])(?P<num>\d{2,3})(?:_T\d+)?(?:[_.].*)?$"),
    prefix_group="sex",
    fixed_prefix="",
    digits=3,
    layouts={
        "original": "2{short}_T{task}/frame_{frame}.jpg",
        "task_folders": "{subject}_T{task}/frame_{frame}.jpg",
        "nested": "{subject}/T{task}/{frame:04d}.jpg",
    },
)
BP4D_PLUS_SUBJECTS = replace(BP4D_SUBJECTS, layouts={
    "task_folders": "{subject}_T{task}/frame_{frame}.jpg",
    "original": "2{short}_T{task}/frame_{frame}.jpg",
    "nested": "{subject}/T{task}/{frame:04d}.jpg",
})

# DISFA: SN and three digits anywhere in a component (`SN001`, `RightVideoSN001_comp`).
DISFA_SUBJECTS = SubjectScheme(
    pattern=re.compile(r"SN(?P<num>\d{3})(?!\d)"),
    prefix_group="",
    fixed_prefix="SN",
    digits=3,
    layouts={
        "subject_folders": "{subject}/frame_{frame}.jpg",
        "video_folders": "RightVideo{subject}/{frame}.jpg",
    },
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    task: Literal["au", "fer"]
    # AU benchmarks ---------------------------------------------------------------------------
    au_codes: tuple[int, ...] = ()
    folds: tuple[tuple[str, ...], ...] = ()  # fold k (1-based) = its TEST subjects
    subject_scheme: SubjectScheme | None = None
    # FER benchmarks --------------------------------------------------------------------------
    classes: tuple[str, ...] = ()
    class_ids: tuple[int, ...] = ()  # the dataset's own numeric id of each class (folder names)
    skip_classes: tuple[str, ...] = ()  # class folders of a shared copy that this benchmark leaves out
    test_split_names: tuple[str, ...] = ("test", "val", "validation")
    # Typical label statistics of the real data: per-AU occurrence rate (AU) or class frequency in
    # the training split (FER). Synthetic data is drawn to match; `fmae data check` shows them beside
    # what it measures.
    typical_rates: tuple[float, ...] = ()
    balanced_test: bool = False  # the real test split has the same count for every class
    notes: str = ""

    @property
    def subjects(self) -> tuple[str, ...]:
        """All subjects in a fixed (sorted) order: the index of a subject is its identity label."""
        return tuple(sorted(s for fold in self.folds for s in fold))

    @property
    def num_folds(self) -> int:
        return len(self.folds)

    @property
    def num_outputs(self) -> int:
        return len(self.au_codes) if self.task == "au" else len(self.classes)

    def au_names(self) -> list[str]:
        return [f"AU{c}" for c in self.au_codes]

    def check_fold(self, fold: int) -> int:
        if self.task != "au":
            raise FmaeError(f"{self.name} has no subject folds (it is a {self.title} FER benchmark)")
        if not 1 <= fold <= self.num_folds:
            raise FmaeError(
                f"fold {fold} does not exist for {self.name}: use 1..{self.num_folds}"
            )
        return fold

    def test_subjects(self, fold: int) -> frozenset[str]:
        return frozenset(self.folds[self.check_fold(fold) - 1])

    def train_subjects(self, fold: int) -> frozenset[str]:
        return frozenset(self.subjects) - self.test_subjects(fold)

    def fold_of(self, subject: str) -> int | None:
        for k, fold in enumerate(self.folds, start=1):
            if subject in fold:
                return k
        return None

    def parse_subject(self, path: str | PurePath) -> str | None:
        assert self.subject_scheme is not None, f"{self.name} has no subjects"
        return self.subject_scheme.parse(path)

    def class_index(self, folder_name: str) -> int | None:
        """Index of a class folder named by class name (any case) or by the dataset's numeric id."""
        key = folder_name.strip().lower()
        for i, name in enumerate(self.classes):
            if key == name.lower():
                return i
        if key.isdigit():
            num = int(key)
            if num in self.class_ids:
                return self.class_ids.index(num)
        return None


_BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
_AFFECTNET8 = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")

_ROWS = (
    DatasetSpec(
        name="bp4d",
        title="BP4D",
        task="au",
        au_codes=_BP4D_AUS,
        folds=FOLDS["bp4d"],
        subject_scheme=BP4D_SUBJECTS,
        typical_rates=(0.21, 0.17, 0.20, 0.46, 0.55, 0.59, 0.56, 0.46, 0.17, 0.34, 0.17, 0.15),
    ),
    DatasetSpec(
        name="bp4d_plus",
        title="BP4D+",
        task="au",
        au_codes=_BP4D_AUS,
        folds=FOLDS["bp4d_plus"],
        subject_scheme=BP4D_PLUS_SUBJECTS,
        typical_rates=(0.15, 0.13, 0.12, 0.52, 0.58, 0.61, 0.55, 0.52, 0.13, 0.21, 0.16, 0.10),
    ),
    DatasetSpec(
        name="disfa",
        title="DISFA",
        task="au",
        au_codes=(1, 2, 4, 6, 9, 12, 25, 26),
        folds=FOLDS["disfa"],
        subject_scheme=DISFA_SUBJECTS,
        typical_rates=(0.10, 0.09, 0.19, 0.15, 0.10, 0.23, 0.36, 0.19),
        notes="occurrence = intensity >= 2 (the field's convention)",
    ),
    DatasetSpec(
        name="rafdb",
        title="RAF-DB",
        task="fer",
        classes=("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"),
        class_ids=(1, 2, 3, 4, 5, 6, 7),
        typical_rates=(0.105, 0.023, 0.058, 0.389, 0.162, 0.057, 0.206),
    ),
    DatasetSpec(
        name="affectnet8",
        title="AffectNet-8",
        task="fer",
        classes=_AFFECTNET8,
        class_ids=(0, 1, 2, 3, 4, 5, 6, 7),
        typical_rates=(0.260, 0.467, 0.089, 0.049, 0.022, 0.013, 0.087, 0.013),
        balanced_test=True,
        notes="the validation set (500 images per class) is the test set",
    ),
    DatasetSpec(
        name="affectnet7",
        title="AffectNet-7",
        task="fer",
        classes=_AFFECTNET8[:7],
        class_ids=(0, 1, 2, 3, 4, 5, 6),
        skip_classes=("Contempt", "7"),
        typical_rates=(0.263, 0.473, 0.090, 0.050, 0.022, 0.013, 0.088),
        balanced_test=True,
        notes="AffectNet-8 without Contempt: a Contempt folder in the same copy is skipped",
    ),
)

DATASETS: dict[str, DatasetSpec] = {row.name: row for row in _ROWS}


def dataset_key(name: str) -> str:
    """The table's key for a name as people write it: "BP4D+" finds bp4d_plus, " Disfa " disfa."""
    return name.strip().lower().replace("+", "_plus").replace("-", "")


def get_dataset(name: str) -> DatasetSpec:
    spec = DATASETS.get(name)  # already the key: the report asks twice a run
    if spec is not None:
        return spec
    key = dataset_key(name)
    if key not in DATASETS:
        raise FmaeError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[key]


def shared_au_codes(source: str, target: str) -> tuple[int, ...]:
    """The AUs both benchmarks label, in `source`'s order: what a model trained on `source` is scored on
    when tested on `target`'s frames (BP4D ∩ DISFA: 1, 2, 4, 6, 12). Refused when either is not an AU
    benchmark, or they share no AU."""
    a, b = get_dataset(source), get_dataset(target)
    for spec in (a, b):
        if spec.task != "au":
            raise FmaeError(f"{spec.name} is a {spec.title} expression benchmark: cross-dataset AU evaluation "
                            "needs two AU benchmarks")
    shared = tuple(c for c in a.au_codes if c in b.au_codes)
    if not shared:
        raise FmaeError(f"{a.name} and {b.name} share no AU: nothing to score")
    return shared
