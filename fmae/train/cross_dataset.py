"""Cross-dataset evaluation (the leave-one-dataset-out protocol): a model trained on one AU benchmark
scored on every frame of another, over the AUs both label (`fmae eval RUN --dataset disfa`).

The run keeps the model's own benchmark as `dataset` (its fold is the fold the model was trained on, its
heads have that benchmark's outputs) and names the frames' benchmark in `eval_dataset`; its data
location (`data_root`, `labels`, …) is the other benchmark's. Every subject of the other benchmark is
unseen, so all its frames are the test set: one label file whole, or the union of its per-fold test files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmae.config import DatasetLocation
from fmae.data.au_labels import AULabels, raise_missing_labels, read_au_jsonl
from fmae.data.image_check import check_image_files
from fmae.data.problems import Problems
from fmae.data.torch.cached import choose_cache, image_set
from fmae.data.torch.datasets import Splits
from fmae.registry import DatasetSpec, get_dataset, shared_au_codes


def read_every_frame(spec: DatasetSpec, loc: DatasetLocation) -> AULabels:
    """All labelled frames of an AU benchmark: its one label file, or every fold's test file."""
    problems = Problems()
    if loc.labels:
        labels = read_au_jsonl(Path(loc.labels), spec, problems)
    elif loc.train_labels and loc.test_labels:
        parts = [read_au_jsonl(Path(loc.test_labels.format(fold=k)), spec, problems)
                 for k in range(1, spec.num_folds + 1)]
        problems.raise_first()
        labels = AULabels(spec, parts[0].source, [p for x in parts for p in x.paths],
                          np.concatenate([x.labels for x in parts]), [s for x in parts for s in x.subjects],
                          [n for x in parts for n in x.lines])
    else:
        raise_missing_labels(spec, loc)
    problems.raise_first()
    return labels


def cross_dataset_data(cfg: Mapping[str, Any], source: DatasetSpec,
                       loc: DatasetLocation) -> tuple[Splits, AULabels, list[int], tuple[int, ...]]:
    """The other benchmark's frames as the test split, with its labels cut to the shared AUs; the model's
    output columns to score; the shared AU codes (in the model's order)."""
    target = get_dataset(str(cfg["eval_dataset"]))
    codes = shared_au_codes(source.name, target.name)
    frames = read_every_frame(target, replace(loc, name=target.name))
    frames = replace(frames, labels=frames.labels[:, [target.au_codes.index(c) for c in codes]])
    paths = [loc.root / p for p in frames.paths]  # type: ignore[operator]
    check_image_files({f"{target.title} frames": paths})
    cache, keys = choose_cache(cfg, loc.root, {"test": paths})
    test = image_set(cfg, paths, frames.labels.astype(np.float32), train=False, subjects=frames.subject_index(),
                     cache=cache, keys=keys.get("test"))
    describe = (f"cross-dataset: {source.title} model (fold {cfg['fold']}) on every {target.title} frame: "
                f"{len(frames)} frames of {len(set(frames.subjects))} subjects, scored over the AUs both label "
                + ", ".join(f"AU{c}" for c in codes))
    return Splits(test, test, describe), frames, [source.au_codes.index(c) for c in codes], codes
