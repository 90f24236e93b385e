"""One prediction: sources decoded ahead in a thread, faces detected a batch of frames at a time, crops run
through the model a batch of faces at a time, face ids tracked per video, rows appended to the CSV
after every batch (so an interruption loses at most the batch in flight, and `--resume` continues)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from fmae import __version__
from fmae.errors import FmaeError
from fmae.predict.detect import DETECT_SIZE, FaceDetector, crop_face, detection_copy
from fmae.predict.model_file import ModelBundle, parse_threshold
from fmae.predict.sources import Frame, Prefetch, Source, check_sources, frames_of
from fmae.predict.table import (CsvTable, au_outputs, columns, empty_row, face_row, fer_outputs, read_sidecar,
                                sidecar_path, write_sidecar)
from fmae.predict.tracking import Tracker
from fmae.runs import utc_now

SIDECAR_EVERY_S = 2.0  # the sidecar's counts are rewritten at most this often while running

Progress = Callable[[int, int, float], None]  # frames done, frames expected, seconds so far


@dataclass
class Threshold:
    which: str  # "0.5", "tuned" or "value"
    value: float
    label: str


def choose_threshold(bundle: ModelBundle, text: str) -> Threshold | None:
    """`--threshold 0.5|tuned|VALUE` for an AU model (None for FER, which takes the most probable class)."""
    text = str(text).strip()
    if bundle.task != "au":
        if text != "0.5":
            raise FmaeError(f"--threshold {text}: an expression (FER) model picks the most probable class; "
                            "--threshold is for AU models")
        return None
    parsed = parse_threshold(text)
    if parsed == "tuned":
        tuned = bundle.thresholds.get("tuned")
        if tuned is None:
            raise FmaeError("--threshold tuned: this model records no tuned threshold (its run has no test "
                            "record) — use 0.5 or a VALUE")
        return Threshold("tuned", float(tuned["value"]), str(tuned["label"]))
    value = float(parsed)
    if value == 0.5:
        return Threshold("0.5", 0.5, "0.5 (fixed)")
    return Threshold("value", value, f"{value:g} (given on the command line)")


@dataclass
class Result:
    csv: Path
    sidecar: Path
    frames: int = 0  # frames with a row, this session and before
    faces: int = 0
    no_face: int = 0  # decodable frames where the detector found none
    undecodable: dict[str, list[int]] = field(default_factory=dict)  # source -> frame numbers
    seconds: float = 0.0
    frames_this_session: int = 0
    resumed_rows: int = 0
    interrupted: bool = False

    @property
    def undecodable_count(self) -> int:
        return sum(len(v) for v in self.undecodable.values())


def pick_device(want: str) -> torch.device:
    if want not in ("auto", "cpu", "cuda") and not want.startswith("cuda:"):
        raise FmaeError(f"--device {want}: use auto, cpu, cuda or cuda:N")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise FmaeError(f"--device {want}: no CUDA GPU is visible to this process — use --device cpu")
    return torch.device(want)


def cpu_threads() -> int:
    """torch's threads for a prediction on the CPU: every core but one, which is the decode thread's
    (decoding and the detector's scaled copies). More threads than free cores make torch's workers wait
    on each other: on 2 busy cores, 2 threads ran MTCNN 2-5x slower than 1 (bench/results/predict_speed*)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class Predictor:
    """The detector and the model on one device, ready for frames."""

    def __init__(self, bundle: ModelBundle, device: torch.device, detect_size: int = DETECT_SIZE) -> None:
        from fmae.data.torch.transforms import eval_transform

        self.bundle, self.device = bundle, device
        self.detector = FaceDetector(device, detect_size)
        self.model = bundle.build(device)
        self.transform = eval_transform({"input_size": bundle.input_size})

    @torch.inference_mode()
    def probabilities(self, crops: list, batch_size: int) -> np.ndarray:
        """crops: [size, size] PIL faces -> [N, K] AU probabilities or class probabilities."""
        out = []
        for i in range(0, len(crops), batch_size):
            x = torch.stack([self.transform(c) for c in crops[i:i + batch_size]]).to(self.device)  # [B, 3, S, S]
            logits, _ = self.model(x)                                                              # [B, K]
            probs = torch.sigmoid(logits.float()) if self.bundle.task == "au" else torch.softmax(logits.float(), 1)
            out.append(probs.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.bundle.column_names())), np.float32)


