"""`fmae exec RUN` for a prediction run folder (`task = "predict"`, see `job.py`): the queue's and the app's
way to run `fmae predict`. SIGTERM finishes the batch in flight and ends `cancelled`; the next attempt
continues the CSV (resume), as a training run continues from its checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from fmae.errors import FmaeError, WorkFailed, failure_hint
from fmae.runs import RunDir, one_line

EXIT_CANCELLED = 143


def execute_predict(run: RunDir, cfg: dict, quiet: bool = False) -> int:
    from fmae.predict.detect import DETECT_SIZE
    from fmae.predict.model_file import from_run
    from fmae.predict.runner import choose_threshold, predict
    from fmae.predict.sources import list_sources

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run.mark_running(pid=os.getpid(), pgid=os.getpgid(0), host=socket.gethostname(),
                     gpus=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    last_beat = [0.0]

    def progress(done: int, total: int, seconds: float) -> None:
        now = time.monotonic()
        if now - last_beat[0] < 2 and done < total:
            return
        last_beat[0] = now
        run.heartbeat(step=done, total_steps=total)
        if not quiet:
            rate = done / seconds if seconds > 0 else 0.0
            eta = f"ETA {(total - done) / rate:.0f} s" if rate > 0 else "ETA -"
            print(f"frames {done}/{total}  {rate:.1f} frames/s  {eta}", flush=True)

    try:
        csv = run.path / str(cfg.get("out", "predictions.csv"))
        bundle = from_run(Path(cfg["source_run"]))
        threshold = choose_threshold(bundle, str(cfg.get("threshold", "0.5")))
        sources = list_sources([str(s) for s in cfg["sources"]])
        result = predict(sources, bundle, csv, threshold=threshold, device=str(cfg.get("device", "auto")),
                         batch_size=int(cfg.get("batch_size", 16)), resume=csv.exists(), progress=progress,
                         stop=stop, detect_size=int(cfg.get("detect_size", DETECT_SIZE)))
        if result.interrupted:
            run.mark_ended("cancelled", exit_code=EXIT_CANCELLED,
                           error=f"cancelled (SIGTERM) after {result.frames} frames; a retry continues the CSV")
            return EXIT_CANCELLED
        run.heartbeat(step=result.frames, total_steps=result.frames)
        print(f"wrote {csv}: {result.frames} frames, {result.faces} faces, {result.no_face} frames without a face, "
              f"{result.undecodable_count} undecodable", flush=True)
        run.mark_ended("done", exit_code=0)
        return 0
    except KeyboardInterrupt:
        run.mark_ended("cancelled", exit_code=130, error="interrupted (Ctrl-C); a retry continues the CSV")
        raise
    except (FmaeError, WorkFailed) as e:
        run.mark_ended("failed", exit_code=e.exit_code, error=str(e))
        raise
    except Exception as e:  # a bug or the environment: the run fails with the reason, the traceback in its log
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        hint = failure_hint(e)
        reason = one_line(f"{type(e).__name__}: {e}")[: 300 - len(hint)] + hint
        run.mark_ended("failed", exit_code=1, error=reason)
        raise WorkFailed(f"run {run.id} failed: {reason} (see {run.log_path})") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
