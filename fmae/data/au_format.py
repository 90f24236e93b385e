"""The original's AU label line, as fmae writes it (`fmae prepare`, `fmae synth`) and reads it
(`au_labels.py`): `{"img_path": …, "AUs": [...]}`, one slot per AU of the dataset holding its code when
present and 999 when absent. Apart from the reader, so the writers need not import it (the reader
imports `locate`, which generates synthetic copies)."""

from __future__ import annotations

import json

import numpy as np

from fmae.registry import DatasetSpec

ABSENT = 999


def encode_aus(spec: DatasetSpec, present: np.ndarray) -> list[int]:
    """The original's slot list for one frame's 0/1 vector."""
    return [code if on else ABSENT for code, on in zip(spec.au_codes, present)]


def label_line(spec: DatasetSpec, img_path: str, present: np.ndarray) -> str:
    """One frame's JSON line."""
    return json.dumps({"img_path": img_path, "AUs": encode_aus(spec, present)})
