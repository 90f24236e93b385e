"""How long planned runs will take, from what past runs measured: the trainer logs `images_per_s` in
each train record of metrics.jsonl; a planned run's training is epochs × the images of its train split
(whole batches) at the median speed of past runs of the same model and input size on the same device.

Beside training, each run spends time starting up and evaluating: the median of that over the same past
runs (their wall time minus their training steps at their own speed) is added per run. Runs are counted
one after another. No torch: the app's Launch screen calls this in a worker.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from fmae.errors import FmaeError
from fmae.run_spec import Schedule, section_of
from fmae.runs import RunDir, RunInfo, list_runs

RECENT_RUNS = 8  # the newest matching runs whose speed counts: the machine and the code change over time
_DEVICE_LINE = re.compile(r"; device (\w+)")


@dataclass(frozen=True)
class Speed:
    images_per_s: float  # median over the runs of each run's median
    runs: list[str]  # the runs it comes from, newest first
    model: str
    device: str  # "cpu" | "cuda"
    input_size: int
    overhead_s: float | None = None  # a run's start-up and evaluation (median), when the runs ended

    def describe(self) -> str:
        n = len(self.runs)
        return (f"{self.images_per_s:.0f} images/s, the median of {n} past {self.model} run{'s' if n > 1 else ''} "
                f"at {self.input_size} px on {self.device}")


def run_device(info: RunInfo) -> str | None:
    """The device a past run trained on: its config when explicit, else what the trainer logged."""
    want = str(info.config.get("device") or "auto")
    if want in ("cpu", "cuda"):
        return want
    try:
        with open(RunDir(info.path).path / "train.log", encoding="utf-8", errors="replace") as f:
            for _, line in zip(range(200), f):
                found = _DEVICE_LINE.search(line)
                if found:
                    return "cuda" if found.group(1).startswith("cuda") else found.group(1)
    except OSError:
        pass
    gpus = info.status.get("gpus")
    return ("cuda" if gpus else "cpu") if isinstance(gpus, list) and info.status.get("started") else None


def measured_rate(run_path: Path) -> float | None:
    """The median images/s of one run's train records (None when it logged none)."""
    rates = []
    try:
        with open(Path(run_path) / "metrics.jsonl", encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"images_per_s"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line being written
                rate = rec.get("images_per_s") if isinstance(rec, dict) else None
                if rec.get("split") == "train" and isinstance(rate, (int, float)) and rate > 0:
                    rates.append(float(rate))
    except OSError:
        return None
    return statistics.median(rates) if rates else None


def past_speed(runs_dir: Path, model: str, device: str, input_size: int,
               infos: Iterable[RunInfo] | None = None) -> Speed | None:
    """The speed past training runs of `model` at `input_size` px measured on `device`, or None."""
    infos = list_runs(Path(runs_dir)) if infos is None else list(infos)
    rates, ids, overheads = [], [], []
    for info in sorted(infos, key=lambda i: i.id, reverse=True):
        cfg = info.config
        if (cfg.get("model") != model or cfg.get("task") not in ("au", "fer") or cfg.get("eval_checkpoint")
                or _int(cfg.get("input_size")) != input_size or run_device(info) != device):
            continue
        rate = measured_rate(info.path)
        if rate is not None:
            rates.append(rate)
            ids.append(info.id)
            overhead = _overhead(info, rate)
            if overhead is not None:
                overheads.append(overhead)
        if len(rates) >= RECENT_RUNS:
            break
    if not rates:
        return None
    return Speed(statistics.median(rates), ids, model, device, input_size,
                 statistics.median(overheads) if overheads else None)


def _overhead(info: RunInfo, rate: float) -> float | None:
    """A finished run's wall time beyond its training steps: start-up, evaluation, checkpoints."""
    from datetime import datetime

    st, cfg = info.status, info.config
    try:
        wall = (datetime.fromisoformat(st["ended"]) - datetime.fromisoformat(st["started"])).total_seconds()
        images = int(st["total_steps"]) * _step_images(cfg)
    except (KeyError, TypeError, ValueError):
        return None
    if info.state != "done" or wall <= 0:
        return None
    return max(0.0, wall - images / rate)


def _step_images(cfg: Mapping[str, Any]) -> int:
    """Images per optimizer step and process: the batch × its accumulation (the schedule's default, 1,
    for a run.toml written before accum_iter)."""
    return int(cfg["batch_size"]) * int(section_of(Schedule, cfg).accum_iter)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_SIZES: dict[tuple, int] = {}  # (dataset, fold, label files and their mtimes) -> train frames


def train_images(values: Mapping[str, Any]) -> int | None:
    """Images in a planned run's train split (from its label files), or None when the data is not there
    yet (synthetic data made on first use) or cannot be read."""
    from fmae.config import DatasetLocation
    from fmae.data.problems import Problems
    from fmae.registry import get_dataset

    spec = get_dataset(str(values["dataset"]))
    root = Path(values["data_root"]) if values.get("data_root") else None
    if root is None or not root.is_dir():
        return None
    problems = Problems()
    if values.get("task") == "fer":
        from fmae.data.fer_folders import read_fer_split, split_folder

        folder = split_folder(spec, root, "train")
        key = ("fer", spec.name, str(folder), _mtime(folder))
        if key not in _SIZES:
            split = read_fer_split(spec, root, "train", problems)
            if problems.errors:
                return None
            _SIZES[key] = len(split)
        return _SIZES[key]
    from fmae.data.au_labels import load_au_fold

    fold = int(values["fold"])
    files = [values.get(k) for k in ("labels", "train_labels", "test_labels")]
    key = ("au", spec.name, fold, *[(f, _mtime(Path(str(f).format(fold=fold)))) for f in files if f])
    if key not in _SIZES:
        loc = DatasetLocation(spec.name, root, Path(files[0]) if files[0] else None, files[1] or None,
                              files[2] or None, origin="run config")
        try:
            part = load_au_fold(spec, loc, fold, problems)
        except FmaeError:
            return None
        if problems.errors:
            return None
        _SIZES[key] = len(part.train)
    return _SIZES[key]


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None


@dataclass
class Estimate:
    seconds: float | None  # training time of every run together, one after another
    per_run: list[float | None]
    speed: Speed | None
    why_not: str | None  # when there is no estimate: what is missing

    def text(self) -> str:
        if self.seconds is None:
            return str(self.why_not)
        n = len(self.per_run)
        speed = self.speed
        assert speed is not None
        runs = "1 run" if n == 1 else f"{n} runs one after another"
        extra = (f" + {duration(speed.overhead_s)} a run for start-up and evaluation" if speed.overhead_s is not None
                 else "; start-up and evaluation come on top")
        return f"≈ {duration(self.seconds)} for {runs}: training at {speed.describe()}{extra}"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(runs_dir: Path, cells: list[Mapping[str, Any]], device: str,
             infos: Iterable[RunInfo] | None = None) -> Estimate:
    """How long the planned runs (`cells`: resolved configs of one model) train on `device`."""
    if not cells:
        return Estimate(0.0, [], None, "nothing to run")
    model, size = str(cells[0]["model"]), int(cells[0]["input_size"])
    speed = past_speed(runs_dir, model, device, size, infos)
    if speed is None:
        return Estimate(None, [], None, f"no past run of {model} at {size} px on {device} to estimate from")
    per_run: list[float | None] = []
    for values in cells:
        n = train_images(values)
        if n is None:
            return Estimate(None, [], speed, f"the {values['dataset']} data is not there yet (made on first use): "
                                             f"no estimate; {speed.describe()}")
        step = _step_images(values)
        images = (n // step) * step * int(values["epochs"])  # whole steps only, as the trainer drops the rest
        per_run.append(images / speed.images_per_s + (speed.overhead_s or 0.0))
    return Estimate(sum(s for s in per_run if s is not None), per_run, speed, None)
