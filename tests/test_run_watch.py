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


def test_a_new_scanners_first_look_reads_only_the_folders_that_changed(tmp_path: Path, monkeypatch) -> None:
    """The app's first look in a new process starts from the runs folder's index (RunIndex): what it shows
    is what reading every folder shows, and only a changed folder is read again."""
    import json

    from fmae import run_watch
    from fmae.runs import RunDir, make_run_id

    monkeypatch.setattr(run_watch, "RACY_NS", 0)  # the folders were written just now
    runs = tmp_path / "runs"
    made = []
    for seed in range(3):
        run = RunDir.create(runs, make_run_id("bp4d", "vit_tiny", seed, fold=1, lambda_id=0.0),
                            {"task": "au", "dataset": "bp4d", "seed": seed, "model": "vit_tiny", "epochs": 2}, {})
        run.mark_running(pid=1, host="h", gpus="")
        run.append_metrics({"split": "train", "epoch": 1, "step": 4, "images_per_s": 120.0 + seed})
        run.write_summary({"metric": "f1_best_mean", "best_value": 0.5 + seed / 10, "best_epoch": 1,
                           "best": {"epoch": 1, "f1_best": {"AU1": 0.5}, "best_threshold": 0.4}})
        run.mark_ended("done", exit_code=0)
        made.append(run)
    made[0].write_tags(["keep"])

    def new_process_look() -> tuple[run_watch.RunScanner, dict]:
        monkeypatch.setattr(run_watch, "_SHARED", {})  # nothing read by another scanner of this process
        scanner = run_watch.RunScanner(runs, slim=True)
        changed, _ = scanner.scan()
        return scanner, {info.id: (info.state, info.config, info.status, info.summary, tags, rate)
                         for info, tags, rate in changed}

    first, truth = new_process_look()
    assert first.loads == 3 and first.index_hits == 0 and (runs / run_watch.INDEX_NAME).is_file()
    assert truth[made[0].path.name][4] == ["keep"] and truth[made[2].path.name][5] == 122.0
    written = os.stat(runs / run_watch.INDEX_NAME)
    second, shown = new_process_look()
    assert second.loads == 0 and second.index_hits == 3 and shown == truth
    again_st = os.stat(runs / run_watch.INDEX_NAME)  # nothing changed: not written again
    assert (again_st.st_ino, again_st.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    made[1].write_tags(["new"])  # an atomic write: the folder's mtime moves
    third, shown = new_process_look()
    assert third.loads == 1 and shown[made[1].path.name][4] == ["new"]
    assert {k: v for k, v in shown.items() if k != made[1].path.name} == \
        {k: v for k, v in truth.items() if k != made[1].path.name}
    (runs / run_watch.INDEX_NAME).write_text("{not json")  # damaged: every folder is read, and it is made again
    fourth, again = new_process_look()
    assert fourth.loads == 3 and again == shown
    header, *entries = (runs / run_watch.INDEX_NAME).read_text().splitlines()
    assert json.loads(header)["fmae_runs_table"] == run_watch.INDEX_VERSION
    assert [json.loads(e.partition("\t")[0])[0] for e in entries] == sorted(truth, reverse=True)  # a run a line, newest first
    made[2].path.rename(runs / ".gone")  # a run gone: the others still come from the index, which forgets it
    fifth, left = new_process_look()
    assert fifth.loads == 0 and left == {k: v for k, v in again.items() if k != made[2].path.name}
    assert len((runs / run_watch.INDEX_NAME).read_text().splitlines()) == 3


def test_the_index_is_written_by_the_scanner_that_keeps_it_and_when_it_asks(tmp_path: Path, monkeypatch) -> None:
    """The Runs screen's first look leaves the index to write until its rows are shown (`save=False`,
    then `save_index`); the alerts' scanner beside it reads the index but never writes it."""
    from fmae import run_watch
    from fmae.runs import RunDir, make_run_id

    monkeypatch.setattr(run_watch, "RACY_NS", 0)
    runs = tmp_path / "runs"
    made = [RunDir.create(runs, make_run_id("bp4d", "vit_tiny", seed, fold=1, lambda_id=0.0),
                          {"task": "au", "dataset": "bp4d", "seed": seed}, {}) for seed in range(2)]
    index = runs / run_watch.INDEX_NAME
    monkeypatch.setattr(run_watch, "_SHARED", {})
    screen = run_watch.RunScanner(runs, slim=True)
    changed, _ = screen.scan(save=False)
    assert len(changed) == 2 and screen.index_due and not index.exists()
    screen.save_index()
    assert not screen.index_due and len(index.read_text().splitlines()) == 3
    written = index.stat()
    made[0].write_tags(["x"])  # a folder changed: a new process's alerts read it, and leave the index be
    monkeypatch.setattr(run_watch, "_SHARED", {})
    alerts = run_watch.RunScanner(runs, slim=True, writes_index=False)
    changed, _ = alerts.scan()
    assert alerts.loads == 1 and alerts.index_hits == 1 and not alerts.index_due
    assert {info.id: tags for info, tags, _ in changed}[made[0].path.name] == ["x"]
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_a_second_scanner_takes_the_first_ones_look_and_sees_a_change_at_its_next(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """The alerts' scanner beside the Runs screen's: its first look takes what the first read, without a
    stat a folder; a folder changed since is read at its next look."""
    from fmae import run_watch
    from fmae.runs import RunDir, make_run_id

    monkeypatch.setattr(run_watch, "RACY_NS", 0)
    monkeypatch.setattr(run_watch, "_SHARED", {})
    runs = tmp_path / "runs"
    made = [RunDir.create(runs, make_run_id("bp4d", "vit_tiny", seed, fold=1, lambda_id=0.0),
                          {"task": "au", "dataset": "bp4d", "seed": seed}, {}) for seed in range(2)]
    run_watch.RunScanner(runs, slim=True).scan(save=False)
    made[0].write_tags(["x"])
    second = run_watch.RunScanner(runs, slim=True, writes_index=False)
    changed, _ = second.scan()
    assert second.loads == 0 and len(changed) == 2 and all(tags == [] for _, tags, _ in changed)  # as first read
    changed, _ = second.scan()
    assert second.loads == 1 and [(info.id, tags) for info, tags, _ in changed] == [(made[0].path.name, ["x"])]


def test_the_index_gives_back_the_owners_extras_of_unchanged_runs_and_reads_an_old_index_once(
        tmp_path: Path, monkeypatch) -> None:
    """The Runs table's headline and creation kept in the index beside each run (RunScanner.extras): a new
    process's first look makes the same RunRows without parsing a summary; a changed run's extra is made
    again; another tag's extras are not taken; a release-3 index is read, then written in this form."""
    import json

    from fmae import run_index, run_watch
    from fmae.runs import RunDir, make_run_id
    from fmae_tui.widgets import run_rows as rows_module
    from fmae_tui.widgets.run_rows import EXTRAS_TAG, run_rows

    monkeypatch.setattr(run_watch, "RACY_NS", 0)
    runs = tmp_path / "runs"
    made = []
    for seed in range(2):
        run = RunDir.create(runs, make_run_id("bp4d", "vit_tiny", seed, fold=1, lambda_id=0.0),
                            {"task": "au", "dataset": "bp4d", "seed": seed}, {})
        run.write_summary({"metric": "f1_best_mean", "best_value": 0.5 + seed / 10, "best_epoch": 1,
                           "best": {"epoch": 1, "best_threshold": 0.99 if seed else 0.4}})
        run.mark_ended("done", exit_code=0)
        made.append(run)

    def look(tag: str | None = EXTRAS_TAG) -> tuple[run_watch.RunScanner, dict]:
        monkeypatch.setattr(run_watch, "_SHARED", {})
        scanner = run_watch.RunScanner(runs, slim=True, extras_tag=tag)
        parts: list = []
        changed, _ = scanner.scan(part=lambda got: parts.extend(run_rows(got, scanner.extras)), save=False)
        parts += run_rows(changed, scanner.extras)
        scanner.save_index()
        return scanner, {row.info.id: (row.head, row.created, row.hay, row.info.summary) for row in parts}

    truth = {row.info.id: (row.head, row.created, row.hay, row.info.summary)
             for row in run_rows(run_watch.RunScanner(runs, slim=True).scan(full=True)[0])}
    assert truth[made[1].path.name][0] == (0.6, "F1 best-thr", True)  # its best threshold at the grid's edge
    first, shown = look()
    assert first.loads == 2 and shown == truth
    parsed: list = []
    real = rows_module.as_summary
    monkeypatch.setattr(rows_module, "as_summary", lambda s: parsed.append(s) or real(s))
    second, shown = look()
    assert second.index_hits == 2 and shown == truth and parsed == []  # no summary parsed
    changed = made[0].path.name
    made[0].write_tags(["x"])  # changed: read again, its extra made again (and only its)
    index = runs / run_watch.INDEX_NAME
    before = index.read_bytes().splitlines()
    encoded: list = []
    text = run_index.summary_text
    monkeypatch.setattr(run_index, "summary_text", lambda info, *a: encoded.append(info.id) or text(info, *a))
    third, shown = look()
    assert third.loads == 1 and len(parsed) == 1 and "x" in shown[changed][2]
    assert encoded == [changed]  # only the changed run's line made anew
    after = index.read_bytes().splitlines()
    assert after[0] == before[0] and after[1:] != before[1:] and [
        line for line in after[1:] if changed not in line.decode()] == [
        line for line in before[1:] if changed not in line.decode()]  # the unchanged run copied as it was read
    truth[changed] = shown[changed]
    assert shown == truth
    parsed.clear()
    fourth, shown = look(tag="another")  # another owner's extras: the runs taken, the extras made anew
    assert fourth.index_hits == 2 and len(parsed) == 2 and shown == truth
    header, *entries = index.read_text().splitlines()
    assert json.loads(header) == {"fmae_runs_table": run_watch.INDEX_VERSION, "extras": "another"}
    heads = [json.loads(e.partition("\t")[0]) for e in entries]  # [id, sig, state, config, status, problem, ...]
    summaries = [json.loads(e.partition("\t")[2]) for e in entries]
    v4 = [[*h[:5], s, *h[5:]] for h, s in zip(heads, summaries)]  # the summary inside, with the extra last
    for version, kept in ((4, v4), (3, [e[:9] for e in v4])):  # as releases 4 and 3 wrote it (3: no extras)
        index.write_text("\n".join([json.dumps({"fmae_runs_table": version, "extras": "another"})]
                                   + [json.dumps(e) for e in kept]) + "\n")
        again, shown = look()
        assert again.loads == 0 and again.index_hits == 2 and shown == truth
        header, *entries = index.read_text().splitlines()
        assert json.loads(header)["fmae_runs_table"] == run_watch.INDEX_VERSION
        assert [json.loads(e.partition("\t")[2]) for e in entries] == summaries  # written again in this form


def test_a_run_from_the_index_reads_its_summary_when_asked_and_the_folder_when_that_text_is_damaged(
        tmp_path: Path, monkeypatch) -> None:
    """A run the index gives back (IndexedRun) leaves its summary as the index's text until it is read,
    is equal to the run read from its folder, and, where that text is damaged, reads the folder's."""
    import dataclasses
    import json

    import pytest

    from fmae import run_watch
    from fmae.run_index import IndexedRun, summary_text
    from fmae.runs import RunDir, RunInfo, make_run_id

    monkeypatch.setattr(run_watch, "RACY_NS", 0)
    runs = tmp_path / "runs"
    run = RunDir.create(runs, make_run_id("bp4d", "vit_tiny", 0, fold=1, lambda_id=0.0),
                        {"task": "au", "dataset": "bp4d", "seed": 0}, {})
    run.write_summary({"metric": "f1_best_mean", "best_value": 0.61, "best_epoch": 2,
                       "best": {"epoch": 2, "f1_best": {"AU1": 0.61}}})
    run.mark_ended("done", exit_code=0)

    def look() -> RunInfo:
        monkeypatch.setattr(run_watch, "_SHARED", {})
        (info, _, _), = run_watch.RunScanner(runs, slim=True).scan()[0]
        return info

    read = look()  # from the folder, writing the index
    assert type(read) is RunInfo and read.summary["best_value"] == 0.61 and "best" in read.summary
    indexed = look()
    assert type(indexed) is IndexedRun and "summary" not in vars(indexed) and "path" not in vars(indexed)
    assert summary_text(indexed) == json.dumps(read.summary, separators=(",", ":")).encode()
    assert indexed == read and read == indexed  # the summary and path read to compare, then kept
    assert vars(indexed)["summary"] == read.summary and indexed.path == run.path
    assert dataclasses.replace(look(), problem="x") == dataclasses.replace(read, problem="x")
    index = runs / run_watch.INDEX_NAME
    header, entry = index.read_bytes().splitlines()
    index.write_bytes(header + b"\n" + entry.partition(b"\t")[0] + b'\t{"best_value": 0.6' + b"\n")  # cut short
    damaged = look()
    assert damaged.summary == read.summary  # the folder's, slimmed as the scanner's are
    with pytest.raises(AttributeError):
        damaged.no_such_field


def test_a_first_look_from_the_index_checks_a_finished_runs_status_file_with_the_finished_runs_looks(
        tmp_path: Path, monkeypatch) -> None:
    """A status.json edited in place (no atomic rename: the folder's mtime stays) while no app was open:
    a running run's shows at a new process's first look; a finished run's, whose folder is as indexed,
    at the look that checks finished runs (every FINAL_EVERY-th), as a later look would find it."""
    import json

    from fmae import run_watch
    from fmae.runs import RunDir, make_run_id

    monkeypatch.setattr(run_watch, "RACY_NS", 0)
    runs = tmp_path / "runs"
    done = RunDir.create(runs, make_run_id("bp4d", "vit_tiny", 0, fold=1, lambda_id=0.0), {"task": "au"}, {})
    done.mark_ended("done", exit_code=0)
    running = RunDir.create(runs, make_run_id("bp4d", "vit_tiny", 1, fold=1, lambda_id=0.0), {"task": "au"}, {})
    running.mark_running(pid=1, host="h", gpus="")
    monkeypatch.setattr(run_watch, "_SHARED", {})
    run_watch.RunScanner(runs, slim=True).scan()  # the index written
    folder_mtimes = [os.stat(r.path).st_mtime_ns for r in (done, running)]
    for run, state in ((done, "failed"), (running, "cancelled")):
        status = json.loads((run.path / "status.json").read_text())
        with open(run.path / "status.json", "r+") as f:  # in place, longer: its size and mtime move
            f.write(json.dumps({**status, "state": state, "error": "edited in place"}))
    assert [os.stat(r.path).st_mtime_ns for r in (done, running)] == folder_mtimes
    monkeypatch.setattr(run_watch, "_SHARED", {})
    scanner = run_watch.RunScanner(runs, slim=True)
    states = {info.id: info.state for info, _, _ in scanner.scan()[0]}
    assert states == {done.id: "done", running.id: "cancelled"} and scanner.loads == 1
    looks = [scanner.scan()[0] for _ in range(run_watch.FINAL_EVERY)]
    assert [[(info.id, info.state) for info, _, _ in changed] for changed in looks if changed] == \
        [[(done.id, "failed")]]