def predict(sources: list[Source], bundle: ModelBundle, out: Path, *, threshold: Threshold | None,
            device: str = "auto", batch_size: int = 16, resume: bool = False, progress: Progress | None = None,
            stop: threading.Event | None = None, predictor: Predictor | None = None,
            expected: list[int] | None = None, detect_size: int = DETECT_SIZE, threads: int | None = None) -> Result:
    """`expected`: check_sources' frame counts, when the caller has checked the sources already.
    `threads`: torch's threads on the CPU while this runs (default cpu_threads(); restored after)."""
    if batch_size < 1:
        raise FmaeError(f"--batch-size {batch_size}: must be at least 1")
    if out.suffix.lower() != ".csv":
        raise FmaeError(f"--out {out}: name a .csv file")
    if out.is_dir():
        raise FmaeError(f"--out {out}: is a folder — name a .csv file")
    if not out.parent.is_dir():
        raise FmaeError(f"--out {out}: the folder {out.parent} does not exist — create it first")
    if out.exists() and not resume:
        raise FmaeError(f"--out {out}: exists — continue it with --resume, or choose another --out "
                        "(nothing was overwritten)")
    expected = expected if expected is not None else check_sources(sources)
    side = sidecar_path(out)
    names = bundle.column_names()
    header = columns(bundle.task, names)
    record = {"fmae_version": __version__, "state": "running", "started": utc_now(), "csv": out.name,
              "model": _model_record(bundle), "threshold": threshold.__dict__ if threshold else None,
              "batch_size": batch_size,
              "sources": [{**s.stamp(), "frames_expected": n} for s, n in zip(sources, expected)]}
    previous = read_sidecar(side) if resume else None
    if previous is not None:
        _check_same(previous, record, side, detect_size if predictor is None else predictor.detector.detect_size)
        record["started"] = previous.get("started", record["started"])
        record["sessions"] = int(previous.get("sessions", 1)) + 1
    pred = predictor or Predictor(bundle, pick_device(device), detect_size)
    record["device"] = str(pred.device)
    record["detector"] = pred.detector.describe()
    table = CsvTable(out, header)
    result = Result(out, side)
    keys = [s.key for s in sources]
    if resume:
        done = table.resume()
        result.resumed_rows = done.rows
        old = {s["path"]: s for s in previous.get("sources", [])}
        for key in keys:
            kept = done.frames.get(key, 0)
            result.undecodable[key] = [n for n in old.get(key, {}).get("undecodable_frames", []) if n <= kept]
    else:
        done = None
    trackers: dict[int, Tracker] = {}
    skip: dict[int, int] = {}
    if done is not None:
        for i, key in enumerate(keys):
            if key in done.frames:
                skip[i] = done.frames[key]
                t = trackers[i] = Tracker()
                ids, boxes = done.last_faces.get(key, ([], np.zeros((0, 4))))
                t.seed(ids, boxes, done.next_id.get(key, 0))
        result.frames = sum(skip.values())
    total = sum(expected)
    counts = {k: {"frames": 0, "faces": 0, "no_face": 0} for k in keys}
    if done is not None:  # what the CSV holds is the truth; the sidecar only tells undecodable from faceless
        for i, key in enumerate(keys):
            counts[key] = {"frames": skip.get(i, 0), "faces": done.faces.get(key, 0),
                           "no_face": done.empty.get(key, 0) - len(result.undecodable.get(key, []))}

    def save(state: str) -> None:
        record["state"], record["updated"] = state, utc_now()
        for s, key in zip(record["sources"], keys):
            c = counts[key]
            s.update(frames_done=c["frames"], faces=c["faces"], no_face_frames=c["no_face"],
                     undecodable_frames=result.undecodable.get(key, []))
        record["totals"] = {"frames": sum(c["frames"] for c in counts.values()),
                            "faces": sum(c["faces"] for c in counts.values()),
                            "no_face_frames": sum(c["no_face"] for c in counts.values()),
                            "undecodable_frames": result.undecodable_count}
        write_sidecar(side, record)

    save("running")
    if done is None:  # the sidecar first: a CSV never exists without the record --resume needs
        table.create()
    start = time.perf_counter()
    last_save = start
    stop = stop or threading.Event()
    feed = Prefetch(_with_copies(frames_of(sources, skip, stop), pred.detector.detect_size), depth=4 * batch_size)
    batch: list[Frame] = []
    threads_before = torch.get_num_threads()
    if pred.device.type == "cpu":
        torch.set_num_threads(threads or cpu_threads())

    def flush() -> None:
        rows = _rows(pred, batch, sources, trackers, threshold, batch_size, result, counts, len(header))
        table.append(rows)
        result.frames_this_session += len(batch)
        batch.clear()

    try:
        for frame in feed:
            batch.append(frame)
            if len(batch) >= batch_size:
                flush()
                now = time.perf_counter()
                if progress:
                    progress(result.frames + result.frames_this_session, total, now - start)
                if now - last_save >= SIDECAR_EVERY_S:
                    save("running")
                    last_save = now
            if stop.is_set():
                break
        if batch and not stop.is_set():
            flush()
        result.interrupted = stop.is_set()
    except KeyboardInterrupt:
        result.interrupted = True
        raise
    finally:
        torch.set_num_threads(threads_before)
        feed.close()
        table.close()
        result.seconds = time.perf_counter() - start
        result.frames = sum(c["frames"] for c in counts.values())
        result.faces = sum(c["faces"] for c in counts.values())
        result.no_face = sum(c["no_face"] for c in counts.values())
        save("interrupted" if result.interrupted else "complete")
        if progress and not result.interrupted:
            progress(result.frames, total, result.seconds)
    return result


