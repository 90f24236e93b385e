"""`fmae datasets`, `fmae init`, `fmae synth`: which benchmarks fmae knows, a project's fmae.toml, and
synthetic faces in a benchmark's on-disk format (a newcomer's first three commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmae.cli.common import ConfigOpt, err, out
from fmae.errors import FmaeError

app = typer.Typer()


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
        register_dataset(spec.name, out_dir, out_dir / "labels.jsonl" if spec.task == "au" else None, config,
                  synthetic={"subjects": len(report.subjects), "frames": frames, "size": size, "seed": seed,
                             # recorded when not the defaults, or the entry would describe another copy
                             **({"identity_strength": identity_strength} if identity_strength != 1 else {}),
                             **({"nuisance": nuisance} if nuisance != 1 else {})})


def register_dataset(name: str, root: Path, labels: Path | None, config: Path | None, synthetic: dict | None = None) -> None:
    """`--register`: point fmae.toml's entry for NAME at this copy (and only this copy)."""
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
