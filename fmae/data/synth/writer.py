"""`fmae synth`: write a learnable synthetic copy of a benchmark in its real on-disk format.

AU benchmarks: frames in one of the dataset's real path layouts, `labels.jsonl` in the original's slot
format, optionally the original's per-fold train/test files, and optionally the raw annotation files
(BP4D `AU_OCC/F001_T1.csv`, DISFA `ActionUnit_Labels/SN001/SN001_au1.txt`) that `fmae data prepare`
reads. FER benchmarks: `train/` and `test/` folders of class folders.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fmae.atomic_write import write_text_atomic
from fmae.data.au_format import label_line
from fmae.data.synth import GENERATOR_VERSION
from fmae.data.synth.faces import Identity, Nuisance, render_face
from fmae.data.synth.labels import SubjectTendencies, expression_aus, sample_au_video, subject_rng
from fmae.errors import FmaeError
from fmae.registry import DatasetSpec

FRAMES_PER_TASK = 12  # frames of one synthetic "video" (a BP4D task) before the next starts
BP4D_RAW_COLUMNS = 40  # AU_OCC columns 0..39: column 0 the frame, column c AU c
RAW_FORMATS = {"bp4d": "bp4d", "bp4d_plus": "bp4d", "disfa": "disfa"}  # dataset -> raw annotation format


@dataclass(frozen=True)
class SynthOptions:
    subjects: int | None = None  # None = every subject of the dataset (AU) / 60 identities (FER)
    frames: int = 48  # frames per subject (AU) / images per identity (FER)
    size: int = 112
    seed: int = 0
    identity_strength: float = 1.0  # how strongly a subject's identity predicts its AUs
    nuisance: float = 1.0
    layout: str | None = None  # a path layout of the dataset's subject scheme
    per_fold_files: bool = False
    raw: bool = False
    class_folders: str = "ids"  # FER: name class folders by "ids" or "names"
    test_fraction: float = 0.2  # FER


@dataclass
class SynthReport:
    out: Path
    images: int = 0
    subjects: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # AU base rate or class frequency, measured
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def pick_subjects(spec: DatasetSpec, n: int | None) -> list[str]:
    """N real subject ids spread evenly over the folds, so every fold keeps train and test subjects."""
    total = len(spec.subjects)
    if n is None or n >= total:
        return list(spec.subjects)
    if n < spec.num_folds + 1:
        raise FmaeError(f"--subjects {n}: {spec.name} needs at least {spec.num_folds + 1} subjects so every "
                        f"fold has test and train subjects")
    quota = [n // spec.num_folds + (k < n % spec.num_folds) for k in range(spec.num_folds)]
    picked: list[str] = []
    for fold, q in zip(spec.folds, quota):
        members = sorted(fold)  # evenly spaced through the sorted ids: both F and M subjects
        picked.extend(members[int(i)] for i in np.linspace(0, len(members) - 1, q).round())
    return sorted(picked)


def synthesize(spec: DatasetSpec, out: Path, options: SynthOptions,
               progress: Callable[[int, int], None] | None = None) -> SynthReport:
    if options.size < 32:
        raise FmaeError(f"--size {options.size}: images must be at least 32 px")
    if options.frames < 1:
        raise FmaeError(f"--frames {options.frames}: need at least one frame per subject")
    if options.nuisance < 0:
        raise FmaeError(f"--nuisance {options.nuisance:g}: must be 0 or more (0 = no pose, lighting or noise jitter)")
    if options.raw and spec.name not in RAW_FORMATS:
        raise FmaeError(f"--raw: {spec.name} has no raw annotation format (only {', '.join(RAW_FORMATS)})")
    scheme = spec.subject_scheme
    if options.layout and (scheme is None or options.layout not in scheme.layouts):
        known = ", ".join(scheme.layouts) if scheme else "none: it is written as image folders"
        raise FmaeError(f"--layout {options.layout}: {spec.name} layouts are {known}")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    writer = _write_au if spec.task == "au" else _write_fer
    report = writer(spec, out, options, progress or (lambda done, total: None))
    report.seconds = time.perf_counter() - start
    write_text_atomic(out / "synth.json", json.dumps({
        "dataset": spec.name, "generator": {"name": "fmae synth", "version": GENERATOR_VERSION},
        "images": report.images, "subjects": len(report.subjects),
        "options": {k: v for k, v in options.__dict__.items()}, "measured_rates": report.rates,
    }, indent=2) + "\n")
    return report


def _save_jpeg(img, path: Path, rng: np.random.Generator) -> None:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(70, 96)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _write_au(spec: DatasetSpec, out: Path, o: SynthOptions, progress) -> SynthReport:
    scheme = spec.subject_scheme
    assert scheme is not None
    template = scheme.layouts[o.layout or next(iter(scheme.layouts))]
    # A layout without the task (DISFA's: one video a subject) numbers frames on across tasks; numbers
    # restarting every task would write each task's frames over the previous one's.
    per_task = "{task" in template
    subjects = pick_subjects(spec, o.subjects)
    rates = np.array(spec.typical_rates)
    report = SynthReport(out, subjects=subjects)
    records: list[tuple[str, str, np.ndarray]] = []  # (subject, img_path, present)
    raw_rows: dict[tuple[str, int], list[tuple[int, np.ndarray, np.ndarray]]] = {}
    total = len(subjects) * o.frames
    for subject in subjects:
        identity = Identity.sample(subject_rng(o.seed, subject, "identity"))
        tendencies = SubjectTendencies.sample(rates, o.identity_strength, subject_rng(o.seed, subject, "aus"))
        rng = subject_rng(o.seed, subject, "frames")
        done = 0
        task = 0
        while done < o.frames:
            task += 1
            n = min(FRAMES_PER_TASK, o.frames - done)
            present, intensity = sample_au_video(spec.au_codes, tendencies, n, rng)
            for f in range(n):
                frame = f + 1  # within the task, as the raw annotations number it
                aus = {c: float(intensity[f, i]) for i, c in enumerate(spec.au_codes) if present[f, i]}
                img = render_face(identity, aus, o.size, Nuisance.sample(rng, o.nuisance))
                short = f"{subject[0]}{int(subject[1:]):02d}" if subject[0] in "FM" else subject
                number = frame if per_task else done + frame
                rel = template.format(subject=subject, short=short, task=task, frame=number)
                _save_jpeg(img, out / rel, rng)
                records.append((subject, rel, present[f]))
                raw_rows.setdefault((subject, task), []).append((frame, present[f], intensity[f]))
                report.images += 1
                progress(report.images, total)
            done += n

    assert len({rel for _, rel, _ in records}) == len(records), f"layout {template} names two frames alike"
    matrix = np.stack([r[2] for r in records])
    report.rates = {f"AU{c}": round(float(matrix[:, i].mean()), 4) for i, c in enumerate(spec.au_codes)}
    lines = [label_line(spec, rel, present) for _, rel, present in records]
    write_text_atomic(out / "labels.jsonl", "\n".join(lines) + "\n")
    report.files.append(out / "labels.jsonl")
    if o.per_fold_files:
        for k in range(1, spec.num_folds + 1):
            test = spec.test_subjects(k)
            for split, keep in (("train", lambda s: s not in test), ("test", lambda s: s in test)):
                path = out / f"fold{k}_{split}.jsonl"
                write_text_atomic(path, "".join(line + "\n" for line, (s, _, _) in zip(lines, records) if keep(s)))
                report.files.append(path)
    if o.raw:
        report.files.extend(_write_raw(spec, out, raw_rows, np.random.default_rng(o.seed)))
    return report


def _write_raw(spec: DatasetSpec, out: Path, rows, rng: np.random.Generator) -> list[Path]:
    """The datasets' own annotation files, for `fmae data prepare`."""
    files = []
    if RAW_FORMATS[spec.name] == "bp4d":
        # AU_OCC/F001_T1.csv: a header row of column numbers, then one row per frame; column c is AU c:
        # 1 present, 0 absent, 9 unknown (counted as absent). AUs the benchmark does not use are 9 or 0.
        for (subject, task), frames in rows.items():
            lines = [",".join(str(c) for c in range(BP4D_RAW_COLUMNS))]
            for frame, present, _ in frames:
                cells = ["9" if rng.random() < 0.3 else "0" for _ in range(BP4D_RAW_COLUMNS)]
                cells[0] = str(frame)
                for code, on in zip(spec.au_codes, present):
                    cells[code] = "1" if on else ("9" if rng.random() < 0.05 else "0")
                lines.append(",".join(cells))
            path = out / "AU_OCC" / f"{subject}_T{task}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
            files.append(path)
    else:
        # ActionUnit_Labels/SN001/SN001_au1.txt: "frame,intensity" (0-5); present = intensity >= 2.
        per_subject: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for (subject, task), frames in rows.items():
            offset = (task - 1) * FRAMES_PER_TASK
            per_subject.setdefault(subject, []).extend((offset + f, p, i) for f, p, i in frames)
        for subject, frames in per_subject.items():
            for a, code in enumerate(spec.au_codes):
                lines = []
                for frame, present, intensity in frames:
                    level = 2 + int(round(3 * (intensity[a] - 0.3) / 0.7)) if present[a] else int(rng.random() < 0.2)
                    lines.append(f"{frame},{level}")
                path = out / "ActionUnit_Labels" / subject / f"{subject}_au{code}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(lines) + "\n")
                files.append(path)
    return files


