"""`fmae data check`: validate a dataset against its registry row and describe what is there."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fmae.config import DatasetLocation
from fmae.data.au_labels import load_au_fold
from fmae.data.fer_folders import read_fer_split
from fmae.data.image_check import check_images
from fmae.data.problems import Problems
from fmae.registry import DatasetSpec


@dataclass
class FoldRow:
    fold: int
    train_frames: int
    test_frames: int
    train_subjects: int
    test_subjects: int
    expected_test_subjects: int


@dataclass
class CheckReport:
    spec: DatasetSpec
    location: DatasetLocation
    problems: Problems = field(default_factory=Problems)
    images_checked: int = 0
    frames: int = 0
    subjects: list[str] = field(default_factory=list)
    folds: list[FoldRow] = field(default_factory=list)
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (measured, typical)
    class_counts: dict[str, list[int]] = field(default_factory=dict)  # split -> count per class

    @property
    def ok(self) -> bool:
        return not self.problems.errors


def check_dataset(spec: DatasetSpec, location: DatasetLocation, decode: bool = True,
                  progress: Callable[[int], None] | None = None) -> CheckReport:
    report = CheckReport(spec, location)
    if location.root is None or not location.root.is_dir():
        report.problems.error(location.origin, f"datasets.{spec.name}.root: folder {location.root} does not "
                                               "exist — fix the path in fmae.toml or pass --root")
        return report
    if spec.task == "au":
        _check_au(report, decode, progress)
    else:
        _check_fer(report, decode, progress)
    return report


def _check_au(report: CheckReport, decode: bool, progress) -> None:
    spec, loc = report.spec, report.location
    seen: dict[str, str] = {}  # img_path -> "labels file:line" that lists it (each image checked once)
    all_rows: list[np.ndarray] = []
    subjects: set[str] = set()
    for fold in range(1, spec.num_folds + 1):
        # A single label file yields the same problems for every fold: report them once.
        problems = report.problems if fold == 1 or not loc.labels else Problems()
        split = load_au_fold(spec, loc, fold, problems)
        if problems is not report.problems:
            report.problems.extend(p for p in problems if p.where.startswith("fold"))
        report.folds.append(FoldRow(
            fold, len(split.train), len(split.test), len(set(split.train.subjects)),
            len(set(split.test.subjects)), len(spec.folds[fold - 1]),
        ))
        for part in (split.train, split.test):
            for i, path in enumerate(part.paths):
                if path not in seen:
                    seen[path] = f"{part.source.name}:{part.lines[i]}"
                    all_rows.append(part.labels[i])
                    subjects.add(part.subjects[i])
        missing = sorted(spec.test_subjects(fold) - set(split.test.subjects))
        if missing and split.test.paths:
            report.problems.warning(f"fold {fold}", f"{len(missing)} of its {len(spec.folds[fold - 1])} test "
                                                    f"subjects have no frames ({', '.join(missing[:5])}…)")
    report.frames = len(seen)
    report.subjects = sorted(subjects)
    if all_rows:
        measured = np.stack(all_rows).mean(0)
        report.rates = {f"AU{c}": (float(measured[i]), spec.typical_rates[i]) for i, c in enumerate(spec.au_codes)}
    assert loc.root is not None
    items = [(loc.root / path, listed_at) for path, listed_at in seen.items()]
    report.images_checked = check_images(items, report.problems, decode, progress)


def _check_fer(report: CheckReport, decode: bool, progress) -> None:
    spec, root = report.spec, report.location.root
    assert root is not None
    items: list[tuple[Path, str]] = []
    for split in ("train", "test"):
        part = read_fer_split(spec, root, split, report.problems)
        report.class_counts[split] = part.class_counts().tolist()
        report.frames += len(part)
        items.extend((p, f"{split}/{p.parent.name}") for p in part.paths)
    train = np.array(report.class_counts["train"], float)
    if train.sum():
        report.rates = {name: (float(train[i] / train.sum()), spec.typical_rates[i])
                        for i, name in enumerate(spec.classes)}
    report.images_checked = check_images(items, report.problems, decode, progress)