def _with_copies(frames: Iterator[Frame], detect_size: int) -> Iterator[Frame]:
    """Each frame with the detector's scaled copy, made where the frames are decoded (the Prefetch thread)."""
    for f in frames:
        yield f if f.rgb is None else replace(f, detect_rgb=detection_copy(f.rgb, detect_size))


def _rows(pred: Predictor, batch: list[Frame], sources: list[Source], trackers: dict[int, Tracker],
          threshold: Threshold | None, batch_size: int, result: Result, counts: dict, width: int) -> list[list[str]]:
    decoded = [f for f in batch if f.rgb is not None]
    copies = [f.detect_rgb if f.detect_rgb is not None else detection_copy(f.rgb, pred.detector.detect_size)
              for f in decoded]
    found = dict(zip((id(f) for f in decoded), pred.detector.detect([f.rgb for f in decoded], copies)))
    size = pred.bundle.input_size
    crops = [crop_face(f.rgb, box, size) for f in decoded for box in found[id(f)].boxes]
    probs = pred.probabilities(crops, batch_size)
    names = pred.bundle.classes
    rows, k = [], 0
    for f in batch:
        src = sources[f.source]
        c = counts[src.key]
        c["frames"] += 1
        if f.rgb is None:
            result.undecodable.setdefault(src.key, []).append(f.number)
            rows.append(empty_row(f.number, f.timestamp, width, src.key))
            continue
        faces = found[id(f)]
        if len(faces.boxes) == 0:
            c["no_face"] += 1
            rows.append(empty_row(f.number, f.timestamp, width, src.key))
            continue
        tracker = trackers.get(f.source)
        if tracker is None:
            tracker = trackers[f.source] = Tracker()
            # An image is a source of one frame: only the current video's tracks are worth keeping.
            for old in [i for i in trackers if i != f.source]:
                del trackers[old]
        ids = tracker.assign(faces.boxes)
        order = np.argsort(ids, kind="stable")
        for j in order:
            p = probs[k + j]
            outputs = au_outputs(p, threshold.value) if threshold is not None else fer_outputs(p, names)
            rows.append(face_row(f.number, ids[j], f.timestamp, float(faces.scores[j]), faces.boxes[j], outputs, src.key))
        k += len(faces.boxes)
        c["faces"] += len(faces.boxes)
    return rows


def _model_record(bundle: ModelBundle) -> dict:
    return {"task": bundle.task, "dataset": bundle.dataset, "encoder": bundle.encoder, "input_size": bundle.input_size,
            "outputs": bundle.column_names(), "thresholds": bundle.thresholds, "trained_with_fmae": bundle.fmae_version,
            **{k: v for k, v in bundle.origin.items()}}


def _check_same(previous: dict, record: dict, side: Path, detect_size: int) -> None:
    """--resume continues the same prediction: same model, threshold, detector scale and sources, unchanged
    on disk."""
    def what(r: dict) -> tuple:
        m = r.get("model") or {}
        return (m.get("checkpoint") or m.get("model_file"), m.get("outputs"))

    if what(previous) != what(record):
        raise FmaeError(f"--resume: {side} was made with another model ({what(previous)[0]}) — pass the same "
                        "--run/--model, or write a new --out")
    if (previous.get("threshold") or {}).get("value") != (record.get("threshold") or {}).get("value"):
        raise FmaeError(f"--resume: {side} used threshold {(previous.get('threshold') or {}).get('value')} — "
                        "pass the same --threshold, or write a new --out")
    was = (previous.get("detector") or {}).get("detect_size", 0)  # a sidecar from before detect_size: full size
    if was != detect_size:
        raise FmaeError(f"--resume: {side} detected faces with --detect-size {was} — pass the same --detect-size, "
                        "or write a new --out")
    before = [(s.get("path"), s.get("size"), s.get("mtime")) for s in previous.get("sources", [])]
    now = [(s["path"], s["size"], s["mtime"]) for s in record["sources"]]
    if [b[0] for b in before] != [n[0] for n in now]:
        raise FmaeError(f"--resume: the sources differ from those {side} records — give the same SOURCEs in the "
                        "same order, or write a new --out")
    for b, n in zip(before, now):
        if b != n:
            raise FmaeError(f"--resume: {n[0]} changed since the prediction started (size or modification time) — "
                            "write a new --out")
