"""`fmae predict` and `fmae export` on real photographs and video (tests/data: public-domain and CC0 photos
from scikit-image's wheel, and a video panned across one of them; tests/data/NOTICE).

A model trained in seconds on synthetic faces cannot read real expressions: these tests check detection,
crops, tracking, the CSV's shape and that its numbers are the model's outputs — not accuracy."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_fmae

DATA = Path(__file__).parent / "data"
VIDEO = DATA / "astronaut_pan.mp4"  # 72 frames, 640x360, 30 fps, one face
PHOTO = DATA / "astronaut.jpg"
FACES = [PHOTO, DATA / "camera.png"]  # two people, each 512x512
TINY = ["--model", "vit_tiny", "--batch-size", "8", "--epochs", "1", "--set", "input_size=32",
        "--set", "num_workers=0", "--set", "warmup_epochs=0"]


def _train(make_synth, runs: Path, dataset: str) -> Path:
    root = make_synth(dataset)
    extra = ["--fold", "1", "--labels", root / "labels.jsonl"] if dataset == "bp4d" else []
    result = run_fmae("train", dataset, "--root", root, *extra, *TINY, "--runs-dir", runs, "-q")
    assert result.returncode == 0, result.stderr
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def au_run(make_synth, tmp_path_factory) -> Path:
    return _train(make_synth, tmp_path_factory.mktemp("predict_runs"), "bp4d")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder: two photos side by side (two faces), a blank picture (no face), one expression photo."""
    folder = tmp_path_factory.mktemp("media")
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in FACES)
    Image.fromarray(np.concatenate([a, b], axis=1)).save(folder / "two_faces.png")
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(folder / "blank.png")
    shutil.copy(FACES[0], folder / "one.jpg")
    return folder


def _first_frames(folder: Path, name: str, fourcc: str, n: int = 24) -> Path:
    """The shipped video's first n frames, rewritten with another codec/container."""
    import cv2

    cap, path = cv2.VideoCapture(str(VIDEO)), folder / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, (640, 360))
    for _ in range(n):
        writer.write(cap.read()[1])
    writer.release()
    return path


@pytest.fixture(scope="module")
def short_mp4(tmp_path_factory) -> Path:
    """The video's first 24 frames, still an mp4 (its container's timestamps): the CSV's tests need no more."""
    return _first_frames(tmp_path_factory.mktemp("short"), "short_face.mp4", "mp4v")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The video's first 24 frames (MJPEG): a shorter real video for the slower paths."""
    return _first_frames(tmp_path_factory.mktemp("clip"), "clip.avi", "MJPG")