def _write_fer(spec: DatasetSpec, out: Path, o: SynthOptions, progress) -> SynthReport:
    n_ids = o.subjects or 60
    identities = [f"ID{i:04d}" for i in range(n_ids)]
    freq = np.array(spec.typical_rates) / np.sum(spec.typical_rates)
    total = n_ids * o.frames
    n_test = max(len(spec.classes), int(round(total * o.test_fraction)))
    rng = np.random.default_rng([o.seed, 7])
    train_classes = rng.choice(len(spec.classes), size=total - n_test, p=freq)
    if spec.balanced_test:  # like AffectNet's validation set: the same count for every class
        test_classes = np.resize(np.arange(len(spec.classes)), n_test)
    else:
        test_classes = rng.choice(len(spec.classes), size=n_test, p=freq)
    plan = [("train", int(c)) for c in train_classes] + [("test", int(c)) for c in test_classes]
    order = rng.permutation(len(plan))
    report = SynthReport(out, subjects=identities)
    looks = {s: Identity.sample(subject_rng(o.seed, s, "identity")) for s in identities}
    counts = np.zeros((2, len(spec.classes)), int)
    for n, j in enumerate(order):
        split, cls = plan[j]
        subject = identities[n % n_ids]
        aus, asym = expression_aus(spec.classes[cls], rng)
        img = render_face(looks[subject], aus, o.size, Nuisance.sample(rng, o.nuisance), asymmetry=asym)
        folder = str(spec.class_ids[cls]) if o.class_folders == "ids" else spec.classes[cls]
        _save_jpeg(img, out / split / folder / f"{subject}_{n:06d}.jpg", rng)
        counts[int(split == "test"), cls] += 1
        report.images += 1
        progress(report.images, total)
    report.rates = {name: round(float(counts[0, i] / max(1, counts[0].sum())), 4)
                    for i, name in enumerate(spec.classes)}
    report.files = [out / "train", out / "test"]
    return report

