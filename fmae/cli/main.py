"""`fmae`: the command line over the engine.

Exit codes: 0 success; 1 the work itself failed; 2 bad input or usage (one line naming what to fix).
Commands import heavy modules lazily so `fmae --help` and the data tools start fast.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.console import Console
from rich.table import Table

from fmae import __version__
from fmae.errors import FmaeError, WorkFailed

app = typer.Typer(
    help="fmae: train and study facial-behaviour models (FMAE / FMAE-IAT).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare and check datasets.", no_args_is_help=True)
config_app = typer.Typer(help="Show and edit fmae.toml.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="fmae.toml to use (default: $FMAE_CONFIG, else the nearest one upwards)."),
]
RunsDirOpt = Annotated[Optional[Path], typer.Option("--runs-dir", help="Runs folder (overrides fmae.toml).")]
RootOpt = Annotated[Optional[Path], typer.Option("--root", help="Dataset folder for this call (overrides fmae.toml).")]
LabelsOpt = Annotated[Optional[Path], typer.Option("--labels", help="AU label file for this call (overrides fmae.toml).")]


def _version(value: bool) -> None:
    if value:
        out.print(f"fmae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """fmae: train and study facial-behaviour models (FMAE / FMAE-IAT)."""


# --- datasets and config ----------------------------------------------------------------------------

@app.command("datasets")
def datasets_cmd(config: ConfigOpt = None) -> None:
    """List the benchmarks fmae knows and where each is configured."""
    from fmae.config import load_project
    from fmae.data.locate import synth_generator, synthetic_ready
    from fmae.registry import DATASETS

    project = load_project(config)
    table = Table(title=f"Datasets ({project.label})")
    for col in ("name", "task", "labels", "subjects", "folds", "status"):
        table.add_column(col, overflow="fold")
    roots = []
    for spec in DATASETS.values():
        loc = project.dataset(spec.name)
        if loc.root is None:
            status = "not configured"
        elif loc.synthetic is not None:
            status = ("synthetic, ready" if synthetic_ready(loc) else "synthetic, made on first use"
                      if synth_generator(loc.root) is None else "synthetic, outdated (made again on first use)")
        else:
            status = "present" if loc.root.is_dir() else "missing"
        labels = f"{len(spec.au_codes)} AUs" if spec.task == "au" else f"{len(spec.classes)} classes"
        subjects = str(len(spec.subjects) or "-")  # the benchmark's, and its synthetic copy's
        if loc.synthetic is not None and loc.synthetic.subjects is not None:
            subjects += f" (synthetic {loc.synthetic.subjects})"
        table.add_row(spec.name, spec.task.upper(), labels, subjects, str(spec.num_folds or "-"), status)
        roots.append(f"{spec.name}: {loc.root or '-'}" + (f"  labels {loc.labels}" if loc.labels else ""))
    out.print(table)
    # The paths this command exists to show, whole at any width (outside the table, so never cut).
    out.print("roots:")
    for line in roots:
        out.print(f"  {line}", soft_wrap=True, markup=False, highlight=False)


@app.command("init")
def init_cmd(folder: Annotated[Path, typer.Argument(help="Where to write fmae.toml.")] = Path(".")) -> None:
    """Write a commented fmae.toml with the demo defaults (synthetic data, CPU when there is no GPU)."""
    from fmae.atomic_write import write_text_atomic
    from fmae.config import CONFIG_NAME, default_config_text

    path = folder / CONFIG_NAME
    if path.exists():
        raise FmaeError(f"{path} already exists — edit it, or remove it to start over")
    write_text_atomic(path, default_config_text())
    out.print(f"wrote {path}")


@config_app.command("show")
def config_show(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Show the configuration in force and where it came from."""
    from fmae.config import load_project

    p = load_project(config, runs_dir)
    out.print(f"config:   {p.label}")
    out.print(f"runs_dir: {p.runs_dir}")
    out.print(f"compute:  gpus={p.gpus} runs_per_gpu={p.runs_per_gpu} min_free_memory_gib={p.min_free_memory_gib} "
              f"cpu_slots={p.cpu_slots} device={p.device}")
    out.print(f"executor: {p.executor}")
    out.print(f"defaults: {dict(p.defaults)}")
    for name, loc in p.datasets.items():
        where = loc.labels or (f"{loc.train_labels} / {loc.test_labels}" if loc.train_labels else "")
        out.print(f"dataset {name}: root={loc.root} labels={where or '-'}"
                  + (" (synthetic)" if loc.synthetic else ""))


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="Dotted key, e.g. compute.cpu_slots or datasets.bp4d.root.")],
    value: Annotated[str, typer.Argument(help="A TOML value (2, 3e-4, true, [0, 1]) or plain text.")],
    config: ConfigOpt = None,
) -> None:
    """Set one key in fmae.toml; comments and layout are kept, and an invalid result is refused."""
    from fmae.config import find_config, parse_set_options, update_config

    path = find_config(config)
    if path is None:
        raise FmaeError("no fmae.toml here or above — run `fmae init` first")
    update_config(path, {key: parse_set_options([f"{key}={value}"])[key]})
    out.print(f"{path}: {key} = {value}")


