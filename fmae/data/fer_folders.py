"""FER benchmarks as image folders: `<root>/<split>/<class>/<image>` (torchvision's ImageFolder layout).

Class folders may be named by class name (any case) or by the dataset's own numeric id; the test split
may be called test, val or validation. A class folder the benchmark leaves out (AffectNet-7 reading an
AffectNet-8 copy skips Contempt) is skipped and said so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmae.data.image_files import is_image_name
from fmae.data.problems import Problems
from fmae.registry import DatasetSpec


@dataclass
class FERSplit:
    spec: DatasetSpec
    folder: Path
    paths: list[Path]
    targets: np.ndarray  # [N] int64 class index into spec.classes

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(self.spec.classes))


def split_folder(spec: DatasetSpec, root: Path, split: str) -> Path | None:
    names = ("train",) if split == "train" else spec.test_split_names
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def read_fer_split(spec: DatasetSpec, root: Path, split: str, problems: Problems) -> FERSplit:
    folder = split_folder(spec, root, split)
    if folder is None:
        wanted = " or ".join(("train",) if split == "train" else spec.test_split_names)
        problems.error(str(root), f"no {split} split: expected a folder {wanted}/ of class folders")
        return FERSplit(spec, root / split, [], np.zeros(0, np.int64))
    paths: list[Path] = []
    targets: list[int] = []
    skip = {s.lower() for s in spec.skip_classes}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        index = spec.class_index(class_dir.name)
        if index is None:
            if class_dir.name.lower() in skip:
                problems.warning(str(class_dir), f"skipped: {spec.title} leaves this class out")
            else:
                names = ", ".join(spec.classes)
                ids = ", ".join(map(str, spec.class_ids))
                problems.error(str(class_dir), f"unknown class folder for {spec.title} — name it after a class "
                                               f"({names}) or its id ({ids})")
            continue
        for image in sorted(class_dir.iterdir()):
            if is_image_name(image.name):
                paths.append(image)
                targets.append(index)
    split_targets = np.array(targets, dtype=np.int64)
    if not paths:
        problems.error(str(folder), f"the {split} split is empty: no images in its class folders")
    else:
        missing = [spec.classes[i] for i, n in enumerate(np.bincount(split_targets, minlength=len(spec.classes)))
                   if n == 0]
        if missing:
            problems.warning(str(folder), f"no images of class {', '.join(missing)}")
    return FERSplit(spec, folder, paths, split_targets)
