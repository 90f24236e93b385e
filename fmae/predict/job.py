"""A prediction as a job of the queue: a run folder whose run.toml says `task = "predict"` (the sources, the
model run, the threshold…), executed by `fmae exec RUN` like any run, so it takes a slot as training does.
Its CSV is `predictions.csv` in that folder, with the sidecar `predictions.json`.

Torch- and OpenCV-free: the app creates these folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmae.errors import FmaeError
from fmae.predict.detect import DETECT_SIZE, check_detect_size

TASK = "predict"
CSV_NAME = "predictions.csv"


def check_model_run(path: Path) -> dict[str, Any]:
    """The config of a finished AU or FER run (what `fmae predict --run` accepts), read without torch."""
    from fmae.runs import RunDir

    run = RunDir.open(path)
    cfg = run.read_config()
    task = cfg.get("task")
    if task not in ("au", "fer") or cfg.get("eval_checkpoint"):
        raise FmaeError(f"{run.path}: a {task} run — predict from a finished AU or FER fine-tuning run")
    state = run.read_status().get("state")
    if state != "done":
        raise FmaeError(f"{run.path}: the run is {state}, not done — predict from a finished run")
    return cfg


def again_hint(run_path: Path, cfg: dict[str, Any]) -> str:
    """What to do instead of `fmae exec` on a finished prediction run: its CSV is complete, so the
    command that predicts the same sources again, into a new file (a training run's hint, `fmae train
    --from`, would train a model)."""
    import shlex

    threshold = str(cfg.get("threshold", "0.5"))
    command = ["fmae", "predict", *map(str, cfg.get("sources", [])), "--run", str(cfg.get("source_run", "RUN")),
               *(["--threshold", threshold] if threshold != "0.5" else []), "--out", "NEW.csv"]
    csv = Path(run_path) / str(cfg.get("out", CSV_NAME))
    return (f"this prediction is done (its CSV: {csv}) — predict again into a new file: `{shlex.join(command)}`, "
            "or queue it again from the app's Predict screen")


def create_predict_run(runs_dir: Path, model_run: Path, sources: list[str], *, threshold: str = "0.5",
                       device: str = "auto", batch_size: int = 16, detect_size: int = DETECT_SIZE,
                       name: str | None = None,
                       command: list[str] | None = None):
    """A queued run folder that predicts `sources` with `model_run`'s model (checked here, before queueing)."""
    from fmae.predict.model_file import parse_threshold
    from fmae.predict.sources import list_sources
    from fmae.run_config import provenance
    from fmae.runs import RunDir, make_run_id

    cfg = check_model_run(model_run)
    parse_threshold(threshold)
    check_detect_size(int(detect_size))
    listed = list_sources(sources)  # a missing path or unsupported file is refused now, not in the queue
    if not listed:
        raise FmaeError("no sources to predict on")
    if int(batch_size) < 1:
        raise FmaeError(f"batch size {batch_size}: must be at least 1")
    if cfg.get("task") == "fer" and str(threshold) != "0.5":
        raise FmaeError("threshold: an expression (FER) model picks the most probable class; thresholds are for AU models")
    config = {
        "task": TASK, "dataset": cfg["dataset"], "model": cfg["model"], "seed": int(cfg.get("seed", 0)),
        "source_task": cfg["task"], "source_run": str(Path(model_run).resolve()),
        "source_run_id": Path(model_run).resolve().name,
        "sources": [str(Path(s).expanduser().resolve()) for s in sources],
        "threshold": str(threshold), "device": device, "batch_size": int(batch_size),
        "detect_size": int(detect_size), "out": CSV_NAME,
    }
    if cfg.get("fold") is not None:
        config["fold"] = int(cfg["fold"])
    run_id = make_run_id(str(cfg["dataset"]), str(cfg["model"]), int(cfg.get("seed", 0)), task=TASK,
                         fold=config.get("fold"), name=name)
    prov = provenance(command)
    prov["set_by"] = {k: "predict" for k in config}
    return RunDir.create(Path(runs_dir), run_id, config, prov)
