"""`fmae data prepare|check|lmdb|cache`: raw annotations to labels, a dataset or image store checked,
image folders packed (`lmdb.py`) and a dataset pre-decoded (`cache.py`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fmae.cli import cache, lmdb
from fmae.cli.common import ConfigOpt, LabelsOpt, RootOpt, err, is_benchmark_name, out
from fmae.cli.lmdb import check_store_cmd
from fmae.cli.project import register_dataset
from fmae.errors import FmaeError

app = typer.Typer(help="Prepare and check datasets.", no_args_is_help=True)


@app.command("prepare")
def data_prepare(
    dataset: Annotated[str, typer.Argument(help="bp4d, bp4d_plus or disfa.")],
    annotations: Annotated[Path, typer.Option(help="BP4D's AU_OCC folder, or DISFA's ActionUnit_Labels folder.")],
    frames: Annotated[Path, typer.Option(help="The extracted frames (becomes the dataset root).")],
    out_file: Annotated[Path, typer.Option("--out", help="JSON-lines label file to write.")],
    register: Annotated[bool, typer.Option("--register", help="Point fmae.toml at the frames and the labels.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Build the JSON-lines AU labels from a dataset's raw annotation files."""
    from fmae.data.prepare import prepare_bp4d, prepare_disfa
    from fmae.registry import get_dataset

    spec = get_dataset(dataset)
    if spec.name in ("bp4d", "bp4d_plus"):
        report = prepare_bp4d(spec, annotations, frames, out_file)
    elif spec.name == "disfa":
        report = prepare_disfa(spec, annotations, frames, out_file)
    else:
        raise FmaeError(f"{spec.name} needs no preparation: it is read from image folders")
    for problem in report.problems:
        err.print(problem.report_line(), soft_wrap=True)
    if report.problems.errors:
        raise FmaeError(f"{len(report.problems.errors)} problems in the annotations; {out_file} was not written")
    out.print(f"wrote {report.frames_written} frames from {report.sequences} sequences to {out_file}")
    if report.labelled_without_image:
        out.print(f"{report.labelled_without_image} labelled frames have no image under {frames} (left out)")
    if report.images_without_label:
        out.print(f"{report.images_without_label} images have no label (left out)")
    if register:
        register_dataset(spec.name, frames, out_file, config)


@app.command("check")
def data_check(
    dataset: Annotated[str, typer.Argument(help="Benchmark name, or an image store folder (from `fmae data lmdb`).")],
    root: RootOpt = None,
    labels: LabelsOpt = None,
    decode: Annotated[bool, typer.Option("--decode/--no-decode", help="Decode every image (finds truncated files).")] = True,
    config: ConfigOpt = None,
) -> None:
    """Validate a dataset against its registry row (counts per fold, label rates, every problem), or an image
    store (counts per source, every unreadable entry)."""
    from rich.progress import Progress

    from fmae.config import load_project
    from fmae.data.check import check_dataset
    from fmae.data.image_decode import set_max_pixels
    from fmae.data.locate import dataset_location, ensure_dataset
    from fmae.registry import get_dataset

    if not is_benchmark_name(dataset) and Path(dataset).is_dir():
        if root is not None or labels is not None:
            raise FmaeError("--root and --labels are for benchmarks, not for an image store")
        check_store_cmd(Path(dataset), decode)
        return
    spec = get_dataset(dataset)
    project = load_project(config)
    set_max_pixels(project.max_image_pixels)
    loc = dataset_location(project, spec, root, labels)
    loc = ensure_dataset(spec, loc, say=lambda msg: err.print(msg))
    start = time.perf_counter()
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("checking images", total=None)
        report = check_dataset(spec, loc, decode, lambda n: bar.update(task, completed=n))
    _print_check(report, time.perf_counter() - start)
    if not report.ok:
        raise FmaeError(f"{spec.name}: {len(report.problems.errors)} problems found (listed above)")


def _print_check(report, seconds: float) -> None:
    spec = report.spec
    out.print(f"{spec.title} at {report.location.root}: {report.frames} images, "
              f"{report.images_checked} checked in {seconds:.1f} s")
    if report.folds:
        table = Table(title="folds (fold k = its test subjects)")
        for col in ("fold", "train frames", "test frames", "train subjects", "test subjects (found / in table)"):
            table.add_column(col, justify="right")
        for r in report.folds:
            table.add_row(str(r.fold), str(r.train_frames), str(r.test_frames), str(r.train_subjects),
                          f"{r.test_subjects} / {r.expected_test_subjects}")
        out.print(table)
    if report.class_counts:
        table = Table(title="images per class")
        table.add_column("split")
        for name in spec.classes:
            table.add_column(name, justify="right")
        for split, counts in report.class_counts.items():
            table.add_row(split, *map(str, counts))
        out.print(table)
    if report.rates:
        kind = "AU base rate" if spec.task == "au" else "train class frequency"
        table = Table(title=f"{kind}: measured here vs typical of the real {spec.title}")
        for col in ("", "measured", "typical"):
            table.add_column(col, justify="right")
        for name, (measured, typical) in report.rates.items():
            table.add_row(name, f"{measured:.2f}", f"{typical:.2f}")
        out.print(table)
    for problem in report.problems:
        (err if problem.severity == "error" else out).print(problem.report_line(), soft_wrap=True)
    if report.ok:
        out.print(f"ok: no problems in {spec.name}")


# Packing and caching are their own modules; their commands join this group after prepare and check.
app.add_typer(lmdb.app)
app.add_typer(cache.app)
