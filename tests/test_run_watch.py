"""The run watchers' tails (fmae/run_watch.py on fmae/file_tail.py): train.log read from its end, the
prediction CSV by rows; only new bytes read, a cut last line waited for, a replaced file read again."""

from __future__ import annotations

import os
from pathlib import Path

from fmae.run_watch import LOG_MAX_PENDING, LOG_START_BYTES, CsvTail, LogTail


def test_log_tail_starts_near_the_end_and_reads_only_what_was_appended(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    lines = [f"step {i:06d} loss 0.5" for i in range(10_000)]  # ~210 KB, more than LOG_START_BYTES
    log.write_text("\n".join(lines) + "\nepoch 1  40%\r\repoch 1  80%\r")
    tail = LogTail(log)
    first = tail.read_new()
    assert first[-1] == lines[-1] and first[0] in lines  # no fragment of a cut first line
    assert len(first) < len(lines) and tail.bytes_read <= LOG_START_BYTES
    with open(log, "a") as f:
        f.write("epoch 1 100%\n")
    before = tail.bytes_read
    # the progress bar's redraws: what the terminal shows last
    assert tail.read_new() == ["epoch 1 100%"] and tail.bytes_read - before < 64
    with open(log, "a") as f:
        f.write("x" * (LOG_MAX_PENDING + 1))  # an unfinished line this long is shown anyway
    assert tail.read_new() == ["x" * (LOG_MAX_PENDING + 1)]
    new = tmp_path / "new.log"
    new.write_text("resumed\n")
    os.replace(new, log)
    assert tail.read_new() == ["resumed"] and tail.resets == 1
    assert LogTail(tmp_path / "missing.log").read_new() == []


def test_csv_tail_waits_for_whole_rows_and_restarts_when_cut(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    tail = CsvTail(path)
    assert tail.read_new() == 0 and tail.rows == []  # not written yet
    path.write_text("frame,face_id,AU01_p,AU02_p\n0,0,0.1,0.9\n1,0,0.2")
    assert tail.read_new() == 1 and tail.outputs() == ["AU01", "AU02"]
    with open(path, "a") as f:
        f.write(",0.8\n")
    assert tail.read_new() == 1 and [r["frame"] for r in tail.rows] == ["0", "1"]
    path.write_text("frame,face_id,AU01_p,AU02_p\n0,0,0.3,0.7\n")  # a resume rewrote it shorter
    assert tail.read_new() == 1 and tail.rows == [{"frame": "0", "face_id": "0", "AU01_p": "0.3", "AU02_p": "0.7"}]
    assert tail.resets == 1
