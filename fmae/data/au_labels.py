"""AU labels in the original's JSON-lines format, read into a multi-hot matrix, and split into folds.

One line per frame: `{"img_path": "2F15_T8/frame_1.jpg", "AUs": [999, 999, 4, 999, …]}` — one slot per
AU of the dataset holding its code when present and 999 when absent. Codes are read by value, in any slot
order: the original's DISFA preprocessing appended them in `os.listdir` order of its `SN00x_auN.txt`
files and its reader mapped each code by value. A plain list of the present codes (`"AUs": [4, 10]`,
accepted by one of the original branches) reads the same. An image listed twice with different AUs is an
error; listed twice with the same AUs, a warning (both lines are kept, as the original would train on both).

A dataset comes either as one file for all subjects, split by the fold table, or as the original's
explicit per-fold train/test files; `load_au_fold` takes both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmae.config import DatasetLocation
from fmae.data.au_format import ABSENT
from fmae.data.locate import missing_labels
from fmae.data.problems import Problems
from fmae.registry import DatasetSpec


@dataclass
class AULabels:
    spec: DatasetSpec
    source: Path
    paths: list[str]  # img_path as written in the file, relative to the dataset root
    labels: np.ndarray  # [N, num_AUs] uint8, 1 = present
    subjects: list[str]  # canonical subject id per frame
    lines: list[int]  # source line per frame, for messages

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, keep: np.ndarray) -> "AULabels":
        idx = np.flatnonzero(keep)
        return AULabels(
            self.spec,
            self.source,
            [self.paths[i] for i in idx],
            self.labels[idx],
            [self.subjects[i] for i in idx],
            [self.lines[i] for i in idx],
        )

    def subject_index(self) -> np.ndarray:
        """Identity labels: each frame's subject as an index into the dataset's full subject list."""
        order = {s: i for i, s in enumerate(self.spec.subjects)}
        return np.array([order[s] for s in self.subjects], dtype=np.int64)


@dataclass
class AUFold:
    fold: int
    train: AULabels
    test: AULabels


def read_au_jsonl(path: Path, spec: DatasetSpec, problems: Problems) -> AULabels:
    paths: list[str] = []
    rows: list[np.ndarray] = []
    subjects: list[str] = []
    lines: list[int] = []
    seen: dict[str, tuple[int, np.ndarray]] = {}  # img_path -> (first line, its AUs)
    code_slot = {code: i for i, code in enumerate(spec.au_codes)}
    reordered: list[int] = []  # lines whose codes sit in other slots than the dataset's AU order
    nothing = AULabels(spec, path, [], np.zeros((0, len(spec.au_codes)), np.uint8), [], [])
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")  # a UTF-8 BOM (Windows editors write one) is accepted
    except FileNotFoundError:
        problems.error(str(path), "label file not found — check `labels` in fmae.toml or pass --labels")
        return nothing
    except IsADirectoryError:
        problems.error(str(path), "is a folder, not a label file — point `labels` (or --labels) at the .json file")
        return nothing
    except OSError as e:
        problems.error(str(path), f"cannot read the label file ({e.strerror or e}) — check its permissions")
        return nothing
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        problems.error(f"{path}:{line}", f"not UTF-8 text (byte 0x{raw[e.start]:02x}) — save the label file as "
                                         "UTF-8 JSON lines")
        return nothing
    if not text.strip():
        problems.error(str(path), "the label file is empty — point `labels` (or --labels) at the JSON-lines file "
                                  "with one frame per line")
        return nothing
    if text.lstrip().startswith("["):
        problems.error(str(path), "is one JSON array, but fmae reads JSON lines (one object a line) — convert it: "
                                  f"jq -c '.[]' {path.name} > {path.stem}.jsonl")
        return nothing

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.error(where, f"not valid JSON ({e.msg} at column {e.colno}) — fix or delete this line")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("img_path"), str) or "AUs" not in obj:
            problems.error(where, 'expected {"img_path": "<image path>", "AUs": [...]}')
            continue
        img, aus = obj["img_path"], obj["AUs"]
        if not isinstance(aus, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in aus):
            problems.error(where, f'"AUs" must be a list of AU codes and {ABSENT}s, got {json.dumps(aus)}')
            continue
        decoded = _decode_aus(aus, spec, code_slot, where, problems)
        if decoded is None:
            continue
        present, in_order = decoded
        subject = spec.parse_subject(img)
        if subject is None:
            problems.error(where, f"cannot read a {spec.title} subject id from '{img}' "
                                  f"(expected a path like {_example_path(spec)})")
            continue
        if spec.fold_of(subject) is None:
            problems.error(where, f"subject {subject} (from '{img}') is in no {spec.name} fold — "
                                  "fix the path or remove its lines")
            continue
        if img in seen:
            first, before = seen[img]
            if not np.array_equal(before, present):
                problems.error(where, f"'{img}' is listed again with other AUs (line {first}: {_names(spec, before)}; "
                                      f"here: {_names(spec, present)}) — keep one line per image "
                                      "(`fmae data check` lists every duplicate)")
                continue
            problems.warning(where, f"'{img}' is listed again with the same AUs (first at line {first}); both lines "
                                    "are kept, so it counts twice in training")
        seen.setdefault(img, (number, present))
        if not in_order:
            reordered.append(number)
        paths.append(img)
        rows.append(present)
        subjects.append(subject)
        lines.append(number)

    if reordered:
        problems.info(str(path), f"{len(reordered)} of {len(paths)} lines hold their AU codes in other slots than "
                                 f"{spec.title}'s AU order (first: line {reordered[0]}); each code is read by value, "
                                 "as the original's reader does — nothing to fix")
    labels = np.stack(rows) if rows else np.zeros((0, len(spec.au_codes)), np.uint8)
    return AULabels(spec, path, paths, labels, subjects, lines)


def _names(spec: DatasetSpec, present: np.ndarray) -> str:
    return " ".join(f"AU{c}" for c, on in zip(spec.au_codes, present) if on) or "none"


def _decode_aus(aus: list[int], spec: DatasetSpec, code_slot: dict[int, int], where: str,
                problems: Problems) -> tuple[np.ndarray, bool] | None:
    """The 0/1 vector over the dataset's AUs, and whether every code sat in its own AU's slot."""
    n = len(spec.au_codes)
    present = np.zeros(n, np.uint8)
    unknown = [a for a in aus if a != ABSENT and a not in code_slot]
    if unknown:
        problems.error(where, f"AU {unknown[0]} is not a {spec.title} AU (its AUs: "
                              f"{', '.join(map(str, spec.au_codes))})")
        return None
    if ABSENT in aus:  # the slot form: one slot per AU, in any order
        if len(aus) != n:
            problems.error(where, f"the AU list has {len(aus)} slots but {spec.title} has {n} AUs "
                                  f"({', '.join(map(str, spec.au_codes))}); one slot per AU, {ABSENT} = absent")
            return None
        codes = [a for a in aus if a != ABSENT]
        twice = next((a for a in codes if codes.count(a) > 1), None)
        if twice is not None:
            problems.error(where, f"AU {twice} fills two slots — one slot per AU: its code when present, "
                                  f"{ABSENT} when absent")
            return None
        for a in codes:
            present[code_slot[a]] = 1
        return present, all(a == ABSENT or a == spec.au_codes[i] for i, a in enumerate(aus))
    for a in aus:  # the plain form: the codes present
        present[code_slot[a]] = 1
    return present, True


def _example_path(spec: DatasetSpec) -> str:
    assert spec.subject_scheme is not None
    template = next(iter(spec.subject_scheme.layouts.values()))
    subject = spec.subjects[0]
    return template.format(subject=subject, short=subject, task=1, frame=1)


def load_au_fold(spec: DatasetSpec, location: DatasetLocation, fold: int, problems: Problems) -> AUFold:
    """Train/test labels of one fold, from one label file split by the fold table or from per-fold files."""
    spec.check_fold(fold)
    if location.train_labels and location.test_labels and not location.labels:
        train = read_au_jsonl(Path(location.train_labels.format(fold=fold)), spec, problems)
        test = read_au_jsonl(Path(location.test_labels.format(fold=fold)), spec, problems)
        overlap = sorted(set(train.subjects) & set(test.subjects))
        if overlap:
            problems.error(f"fold {fold}", f"subject {overlap[0]} is in both {train.source.name} (train) and "
                                           f"{test.source.name} (test): folds must be subject-exclusive")
    elif location.labels:
        everything = read_au_jsonl(location.labels, spec, problems)
        in_test = np.array([s in spec.test_subjects(fold) for s in everything.subjects], dtype=bool)
        train, test = everything.select(~in_test), everything.select(in_test)
    else:
        raise_missing_labels(spec, location)
    for split, part in (("train", train), ("test", test)):
        if len(part) == 0 and not any(p.where.startswith(str(part.source)) for p in problems.errors):
            whose = f"fold {fold}'s subjects" if split == "test" else "the other folds' subjects"
            problems.error(f"fold {fold}", f"the {split} split is empty: no frame of {part.source} belongs to {whose} "
                                           f"— the labels must cover the subjects of every fold (`fmae datasets`)")
    return AUFold(fold, train, test)


def raise_missing_labels(spec: DatasetSpec, location: DatasetLocation) -> None:
    raise missing_labels(spec, location)
