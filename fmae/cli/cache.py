"""`fmae data cache`: decode a dataset's images once into a pixel cache that training reads instead."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmae.cli.common import ConfigOpt, RootOpt, err, is_benchmark_name, out, size_text
from fmae.errors import FmaeError

app = typer.Typer()  # its command joins the `data` group


@app.command("cache")
def data_cache(
    dataset: Annotated[str, typer.Argument(help="Benchmark name (its root from fmae.toml or --root), or an image folder.")],
    size: Annotated[int, typer.Option("--size", help="Side of the square images: the runs' input_size (paper: 224).")] = 224,
    interpolation: Annotated[Optional[str], typer.Option(
        "--interpolation", help="Resize filter, the runs' eval_interpolation: bilinear (the paper's recipes) or "
                                "bicubic. Default: the benchmark's eval_interpolation in fmae.toml, else bilinear.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Cache folder (default: ROOT/.fmae-cache/"
                                                                  "<size>px-<interpolation>, where training finds it; "
                                                                  "elsewhere, point data_cache at it).")] = None,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Pre-decode every image under a dataset's root, resized to SIZE × SIZE, into an LMDB pixel cache:
    training then reads uint8 pixels instead of decoding JPEGs (config data_cache = "auto", the default).
    Rerun after the images change: only new or changed files are decoded again."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fmae.config import load_project
    from fmae.data.image_decode import set_max_pixels
    from fmae.data.pixel_cache import DEFAULT_INTERPOLATION, EVAL_INTERPOLATIONS, build_cache, cache_bytes, default_cache_dir
    from fmae.data.image_files import list_images
    from fmae.registry import DATASETS

    if interpolation is not None and interpolation not in EVAL_INTERPOLATIONS:
        raise FmaeError(f"--interpolation {interpolation}: choose one of {', '.join(EVAL_INTERPOLATIONS)}")
    chosen = interpolation
    project = load_project(config)
    set_max_pixels(project.max_image_pixels)  # [data] max_image_pixels, as the trainer and `data check` read
    if is_benchmark_name(dataset):
        from fmae.data.locate import dataset_location, ensure_dataset
        from fmae.registry import get_dataset

        spec = get_dataset(dataset)
        if chosen is None:  # what this benchmark's runs evaluate with, so that they find the cache
            chosen = str(project.overrides.get(spec.name, {}).get("eval_interpolation", DEFAULT_INTERPOLATION))
        loc = ensure_dataset(spec, dataset_location(project, spec, root, None), say=lambda msg: err.print(msg))
        folder = loc.root
        if folder is None:
            raise FmaeError(f"{spec.name} has no root in fmae.toml — pass --root or set datasets.{spec.name}.root")
    else:
        if root is not None:
            raise FmaeError("--root is for benchmark names; give the image folder itself as the argument")
        folder = Path(dataset)
        if not folder.is_dir():
            raise FmaeError(f"{dataset}: not a benchmark name ({', '.join(DATASETS)}) nor a folder")
    chosen = chosen or DEFAULT_INTERPOLATION
    count = len(list_images(folder)) if folder.is_dir() else 0
    if count:
        err.print(f"caching {count} images of {folder} at {size} px, resized {chosen}: "
                  f"{size_text(cache_bytes(count, size))} of pixels", soft_wrap=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("decoding", total=None)
            report = build_cache(folder, out_dir, size, lambda done, total: bar.update(task, completed=done, total=total),
                                 interpolation=chosen)
    except KeyboardInterrupt:
        err.print("interrupted: what was written is kept — rerun the same command to finish", soft_wrap=True)
        raise
    removed = f", {report.removed} removed (their files are gone)" if report.removed else ""
    out.print(f"{report.out}: {report.images} images of {size} px, {chosen} ({report.written} decoded, "
              f"{report.unchanged} unchanged{removed}), {size_text(report.bytes)} of pixels, in {report.seconds:.1f} s",
              soft_wrap=True)
    default = report.out.resolve() == default_cache_dir(folder, size, chosen).resolve()
    if default:
        out.print(f"runs of input_size {size} with eval_interpolation = \"{chosen}\" on {folder} read it "
                  "(data_cache = \"auto\"; \"off\" decodes files)", soft_wrap=True)
    else:
        out.print(f"to use it: --set data_cache={report.out.resolve()} (with input_size {size}, eval_interpolation "
                  f"{chosen})", soft_wrap=True)
