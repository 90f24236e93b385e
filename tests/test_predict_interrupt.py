"""`fmae predict` when things go wrong: bad inputs, a frame that does not decode, Ctrl-C and SIGTERM part-way
with --resume after, and the checks on --device and --batch-size (the fixtures and helpers are test_predict's)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_fmae
from test_predict import FACES, PHOTO, _rows, au_run, clip  # noqa: F401 (au_run and clip are fixtures)


# --- bad input -----------------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors_naming_the_file_and_nothing_is_overwritten(au_run, tmp_path):
    from fmae.runs import RunDir

    out = tmp_path / "o.csv"
    junk_video = tmp_path / "junk.mp4"
    junk_video.write_bytes(b"\x00not a video" * 100)
    junk_image = tmp_path / "junk.jpg"
    junk_image.write_bytes(b"garbage")
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    import cv2

    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48)).release()
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "readme.txt").write_text("no pictures here")
    for source, needle in ((tmp_path / "nope.mp4", "no such file"), (junk_video, "not a readable video"),
                           (junk_image, "not a readable image"), (text, "unsupported format"),
                           (empty, "zero frames"), (no_images, "no images in this folder")):
        assert_one_line_error(run_fmae("predict", source, "--run", au_run, "--out", out), str(source), needle)
    assert not out.exists()
    pretrain = RunDir.create(tmp_path / "runs", "pretrain-run", {"task": "pretrain", "model": "vit_tiny"}, {})
    pretrain.mark_ended("done", exit_code=0)
    queued = RunDir.create(tmp_path / "runs", "queued-run", {"task": "au", "dataset": "bp4d", "model": "vit_tiny"}, {})
    for run, needle in ((pretrain, "pretraining run"), (queued, "not done")):
        assert_one_line_error(run_fmae("predict", PHOTO, "--run", run.path, "--out", out), str(run.path), needle)
    out.write_text("precious\n")
    assert_one_line_error(run_fmae("predict", PHOTO, "--run", au_run, "--out", out), "exists", "--resume")
    assert out.read_text() == "precious\n"
    assert_one_line_error(run_fmae("predict", PHOTO, "--run", au_run, "--out", tmp_path / "x.csv",
                                   "--threshold", "1.5"), "--threshold")
    assert_one_line_error(run_fmae("predict", PHOTO, "--run", au_run, "--out", tmp_path / "x.csv",
                                   "--detect-size", "10"), "--detect-size 10", "at least 40 px")
    not_fmae = tmp_path / "weights.fmae"
    torch.save({"model": {"w": torch.zeros(1)}}, not_fmae)
    assert_one_line_error(run_fmae("predict", PHOTO, "--model", not_fmae, "--out", tmp_path / "y.csv"),
                          str(not_fmae), "not an fmae model file")


def test_an_undecodable_frame_inside_a_video_is_a_success_0_row_counted_at_the_end(au_run, tmp_path):
    import cv2

    face = cv2.resize(cv2.imread(str(FACES[0]))[30:222, 130:322], (160, 160))  # her head and shoulders
    good = tmp_path / "good.avi"
    writer = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 160))
    for i in range(6):
        writer.write(np.roll(face, i, axis=1))
    writer.release()
    data = bytearray(good.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[3] + 2:starts[3] + 400] = bytes(398)  # frame 4's JPEG data wiped
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data))
    out = tmp_path / "bad.csv"
    result = run_fmae("predict", bad, "--run", au_run, "--out", out, "-q")
    assert result.returncode == 0, result.stderr
    assert "1 frames did not decode" in result.stdout and "bad.avi: frames 4" in result.stdout
    rows = _rows(out)
    assert [r["frame"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r["success"] for r in rows] == ["1", "1", "1", "0", "1", "1"]
    assert json.loads(out.with_suffix(".json").read_text())["sources"][0]["undecodable_frames"] == [4]


# --- interruption and resume ------------------------------------------------------------------------------

def test_an_interrupted_prediction_leaves_a_valid_csv_and_resume_finishes_it_exactly(au_run, clip, tmp_path):
    from fmae.predict.model_file import from_run
    from fmae.predict.runner import Predictor, choose_threshold, predict
    from fmae.predict.sources import list_sources

    bundle = from_run(au_run)
    pred = Predictor(bundle, torch.device("cpu"))
    sources = list_sources([str(clip)])
    half = choose_threshold(bundle, "0.5")
    reference = tmp_path / "whole.csv"
    predict(sources, bundle, reference, threshold=half, batch_size=4, predictor=pred)
    out = tmp_path / "cut.csv"

    def ctrl_c(done, total, seconds):  # Ctrl-C arrives after the second batch
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(sources, bundle, out, threshold=half, batch_size=4, progress=ctrl_c, predictor=pred)
    assert [int(r["frame"]) for r in _rows(out)] == list(range(1, 9))  # whole frames only, a valid CSV
    assert json.loads(out.with_suffix(".json").read_text())["state"] == "interrupted"
    with open(out, "a") as f:
        f.write("9,0,0.26")  # a write cut short by a kill: --resume drops it
    stop = threading.Event()
    second = predict(sources, bundle, out, threshold=half, batch_size=4, resume=True, stop=stop, predictor=pred,
                     progress=lambda done, total, s: stop.set() if done >= 16 else None)
    assert second.interrupted and second.resumed_rows == 8  # a SIGTERM-style stop (the queue's cancel)
    final = predict(sources, bundle, out, threshold=half, batch_size=4, resume=True, predictor=pred)
    assert not final.interrupted and final.frames == 24 and final.faces == 24
    assert out.read_text() == reference.read_text()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["sessions"] == 3 and side["state"] == "complete" and side["totals"]["frames"] == 24
    from fmae.errors import FmaeError

    with pytest.raises(FmaeError, match="used threshold 0.5"):
        predict(sources, bundle, out, threshold=choose_threshold(bundle, "0.3"), resume=True, predictor=pred)
    with pytest.raises(FmaeError, match="detected faces with --detect-size 180"):
        predict(sources, bundle, out, threshold=half, resume=True, predictor=Predictor(bundle, torch.device("cpu"), 0))
    assert out.read_text() == reference.read_text()


# --- SIGTERM and the checks on the options ------------------------------------------------------------

def test_sigterm_to_the_command_ends_it_after_the_batch_in_flight_with_a_valid_csv(au_run, clip, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "term.csv"
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "fmae", "predict", str(clip), "--run", str(au_run), "--out", str(out),
                             "--batch-size", "4", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "continue with the same command and --resume" in stderr and "Traceback" not in stderr
    rows = _rows(out)
    assert 4 <= len(rows) < 24 and len(rows) % 4 == 0 and out.read_text().endswith("\n")  # whole batches
    assert json.loads(out.with_suffix(".json").read_text())["state"] == "interrupted"


def test_device_and_batch_size_are_checked(tmp_path):
    from fmae.errors import FmaeError
    from fmae.predict.runner import pick_device, predict

    assert pick_device("cpu").type == "cpu"
    with pytest.raises(FmaeError, match="--device gpu: use auto, cpu, cuda or cuda:N"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(FmaeError, match="no CUDA GPU is visible"):
            pick_device("cuda")
    with pytest.raises(FmaeError, match="--batch-size 0"):
        predict([], None, tmp_path / "x.csv", threshold=None, batch_size=0)