def _presence_agrees(row: dict, au: str, threshold: float) -> bool:
    """AU_c is the exact probability against the threshold; AU_p is printed to 4 decimals."""
    p = float(row[f"{au}_p"])
    return abs(p - threshold) <= 5e-5 or row[f"{au}_c"] == str(int(p >= threshold))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def predicted(au_run, short_mp4, media, tmp_path_factory) -> Path:
    """The video and the media folder predicted once through the real command."""
    out = tmp_path_factory.mktemp("pred") / "out.csv"
    result = run_fmae("predict", short_mp4, media, "--run", au_run, "--out", out, "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "frames/s" in result.stderr and "ETA" in result.stderr  # the progress line
    assert "27 frames, 27 faces" in result.stdout, result.stdout  # 24 video frames + 3 images (2 + 0 + 1 faces)
    return out


# --- detection, crop, tracking ----------------------------------------------------------------------

def test_mtcnn_finds_the_face_in_a_real_photo_and_crops_it_as_the_original():
    from fmae.predict.detect import FaceDetector, crop_box, crop_face

    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    (faces,) = FaceDetector(torch.device("cpu")).detect([rgb])
    assert len(faces.boxes) == 1 and faces.scores[0] > 0.95
    x1, y1, x2, y2 = faces.boxes[0]
    h, w = rgb.shape[:2]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and (x2 - x1) > w / 8  # a face, not a speck
    left, top, right, bottom = crop_box(faces.boxes[0], w, h)
    assert (left, top) == (round(x1 - 0.05 * (x2 - x1)), round(y1 - 0.05 * (y2 - y1)))
    assert (right, bottom) == (round(x2 + 0.05 * (x2 - x1)), round(y2 + 0.05 * (y2 - y1)))
    assert crop_box(np.array([-10, -10, 50, 50]), 40, 40) == (0, 0, 40, 40)  # clipped to the frame
    assert crop_face(rgb, faces.boxes[0], 32).size == (32, 32)


def test_two_faces_keep_their_ids_by_overlap_when_they_move_and_swap_order():
    from fmae.predict.detect import FaceDetector
    from fmae.predict.tracking import Tracker

    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in FACES)
    frame = np.concatenate([a, b], axis=1)
    shifted = np.roll(frame, 12, axis=1)  # both faces move 12 px right in the next frame
    faces = FaceDetector(torch.device("cpu")).detect([frame, shifted])
    assert [len(f.boxes) for f in faces] == [2, 2]
    assert faces[0].boxes[0, 0] < 512 <= faces[0].boxes[1, 0]  # left to right: one face per photo
    tracker = Tracker()
    assert tracker.assign(faces[0].boxes) == [0, 1]
    assert tracker.assign(faces[1].boxes[::-1]) == [1, 0]  # listed in the other order: ids follow the boxes
    assert tracker.assign(np.array([[2000, 0, 2100, 100]], np.float32)) == [2]  # somewhere new: a new id


# --- the CSV ------------------------------------------------------------------------------------------

