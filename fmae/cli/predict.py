"""`fmae predict` (per-frame AUs or expressions for images, folders and videos) and `fmae export` (a
finished run as one self-contained `.fmae` file). Columns: docs/predict.md."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmae.cli.common import err, out
from fmae.errors import FmaeError
from fmae.predict.detect_size import DETECT_SIZE, check_detect_size

app = typer.Typer()

# Typer keeps the line breaks of a help text's later paragraphs, so each paragraph is one string here:
# the first, a sentence that fits `fmae --help`'s column at 80 columns; the rest rewrapped to the terminal.
PREDICT_HELP = ("AUs or expressions for each face in images and videos.\n\n"
                "Finds the faces in each frame (MTCNN, on a copy scaled to --detect-size), crops them as the "
                "original did, and writes one CSV row per frame and face: OpenFace's leading columns, the box, "
                "then AU presence/probability or class probabilities (columns: docs/predict.md).")
EXPORT_HELP = ("A finished run as one file, for `fmae predict --model`.\n\n"
               "The file is self-contained: weights, encoder, input size, the dataset's AUs or classes, both "
               "thresholds with their labels, the recipe and fmae's version.")


@app.command("predict", help=PREDICT_HELP)
def predict_cmd(
    sources: Annotated[list[str], typer.Argument(help="Images, folders of images (recursive), videos "
                                                      "(mp4, mov, avi, mkv), or - for paths on standard input.")],
    out_csv: Annotated[Path, typer.Option("--out", help="CSV to write (its sidecar JSON goes beside it).")],
    run: Annotated[Optional[Path], typer.Option("--run", help="A finished AU or FER run folder.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="A model file from `fmae export`.")] = None,
    threshold: Annotated[str, typer.Option("--threshold", help="AU presence threshold: 0.5, tuned (the run's best "
                                                               "threshold, tuned on its test fold) or a VALUE.")] = "0.5",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Frames per detector batch, faces per model batch.")] = 16,
    detect_size: Annotated[int, typer.Option("--detect-size", help="Faces are detected on a copy of each frame "
                                             "whose shorter side is this many px (faster; the smallest face found "
                                             "is 1/9 of that side at 180); 0: full resolution.")] = DETECT_SIZE,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted prediction into the same --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line.")] = False,
) -> None:
    from fmae.predict.model_file import load_model, parse_threshold
    from fmae.predict.sources import check_sources, list_sources

    # Sources and the run are checked before torch loads, so bad input answers at once.
    parse_threshold(threshold)
    check_detect_size(detect_size)
    found = list_sources(sources, sys.stdin if "-" in sources else None)
    if out_csv.exists() and not resume:
        raise FmaeError(f"--out {out_csv}: exists — continue it with --resume, or choose another --out "
                        "(nothing was overwritten)")
    expected = check_sources(found)
    bundle = load_model(run, model)
    from fmae.predict.runner import choose_threshold, predict

    chosen = choose_threshold(bundle, threshold)
    bar = _ProgressLine() if not quiet else None
    stop = threading.Event()  # SIGTERM (a kill, a job scheduler) finishes the batch in flight, like Ctrl-C
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        result = predict(found, bundle, out_csv, threshold=chosen, device=device, batch_size=batch_size,
                         resume=resume, progress=bar, expected=expected, stop=stop, detect_size=detect_size)
    except KeyboardInterrupt:
        result = None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar:
            bar.end()
    if result is None or result.interrupted:
        err.print(f"interrupted: the frames done are in {out_csv} — continue with the same command and --resume")
        raise typer.Exit(130 if result is None else 143)
    how = {"tuned": " (tuned on the run's test fold)", "0.5": " (fixed)"}.get(chosen.which, "") if chosen else ""
    what = f"AU presence at threshold {chosen.value:g}{how}" if chosen else "the most probable expression"
    out.print(f"wrote {out_csv}: {result.frames} frames, {result.faces} faces ({what}); "
              f"{result.no_face} frames without a face; sidecar {result.sidecar}")
    if result.resumed_rows:
        out.print(f"resumed: {result.resumed_rows} rows were already there; {result.frames_this_session} frames "
                  f"predicted now")
    if result.undecodable_count:
        listed = "; ".join(f"{Path(k).name}: frames {', '.join(map(str, v[:10]))}{' …' if len(v) > 10 else ''}"
                           for k, v in result.undecodable.items() if v)
        out.print(f"{result.undecodable_count} frames did not decode (rows with success = 0): {listed}")
    if result.frames_this_session and result.seconds > 0:
        out.print(f"speed: {result.frames_this_session / result.seconds:.1f} frames/s over {result.seconds:.1f} s "
                  "(decoding, detection and the model together)")


class _ProgressLine:
    """`frames 120/720  14.2 frames/s  ETA 42 s` on standard error: rewritten in place on a terminal,
    a new line every 5 s otherwise (logs)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int, seconds: float) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and done < total:
            return
        self.last = now
        rate = done / seconds if seconds > 0 else 0.0
        eta = (max(total - done, 0) / rate) if rate > 0 else float("nan")
        eta_text = f"ETA {eta:.0f} s" if eta == eta else "ETA -"
        line = f"frames {done}/{total}  {rate:.1f} frames/s  {eta_text}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(60))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


@app.command("export", help=EXPORT_HELP)
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A finished AU or FER run folder.")],
    out_file: Annotated[Path, typer.Option("--out", help="The file to write, NAME.fmae.")],
) -> None:
    from fmae.predict.model_file import export

    if out_file.exists():
        raise FmaeError(f"--out {out_file}: exists — choose another name or remove it first")
    bundle = export(run, out_file)
    size = out_file.stat().st_size / 2**20
    labels = ", ".join(bundle.column_names())
    tuned = bundle.thresholds.get("tuned")
    out.print(f"wrote {out_file} ({size:.1f} MiB): {bundle.encoder} at {bundle.input_size} px, "
              f"{bundle.dataset} {bundle.task.upper()} ({labels})"
              + (f"; tuned threshold {tuned['label']}" if tuned else ""))
