"""`fmae data prepare`: build the JSON-lines AU labels from the datasets' raw annotation files.

BP4D / BP4D+: `AU_OCC/F001_T1.csv` — a header row, then one row per frame: the frame number first,
then column c holds AU c (1 present, 0 absent, 9 unknown, counted as absent as the original did).
DISFA: `SN001/SN001_au1.txt` — `frame,intensity` lines; present when intensity >= 2.

Frames are matched by (subject, task, frame number) found anywhere under the frames folder, so every
layout the registry knows works (`F001_T1/frame_12.jpg`, `F001/T1/0012.jpg`, `SN001/12.jpg`, …); the
`img_path` written is relative to that folder, which becomes the dataset's root.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmae.atomic_write import write_text_atomic
from fmae.data.au_format import label_line
from fmae.data.image_files import IMAGE_SUFFIXES
from fmae.data.problems import Problems
from fmae.errors import FmaeError
from fmae.registry import DatasetSpec

_TASK = re.compile(r"(?:^|[_/])T(\d+)(?:$|[_./])")
_DIGITS = re.compile(r"\d+")
_DISFA_FILE = re.compile(r"^(SN\d{3})_au(\d+)\.txt$", re.IGNORECASE)
DISFA_PRESENT_AT = 2


@dataclass
class PrepareReport:
    out: Path
    frames_written: int = 0
    labelled_without_image: int = 0
    images_without_label: int = 0
    sequences: int = 0
    problems: Problems = field(default_factory=Problems)


def _frame_index(spec: DatasetSpec, frames: Path, with_task: bool) -> dict[tuple, str]:
    """(subject, task, frame) -> img_path relative to `frames`; task is None when not used."""
    if not frames.is_dir():
        raise FmaeError(f"--frames {frames}: folder does not exist")
    index: dict[tuple, str] = {}
    for path in frames.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = path.relative_to(frames).as_posix()
        subject = spec.parse_subject(rel)
        numbers = _DIGITS.findall(path.stem)
        if subject is None or not numbers:
            continue
        task = None
        if with_task:
            m = _TASK.search(rel)
            if m is None:
                continue
            task = int(m.group(1))
        index[(subject, task, int(numbers[-1]))] = rel
    return index


def prepare_bp4d(spec: DatasetSpec, au_occ: Path, frames: Path, out: Path) -> PrepareReport:
    if not au_occ.is_dir():
        raise FmaeError(f"--annotations {au_occ}: folder does not exist (expected BP4D's AU_OCC folder)")
    report = PrepareReport(out)
    index = _frame_index(spec, frames, with_task=True)
    used: set[str] = set()
    records: list[tuple[tuple, str, np.ndarray]] = []
    for csv_path in sorted(au_occ.glob("*.csv")):
        subject = spec.parse_subject(csv_path.stem)
        task_match = _TASK.search(csv_path.stem)
        if subject is None or task_match is None:
            report.problems.error(str(csv_path), "file name is not <subject>_T<task>.csv (e.g. F001_T1.csv)")
            continue
        task = int(task_match.group(1))
        report.sequences += 1
        with csv_path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            report.problems.error(str(csv_path), "empty file")
            continue
        columns = _au_columns(rows[0], spec, str(csv_path), report.problems)
        if columns is None:
            continue
        for number, row in enumerate(rows[1:], start=2):
            where = f"{csv_path}:{number}"
            try:
                frame = int(float(row[0]))
                values = [row[columns[c]].strip() for c in spec.au_codes]
            except (ValueError, IndexError):
                report.problems.error(where, "expected a frame number and a value for every AU column")
                continue
            bad = [v for v in values if v not in ("0", "1", "9")]
            if bad:
                report.problems.error(where, f"AU value '{bad[0]}' is not 1 (present), 0 (absent) or 9 (unknown)")
                continue
            present = np.array([v == "1" for v in values], np.uint8)
            rel = index.get((subject, task, frame))
            if rel is None:
                report.labelled_without_image += 1
                continue
            used.add(rel)
            records.append(((subject, task, frame), rel, present))
    return _finish(spec, report, records, index, used)


def _au_columns(header: list[str], spec: DatasetSpec, where: str, problems: Problems) -> dict[int, int] | None:
    """AU code -> column. The header names each column's AU (`12` or `AU12`); the real files number
    their columns so that column c is AU c, which the same rule reads."""
    columns: dict[int, int] = {}
    for i, cell in enumerate(header):
        m = re.fullmatch(r"\s*(?:AU)?(\d+)\s*", cell, re.IGNORECASE)
        if m and i > 0:
            columns.setdefault(int(m.group(1)), i)
    missing = [c for c in spec.au_codes if c not in columns]
    if missing:
        problems.error(where, f"header has no column for AU {missing[0]} (expected column numbers or AU codes)")
        return None
    return columns


def prepare_disfa(spec: DatasetSpec, labels_dir: Path, frames: Path, out: Path,
                  present_at: int = DISFA_PRESENT_AT) -> PrepareReport:
    if not labels_dir.is_dir():
        raise FmaeError(f"--annotations {labels_dir}: folder does not exist (expected DISFA's ActionUnit_Labels)")
    report = PrepareReport(out)
    index = _frame_index(spec, frames, with_task=False)
    per_subject: dict[str, dict[int, Path]] = {}
    for path in sorted(labels_dir.rglob("*.txt")):
        m = _DISFA_FILE.match(path.name)
        if m:
            per_subject.setdefault(m.group(1).upper(), {})[int(m.group(2))] = path
    if not per_subject:
        raise FmaeError(f"--annotations {labels_dir}: no SN###_au#.txt files found")
    used: set[str] = set()
    records: list[tuple[tuple, str, np.ndarray]] = []
    for subject, files in sorted(per_subject.items()):
        missing = [c for c in spec.au_codes if c not in files]
        if missing:
            report.problems.error(str(labels_dir / subject), f"no {subject}_au{missing[0]}.txt for AU {missing[0]}")
            continue
        report.sequences += 1
        table: dict[int, np.ndarray] = {}
        for a, code in enumerate(spec.au_codes):
            for number, line in enumerate(files[code].read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    frame_s, level_s = line.split(",")[:2]
                    frame, level = int(frame_s), int(float(level_s))
                except ValueError:
                    report.problems.error(f"{files[code]}:{number}", "expected 'frame,intensity'")
                    continue
                if not 0 <= level <= 5:
                    report.problems.error(f"{files[code]}:{number}", f"intensity {level} is outside 0-5")
                    continue
                table.setdefault(frame, np.zeros(len(spec.au_codes), np.uint8))[a] = level >= present_at
        for frame, present in sorted(table.items()):
            rel = index.get((subject, None, frame))
            if rel is None:
                report.labelled_without_image += 1
                continue
            used.add(rel)
            records.append(((subject, 0, frame), rel, present))
    return _finish(spec, report, records, index, used)


def _finish(spec, report: PrepareReport, records, index, used) -> PrepareReport:
    report.images_without_label = len(set(index.values()) - used)
    if not records:
        report.problems.error(str(report.out), "no labelled frame matched an image — check --frames")
    if report.problems.errors:
        return report  # nothing is written from input with errors
    records.sort(key=lambda r: r[0])
    lines = [label_line(spec, rel, present) for _, rel, present in records]
    write_text_atomic(report.out, "\n".join(lines) + "\n")
    report.frames_written = len(lines)
    return report
