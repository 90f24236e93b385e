"""`fmae data lmdb`: pack image folders into an LMDB image store; and the store half of `fmae data check`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmae.cli.common import ConfigOpt, err, out, size_text
from fmae.errors import FmaeError, WorkFailed

app = typer.Typer()  # its command joins the `data` group


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@app.command("lmdb")
def data_lmdb(
    sources: Annotated[list[Path], typer.Argument(metavar="SRC...", help="Image folders to pack (searched recursively); keys start "
                                                       "with each folder's name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Store folder to write (an LMDB environment). Rerun the "
                                                        "same command to resume an interrupted pack.")],
    max_side: Annotated[Optional[int], typer.Option("--max-side", help="Shrink larger images to this longest "
                                                                       "side (kept as JPEG quality 95).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Pack image folders into an LMDB image store for pretraining; reports duplicate and unreadable files."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fmae.config import load_project
    from fmae.data.image_decode import set_max_pixels
    from fmae.data.store_pack import pack

    set_max_pixels(load_project(config).max_image_pixels)  # the limit pretraining reads the store with

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(f"packing into {out_dir}", total=None)
            report = pack(sources, out_dir, max_side,
                          lambda done, total: bar.update(task, completed=done, total=total))
    except KeyboardInterrupt:
        err.print("interrupted: what was committed is kept — rerun the same command to resume", soft_wrap=True)
        raise
    for d in report.duplicates:
        out.print(d.report_line(), soft_wrap=True)
    for u in report.unreadable:
        err.print(u.report_line(), soft_wrap=True)
    parts = [f"{report.stored} images stored", f"{report.already_present} already present",
             _plural(len(report.duplicates), "duplicate"), f"{len(report.unreadable)} unreadable"]
    if report.removed:
        parts.append(f"{report.removed} removed (their files are gone)")
    out.print(f"{out_dir}: {report.images} images ({', '.join(parts)}); {size_text(report.bytes_written)} written "
              f"in {report.seconds:.1f} s", soft_wrap=True)
    if report.unreadable:
        raise WorkFailed(f"{_plural(len(report.unreadable), 'unreadable file')} not stored (listed above); "
                         f"the other {report.images} images are in {out_dir}")


def check_store_cmd(path: Path, decode: bool) -> None:
    """`fmae data check STORE`: counts per source, then every problem; exit 2 when there are any."""
    from rich.progress import Progress

    from fmae.data.image_store import ImageStore
    from fmae.data.store_check import check_store

    store = ImageStore(path)
    start = time.perf_counter()
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("checking entries", total=len(store))
        problems = check_store(path, decode, lambda n: bar.update(task, completed=n))
    seconds = time.perf_counter() - start
    side = f", longest side ≤ {store.max_side}" if store.max_side else ""
    out.print(f"image store {path}: {len(store)} images from {_plural(len(store.sources), 'source')}{side}, "
              f"{len(store) if decode else 0} decoded in {seconds:.1f} s", soft_wrap=True)
    table = Table(title="images per source")
    for col, justify in (("source", "left"), ("images", "right"), ("duplicates left out", "right"),
                         ("unreadable left out", "right"), ("packed from", "left")):
        table.add_column(col, justify=justify)
    for name, info in store.source_info.items():
        table.add_row(name, str(info.get("images", 0)), str(info.get("duplicates", 0)),
                      str(info.get("unreadable", 0)), str(info.get("path", "-")))
    out.print(table)
    for problem in problems:
        (err if problem.severity == "error" else out).print(problem.report_line(), soft_wrap=True)
    if problems.errors:
        raise FmaeError(f"{path}: {len(problems.errors)} problems found (listed above)")
    out.print(f"ok: no problems in {path}")
