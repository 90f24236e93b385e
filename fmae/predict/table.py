"""The prediction CSV (one row per frame and face; docs/predict.md lists the columns) and its sidecar JSON.

Rows are appended a batch at a time with one write and a flush, so an interrupted prediction leaves a
valid CSV of the frames done (at most a half-written last line, which `--resume` cuts off, with the
rest of that frame's rows, before going on).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmae.atomic_write import write_text_atomic
from fmae.errors import FmaeError

LEADING = ("frame", "face_id", "timestamp", "confidence", "success")  # OpenFace's first columns
BOX = ("face_x", "face_y", "face_w", "face_h")
NO_FACE_ID = -1  # face_id of a frame's success = 0 row (no face found, or the frame did not decode)


def columns(task: str, names: Sequence[str]) -> list[str]:
    if task == "au":
        outputs = [f"{n}_c" for n in names] + [f"{n}_p" for n in names]
    else:
        outputs = [f"{n}_p" for n in names] + ["expression"]
    return [*LEADING, *BOX, *outputs, "source"]


def face_row(frame: int, face_id: int, t: float, score: float, box: np.ndarray, outputs: list[str],
             source: str) -> list[str]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [str(frame), str(face_id), f"{t:.3f}", f"{score:.4f}", "1",
            f"{x1:.1f}", f"{y1:.1f}", f"{x2 - x1:.1f}", f"{y2 - y1:.1f}", *outputs, source]


def empty_row(frame: int, t: float, width: int, source: str) -> list[str]:
    """A frame without a face, or one that did not decode: OpenFace's success = 0, blank outputs."""
    return [str(frame), str(NO_FACE_ID), f"{t:.3f}", "0", "0", *[""] * (width - len(LEADING) - 1), source]


def au_outputs(probs: np.ndarray, threshold: float) -> list[str]:
    return [str(int(p >= threshold)) for p in probs] + [f"{p:.4f}" for p in probs]


def fer_outputs(probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    return [f"{p:.4f}" for p in probs] + [classes[int(np.argmax(probs))]]


@dataclass
class Resumed:
    """What a previous session of the same prediction left: per source key, the last frame done, that
    frame's faces (to continue the tracks) and the next free face id."""

    frames: dict[str, int] = field(default_factory=dict)
    last_faces: dict[str, tuple[list[int], np.ndarray]] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)
    faces: dict[str, int] = field(default_factory=dict)  # success = 1 rows
    empty: dict[str, int] = field(default_factory=dict)  # success = 0 rows (no face, or undecodable)
    rows: int = 0
    dropped_partial: bool = False


class CsvTable:
    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header = path, header
        self._file: io.TextIOBase | None = None

    def create(self) -> None:
        write_text_atomic(self.path, _line(self.header))
        self._file = open(self.path, "a", encoding="utf-8", newline="")

    def resume(self) -> Resumed:
        """Open an existing CSV for appending, after cutting off an unfinished last frame."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise FmaeError(f"--resume: {self.path} does not exist — run without --resume to start it") from None
        first, _, _ = data.partition(b"\n")
        if next(csv.reader([first.decode("utf-8", "replace")]), []) != self.header:
            raise FmaeError(f"--resume: {self.path} has other columns than this model writes — it was made by "
                            "another model or fmae version; write a new --out")
        keep = len(data)
        partial = not data.endswith(b"\n")
        lines = data.split(b"\n")
        cut = lines[-1] if partial else b""
        keep -= len(cut)
        lines = lines[1:-1]
        src_col, frame_col = self.header.index("source"), 0
        if partial and lines:
            # A write cut short: drop it, and the complete rows of the frame it may continue (its frame
            # number matches the last row's, or is itself cut), so a frame is kept whole or not at all.
            head = cut.split(b",", 1)
            last = _parse(lines[-1])
            if len(head) < 2 or head[0].decode("utf-8", "replace") == last[frame_col]:
                while lines and _same_frame(_parse(lines[-1]), last, src_col, frame_col):
                    keep -= len(lines[-1]) + 1
                    lines.pop()
        done = Resumed(dropped_partial=partial, rows=len(lines))
        for raw in lines:
            row = _parse(raw)
            if len(row) != len(self.header):
                raise FmaeError(f"--resume: {self.path}: a row with {len(row)} fields, not {len(self.header)} — "
                                "the file was edited; write a new --out")
            key, frame, fid = row[src_col], int(row[frame_col]), int(row[1])
            if done.frames.get(key) != frame:
                done.last_faces[key] = ([], np.zeros((0, 4), np.float32))
            done.frames[key] = frame
            if fid == NO_FACE_ID:
                done.empty[key] = done.empty.get(key, 0) + 1
            else:
                done.faces[key] = done.faces.get(key, 0) + 1
                x, y, w, h = (float(v) for v in row[5:9])
                ids, boxes = done.last_faces[key]
                done.last_faces[key] = (ids + [fid], np.vstack([boxes, [[x, y, x + w, y + h]]]).astype(np.float32))
                done.next_id[key] = max(done.next_id.get(key, 0), fid + 1)
        if keep != len(data):
            os.truncate(self.path, keep)
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        return done

    def append(self, rows: list[list[str]]) -> None:
        assert self._file is not None
        if rows:
            self._file.write("".join(_line(r) for r in rows))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _line(fields: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def _parse(raw: bytes) -> list[str]:
    return next(csv.reader([raw.decode("utf-8")]), [])


def _same_frame(a: list[str], b: list[str], src_col: int, frame_col: int) -> bool:
    return len(a) > src_col and len(b) > src_col and a[src_col] == b[src_col] and a[frame_col] == b[frame_col]


# --- the sidecar --------------------------------------------------------------------------------------

def sidecar_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".json") if csv_path.suffix == ".json" else csv_path.with_suffix(".json")


def write_sidecar(path: Path, record: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(_plain(record), indent=1, sort_keys=False) + "\n")


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FmaeError(f"--resume: {path} is missing (the CSV's sidecar) — run without --resume into a new --out") from None
    except (ValueError, UnicodeDecodeError):
        raise FmaeError(f"--resume: {path} is not valid JSON — run without --resume into a new --out") from None
    if not isinstance(data, dict):
        raise FmaeError(f"--resume: {path} is not a JSON object — run without --resume into a new --out")
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value