@config_app.command("recipe")
def config_recipe(
    dataset: Annotated[str, typer.Argument(help="Benchmark name.")],
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="fmae or fmae_iat (default: fmae.toml's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="key=value over the recipe (repeatable).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Show a dataset's resolved training settings and which layer set each one (as `fmae train` resolves
    them: the paper's recipe < fmae.toml < the command line; AU benchmarks shown for fold 1)."""
    from fmae.config import load_project, parse_set_options
    from fmae.registry import get_dataset
    from fmae.run_config import resolve_run_config

    project = load_project(config)
    spec = get_dataset(dataset)
    resolved = resolve_run_config(project, spec.name, recipe=recipe, fold=1 if spec.task == "au" else None,
                                  seed=int((project.defaults.get("seeds") or [0])[0]),
                                  cli=parse_set_options(set_ or []), generate=False)
    name = resolved.values["recipe"]
    table = Table(title=f"{spec.name} / {name}")
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    for key in sorted(resolved.values):
        table.add_row(key, Text(str(resolved.values[key])), Text(resolved.sources[key]))
    out.print(table)


# --- synthetic data ---------------------------------------------------------------------------------

@app.command("synth")
def synth_cmd(
    dataset: Annotated[str, typer.Argument(help="Benchmark whose format to write (bp4d, disfa, rafdb, …).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write.")],
    subjects: Annotated[Optional[int], typer.Option(help="Subjects (AU: real ids spread over the folds; FER: identities).")] = None,
    frames: Annotated[int, typer.Option(help="Frames per subject (AU) / images per identity (FER).")] = 48,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 112,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same files.")] = 0,
    identity_strength: Annotated[float, typer.Option(help="How strongly a subject's identity predicts its AUs (0 = not at all).")] = 1.0,
    nuisance: Annotated[float, typer.Option(help="Pose/lighting/noise jitter, 0..1.")] = 1.0,
    layout: Annotated[Optional[str], typer.Option(help="AU path layout: bp4d original (2F01_T1/…, the default), task_folders "
                                                       "(F001_T1/…, bp4d_plus's default), nested; disfa subject_folders, video_folders.")] = None,
    per_fold_files: Annotated[bool, typer.Option("--per-fold-files", help="Also write fold<k>_train/test.jsonl.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Also write the raw annotations (BP4D AU_OCC CSVs, DISFA txt).")] = False,
    class_folders: Annotated[str, typer.Option(help="FER class folders named by 'ids' or 'names'.")] = "ids",
    register: Annotated[bool, typer.Option("--register", help="Point fmae.toml's entry for DATASET at the result.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Write learnable synthetic faces in a benchmark's real on-disk format."""
    from rich.progress import Progress

    from fmae.data.synth.writer import SynthOptions, synthesize
    from fmae.registry import get_dataset

    spec = get_dataset(dataset)
    if class_folders not in ("ids", "names"):
        raise FmaeError(f"--class-folders {class_folders}: use 'ids' or 'names'")
    options = SynthOptions(subjects=subjects, frames=frames, size=size, seed=seed,
                           identity_strength=identity_strength, nuisance=nuisance, layout=layout,
                           per_fold_files=per_fold_files, raw=raw, class_folders=class_folders)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"synth {spec.name}", total=None)
        report = synthesize(spec, out_dir, options, lambda done, total: bar.update(task, completed=done, total=total))
    out.print(f"wrote {report.images} {spec.title}-format images of {len(report.subjects)} "
              f"{'subjects' if spec.task == 'au' else 'identities'} to {out_dir} in {report.seconds:.1f} s")
    what = "AU base rates (measured)" if spec.task == "au" else "train class frequencies (measured)"
    out.print(f"{what}: " + "  ".join(f"{k} {v:.2f}" for k, v in report.rates.items()))
    if register:
        _register(spec.name, out_dir, out_dir / "labels.jsonl" if spec.task == "au" else None, config,
                  synthetic={"subjects": len(report.subjects), "frames": frames, "size": size, "seed": seed})


def _register(name: str, root: Path, labels: Path | None, config: Path | None, synthetic: dict | None = None) -> None:
    from fmae.config import find_config, update_config

    path = find_config(config)
    if path is None:
        raise FmaeError("--register: no fmae.toml here or above — run `fmae init` first")
    def written(p: Path) -> str:
        # Relative to fmae.toml's folder when inside it (as fmae.toml reads them), so the project can move.
        p = p.resolve()
        return p.relative_to(path.parent.resolve()).as_posix() if p.is_relative_to(path.parent.resolve()) else str(p)

    # The entry then describes exactly this copy: a synthetic recipe is this one's, or none.
    update_config(path, {
        f"datasets.{name}.root": written(root),
        f"datasets.{name}.labels": written(labels) if labels else None,
        f"datasets.{name}.train_labels": None,
        f"datasets.{name}.test_labels": None,
        f"datasets.{name}.synthetic": synthetic,
    })
    out.print(f"registered {name} in {path}")


# --- data -------------------------------------------------------------------------------------------

@data_app.command("prepare")
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
        _register(spec.name, frames, out_file, config)


@data_app.command("check")
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
    from fmae.registry import DATASETS, get_dataset

    # A benchmark name wins over a same-named folder here; `./NAME` or any path with a slash is a folder.
    named = dataset.strip().lower().replace("+", "_plus").replace("-", "") in DATASETS and "/" not in dataset
    if not named and Path(dataset).is_dir():
        from fmae.cli.lmdb import check_store_cmd

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


def main() -> None:
    try:
        app()
    except (FmaeError, WorkFailed) as e:
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except OSError as e:  # no permission, read-only or full disk: the machine's answer, not a bug
        from fmae.errors import environment_error

        said = environment_error(e)
        if said is None:
            _crash()
        err.print(f"error: {said}", markup=False, soft_wrap=True)
        sys.exit(said.exit_code)
    except Exception:
        _crash()


def _crash() -> None:
    """A bug in fmae: one line for the user, the traceback in a file for the report."""
    crash = Path(tempfile.gettempdir()) / f"fmae-crash-{int(time.time())}.log"
    crash.write_text(traceback.format_exc())
    err.print(f"internal error: {sys.exc_info()[1]!r} (traceback in {crash}; please report it)", markup=False)
    sys.exit(1)


# The engine's commands live in their own module; importing it registers them on `app`.
from fmae.cli import pretrain, scheduler, train  # noqa: E402,F401
from fmae.cli import lmdb  # noqa: E402,F401
from fmae.cli import cache  # noqa: E402,F401
from fmae.cli import queue  # noqa: E402,F401
from fmae.cli import report  # noqa: E402,F401
from fmae.cli import predict  # noqa: E402,F401