def test_csv_has_openface_columns_the_box_and_one_row_per_frame_and_face(predicted, short_mp4, media, au_run):
    rows = _rows(predicted)
    header = list(rows[0])
    assert header[:9] == ["frame", "face_id", "timestamp", "confidence", "success", "face_x", "face_y", "face_w", "face_h"]
    aus = ["AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]  # BP4D's
    assert header[9:] == [f"{a}_c" for a in aus] + [f"{a}_p" for a in aus] + ["source"]
    video = [r for r in rows if r["source"] == str(short_mp4.resolve())]
    assert [int(r["frame"]) for r in video] == list(range(1, 25))
    assert {r["face_id"] for r in video} == {"0"} and {r["success"] for r in video} == {"1"}
    times = np.array([float(r["timestamp"]) for r in video])
    assert np.allclose(np.diff(times), 1 / 30, atol=2e-3) and times[0] == 0.0  # the container's timestamps
    two = [r for r in rows if r["source"].endswith("two_faces.png")]
    assert [r["face_id"] for r in two] == ["0", "1"] and float(two[0]["face_x"]) < float(two[1]["face_x"])
    (blank,) = [r for r in rows if r["source"].endswith("blank.png")]
    assert (blank["success"], blank["face_id"], blank["AU01_p"], blank["face_x"]) == ("0", "-1", "", "")
    for r in video + two:  # presence is the probability at the chosen threshold (0.5 by default)
        assert all(_presence_agrees(r, a, 0.5) for a in aus)
    side = json.loads(predicted.with_suffix(".json").read_text())
    assert side["state"] == "complete" and side["threshold"]["value"] == 0.5
    assert side["model"]["run"] == au_run.name and side["model"]["encoder"] == "vit_tiny"
    assert side["detector"]["name"] == "MTCNN" and "facenet-pytorch 2.5.3" in side["detector"]["package"]
    (vid,) = [s for s in side["sources"] if s["kind"] == "video"]
    assert (vid["size"], vid["frames_done"], vid["faces"]) == (short_mp4.stat().st_size, 24, 24)
    assert vid["mtime"] == short_mp4.stat().st_mtime
    assert side["totals"] == {"frames": 27, "faces": 27, "no_face_frames": 1, "undecodable_frames": 0}
    assert side["fmae_version"]


def test_the_probabilities_are_the_models_own_outputs_on_the_crop(predicted, au_run):
    from fmae.data.torch.transforms import eval_transform
    from fmae.predict.detect import crop_face
    from fmae.predict.model_file import from_run

    row = next(r for r in _rows(predicted) if r["source"].endswith("one.jpg"))
    bundle = from_run(au_run)
    model = bundle.build(torch.device("cpu"))
    rgb = np.asarray(Image.open(FACES[0]).convert("RGB"))
    x, y, w, h = (float(row[k]) for k in ("face_x", "face_y", "face_w", "face_h"))
    crop = crop_face(rgb, np.array([x, y, x + w, y + h]), bundle.input_size)  # the box as printed (0.1 px)
    with torch.no_grad():
        probs = torch.sigmoid(model(eval_transform({"input_size": 32})(crop)[None])[0])[0].numpy()
    written = np.array([float(row[f"AU{c:02d}_p"]) for c in bundle.au_codes])
    assert np.abs(written - probs).max() < 2e-3


def test_export_writes_one_file_that_predict_model_reads_with_weights_only_tuned_threshold_and_all(au_run, predicted,
                                                                                                tmp_path):
    model_file = tmp_path / "tiny.fmae"
    result = run_fmae("export", au_run, "--out", model_file)
    assert result.returncode == 0, result.stderr
    payload = torch.load(model_file, weights_only=True)
    assert (payload["encoder"], payload["input_size"], payload["task"], payload["dataset"]) == ("vit_tiny", 32, "au", "bp4d")
    assert payload["au_codes"][:3] == [1, 2, 4] and set(payload["thresholds"]) == {"0.5", "tuned"}
    assert payload["recipe"]["model"] == "vit_tiny" and payload["fmae_version"]
    tuned = json.loads((au_run / "summary.json").read_text())["best"]["best_threshold"]
    assert payload["thresholds"]["tuned"]["value"] == tuned
    b = tmp_path / "file.csv"
    result = run_fmae("predict", FACES[0], "--model", model_file, "--out", b, "--threshold", "tuned", "-q")
    assert result.returncode == 0, result.stderr
    assert f"threshold {tuned:g} (tuned on the run's test fold)" in result.stdout
    (row,) = _rows(b)
    by_run = next(r for r in _rows(predicted) if r["source"].endswith("one.jpg"))  # the same photo, via --run
    same = [k for k in row if k.endswith("_p") or k.startswith("face_") or k == "confidence"]
    assert [row[k] for k in same] == [by_run[k] for k in same]
    assert all(_presence_agrees(row, au, tuned) for au in ("AU01", "AU12", "AU24"))
    side = json.loads(b.with_suffix(".json").read_text())
    assert side["threshold"]["which"] == "tuned" and "tuned on the test fold (fold 1)" in side["threshold"]["label"]
    assert side["model"]["model_file"] == str(model_file.resolve())
    assert_one_line_error(run_fmae("export", au_run, "--out", model_file), "exists")


# --- the queue's form, and what stays light ------------------------------------------------------------------

def test_a_predict_run_folder_runs_through_fmae_exec(au_run, media, tmp_path):
    from fmae.predict.job import create_predict_run
    from fmae.runs import RunDir

    run = create_predict_run(tmp_path / "runs", au_run, [str(media)], threshold="tuned")
    cfg = run.read_config()
    assert cfg["task"] == "predict" and cfg["source_run_id"] == au_run.name and "-predict-bp4d-f1-" in run.id
    result = run_fmae("exec", run.path)
    assert result.returncode == 0, result.stderr
    assert RunDir(run.path).read_status()["state"] == "done"
    rows = _rows(run.path / "predictions.csv")
    assert len(rows) == 4 and sum(r["success"] == "1" for r in rows) == 3
    side = json.loads((run.path / "predictions.json").read_text())
    assert side["threshold"]["which"] == "tuned"
    # Again on the finished prediction: the hint predicts again (not `fmae train --from`, which trains).
    before = (run.path / "predictions.csv").read_text()
    line = assert_one_line_error(run_fmae("exec", run.path), "this prediction is done", "fmae predict",
                                 f"--run {au_run.resolve()}", "--threshold tuned", "--out NEW.csv")
    assert "fmae train" not in line and str(media.resolve()) in line
    assert (run.path / "predictions.csv").read_text() == before


def test_fmae_help_the_job_module_and_the_app_import_no_torch_cv2_or_detector():
    import subprocess
    import sys

    code = ("import sys, fmae.cli, fmae.predict.job, fmae.predict.sources, fmae_tui.app, fmae_tui.screens.predict; "
            "print(sorted(m for m in ('torch', 'cv2', 'facenet_pytorch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_predict_and_export_help_read_whole_at_80_columns():
    from typer.testing import CliRunner

    from fmae.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["--help"], terminal_width=80, env={"COLUMNS": "80", "NO_COLOR": "1"}).output
    first = {"predict": "AUs or expressions for each face in images and videos.",
             "export": "A finished run as one file, for `fmae predict --model`."}
    for command, sentence in first.items():
        lines = listing.splitlines()
        (at,) = [i for i, ln in enumerate(lines) if ln.startswith(f"│ {command} ")]
        assert sentence in lines[at]  # the whole sentence on its one line of the command list
        assert lines[at + 1][1:12].strip()  # and the next line is the next command, not the sentence's rest
        own = runner.invoke(app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"}).output
        paragraphs: list[list[str]] = [[]]
        for ln in own.splitlines():  # rich pads blank lines with spaces
            if ln.strip():
                paragraphs[-1].append(ln.strip())
            elif paragraphs[-1]:
                paragraphs.append([])
        assert paragraphs[1] == [sentence]  # after "Usage: …"
        # the details: rewrapped to the width, not broken where the source's lines end
        assert len(paragraphs[2]) >= 2 and all(len(ln) >= 60 for ln in paragraphs[2][:-1]), paragraphs[2]


# --- the app ----------------------------------------------------------------------------------------------

async def test_the_app_queues_a_prediction_from_a_finished_run_and_draws_its_timeline(au_run, clip, tmp_path):
    from textual.widgets import Input

    from fmae.config import default_config_text
    from fmae.queue import Queue
    from fmae.scheduler import stop
    from fmae_tui.app import create_app
    from fmae_tui.screens.confirm import ConfirmScreen
    from fmae_tui.screens.predict import PredictScreen
    from fmae_tui.screens.run import RunScreen
    from tui_support import screen_text, squash, wait_until

    config = tmp_path / "fmae.toml"
    config.write_text(default_config_text(), encoding="utf-8")
    runs = au_run.parent
    app = create_app(config, runs)
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            app.push_screen(RunScreen(au_run))
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and "run.toml" in app.screen._files,
                             what="run screen")
            await pilot.press("p")
            await wait_until(pilot, lambda: isinstance(app.screen, PredictScreen), what="predict screen")
            screen = app.screen
            assert squash("will not read real expressions well") in squash(screen_text(app))
            field = screen.query_one("#predict-source", Input)
            field.focus()
            await pilot.press(*str(clip))
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
            assert "Queue a prediction on clip.avi?" in screen_text(app)
            await pilot.press("y")
            # queueing waits for the scheduler it starts (up to 10 s: a loaded machine needs them)
            await wait_until(pilot, lambda: screen.predict_run is not None, timeout=30, what="queued")
            job = Queue(runs).get_run(screen.predict_run.name)
            assert job is not None and job.task == "predict"  # a queue job like any run: it gets a slot
            await wait_until(pilot, lambda: screen.status.get("state") == "done" and screen.tail is not None
                             and len(screen.tail.rows) == 24, timeout=240, what="prediction done")
            await pilot.pause(0.3)
            plot = screen.query_one("#predict-plot")
            assert list(plot.series) == ["AU01", "AU02", "AU04", "AU06"]  # face 0's first four AUs
            xs, ys = plot.series["AU01"]
            assert xs == [float(i) for i in range(1, 25)] and all(0.0 <= y <= 1.0 for y in ys)
            csv_path = screen.predict_run / "predictions.csv"
            assert ys == [float(r["AU01_p"]) for r in _rows(csv_path)]
            ticks = [line.split("┤")[0] for line in plot.plt.build().splitlines() if "┤" in line]
            assert ticks[0].strip().endswith("1.00") and ticks[-1].strip().endswith("0.00")  # 0-1, not fitted
            assert squash(f"CSV: {csv_path}") in squash(screen_text(app)) and "done, 24/24 frames" in screen_text(app)
            await pilot.press("a")
            assert list(plot.series) == ["AU07", "AU10", "AU12", "AU14"]
    finally:
        stop(runs, wait=30)


def test_an_expression_model_writes_class_probabilities_and_the_most_probable_class(tmp_path):
    """FER columns, with a freshly initialised RAF-DB model (the columns and their arithmetic, not accuracy)."""
    from fmae.models.encoders import create_encoder
    from fmae.models.heads import FineTuneModel
    from fmae.predict.model_file import ModelBundle
    from fmae.predict.runner import choose_threshold, predict
    from fmae.predict.sources import list_sources
    from fmae.registry import get_dataset
    from fmae.errors import FmaeError

    classes = list(get_dataset("rafdb").classes)
    torch.manual_seed(0)
    net = FineTuneModel(create_encoder("vit_tiny", img_size=32), len(classes))
    torch.nn.init.normal_(net.head.weight, std=0.5)  # outputs that differ between classes
    bundle = ModelBundle(task="fer", dataset="rafdb", encoder="vit_tiny", input_size=32, au_codes=[], classes=classes,
                         thresholds={}, recipe={}, state=net.state_dict(), origin={"model_file": "in-test"})
    with pytest.raises(FmaeError, match="--threshold is for AU models"):
        choose_threshold(bundle, "tuned")
    out = tmp_path / "fer.csv"
    threads = torch.get_num_threads()
    predict(list_sources([str(p) for p in FACES]), bundle, out, threshold=choose_threshold(bundle, "0.5"))
    assert torch.get_num_threads() == threads  # cores - 1 while predicting, then as it was
    rows = _rows(out)
    assert list(rows[0])[9:] == [f"{c}_p" for c in classes] + ["expression", "source"]
    assert len(rows) == 2 and {r["success"] for r in rows} == {"1"}
    for r in rows:
        probs = [float(r[f"{c}_p"]) for c in classes]
        assert abs(sum(probs) - 1) < 1e-3 and r["expression"] == classes[int(np.argmax(probs))]


def test_sources_from_arguments_folders_and_standard_input(media, tmp_path):
    from fmae.errors import FmaeError
    from fmae.predict.sources import list_sources

    (media / ".hidden").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(media / ".hidden" / "skipped.png")
    found = list_sources(["-", str(PHOTO)], stdin=[f"{VIDEO}\n", "\n", f"{media}\n"])
    assert [(s.path.name, s.kind) for s in found] == [
        ("astronaut_pan.mp4", "video"), ("blank.png", "image"), ("one.jpg", "image"), ("two_faces.png", "image"),
        ("astronaut.jpg", "image")]  # stdin's paths in order, a folder sorted, hidden folders skipped
    assert found[0].size == VIDEO.stat().st_size
    with pytest.raises(FmaeError, match="no paths on standard input"):
        list_sources(["-"], stdin=["\n"])
    with pytest.raises(FmaeError, match="from standard input"):
        list_sources(["-"], stdin=[str(tmp_path / "gone.mp4")])
