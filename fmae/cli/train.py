"""`fmae train`, `fmae exec`, `fmae probe-id`, `fmae eval`: the engine's commands.

Each resolves a config (recipe < fmae.toml < these options), writes a run folder, and trains it in this
process through `fmae.train.trainer.execute` — the same entry point the queue and Slurm use.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.text import Text

from fmae.cli.common import (ConfigOpt, GpusPerNodeOpt, LabelsOpt, MasterOpt, NnodesOpt, NodeRankOpt, NodesOpt, NprocOpt,
                              QuietOpt, RootOpt, RunsDirOpt, SetOpt, cli_layer, err, out, show_dry_run)
from fmae.cli.training import StopBeforeTraining, rendezvous, submit_to_slurm, train_here
from fmae.errors import FmaeError
from fmae.metric_catalogue import AUC, F1_05, F1_BEST, TUNED_TAG
from fmae.summary import Summary

app = typer.Typer()


@app.command("train")
def train_cmd(
    dataset: Annotated[Optional[str], typer.Argument(help="Benchmark: bp4d, bp4d_plus, disfa, rafdb, affectnet8, affectnet7.")] = None,
    fold: Annotated[Optional[int], typer.Option("--fold", help="Test fold (AU benchmarks).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="vit_tiny, vit_small, vit_base, vit_large.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    lambda_id: Annotated[Optional[float], typer.Option("--lambda-id", help="Identity-adversarial weight λ (0 = none).")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="fmae or fmae_iat (the paper's values).")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Checkpoint to fine-tune from (MAE/FMAE or fmae's).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Per-process batch.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Added to the run id.")] = None,
    set_: SetOpt = None,
    from_: Annotated[Optional[Path], typer.Option("--from", help="Re-run a run.toml's resolved config (a new run).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue a stopped run folder from its last checkpoint.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the resolved config; create nothing.")] = False,
    nproc: NprocOpt = 1,
    nodes: NodesOpt = 1,
    gpus_per_node: GpusPerNodeOpt = None,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    master: MasterOpt = None,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
    root: RootOpt = None,
    labels: LabelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune for AU detection (FMAE, or FMAE-IAT with λ > 0) or FER, writing a run folder."""
    from fmae.config import load_project
    from fmae.run_config import resolve_run_config

    hosts = rendezvous(nnodes, node_rank, master)
    if hosts is not None and hosts.node_rank:
        raise FmaeError(f"--node-rank {node_rank}: the other hosts join the run node 0 created — "
                        f"`fmae exec RUN --nnodes {nnodes} --node-rank {node_rank} --master {master}`")
    if resume is not None:
        if dataset or from_:
            raise FmaeError("--resume RUN continues that run as it was configured: give no dataset or --from with it")
        train_here(_run_folder(resume), True, quiet, nproc, hosts)
        return
    project = load_project(config, runs_dir)
    if from_ is not None:
        if dataset:
            raise FmaeError("--from RUN.toml already names the dataset: give no DATASET with it")
        resolved = _from_run_toml(from_)
    else:
        if not dataset:
            raise FmaeError("missing DATASET: e.g. `fmae train bp4d --fold 1` (see `fmae datasets`)")
        cli = cli_layer(model=model, lambda_id=lambda_id, init=str(init.resolve()) if init else None, epochs=epochs,
                         batch_size=batch_size, device=device, set_=set_)
        if init is not None and not init.is_file():
            raise FmaeError(f"--init {init}: no such checkpoint file")
        resolved = resolve_run_config(project, dataset, recipe=recipe, fold=fold, seed=seed, cli=cli, root=root,
                                      labels=labels, generate=not dry_run)
    if dry_run:
        show_dry_run(resolved, resolved.values["dataset"])
        return
    with _new_run(project.runs_dir, resolved, name) as run:
        if submit_to_slurm(run.path, project, nodes, gpus_per_node, nproc):
            return
        train_here(run.path, False, quiet, nproc, hosts)
    _print_outcome(Summary.read(run) or Summary())


def _print_outcome(summary: Summary) -> None:
    """The test numbers a user checks first, each named, beside the floor an AU run must clear."""
    from fmae.metrics import DEGENERATE_LABEL

    rec = summary.best
    if rec is None:
        return
    where = f"test split, best epoch {summary.best_epoch} of {summary.epochs_done}"
    if "f1_05_mean" not in rec:
        if summary.metric in rec:
            out.print(f"{summary.metric_label}: {rec[summary.metric]:.4f} ({where})")
        return
    def num(key: str) -> str:
        return "–" if rec.get(key) is None else f"{rec[key]:.3f}"

    out.print(f"{where}: {F1_05.short} {num('f1_05_mean')} (all-positive F1 {num('f1_all_positive_mean')}), "
              f"{AUC.short} {num('auc_mean')}, {F1_BEST.name} {num('f1_best_mean')} @{rec['best_threshold']:.2f} "
              f"{TUNED_TAG}", soft_wrap=True)
    if rec.get("degenerate"):
        # `out` reads no markup (values hold `[`): the colour goes in as a style
        out.print(Text.assemble((DEGENERATE_LABEL, "yellow"), " — this run has not learnt to tell the AUs apart"),
                  soft_wrap=True)


@contextlib.contextmanager
def _new_run(runs_dir: Path, resolved: Any, name: Optional[str]) -> Iterator[Any]:
    """A new run folder (said on stdout) for the block that trains it. A signal while the folder is made
    waits for it, then ends it; a refusal before its first step takes it away again."""
    from fmae.run_config import create_run

    with StopBeforeTraining() as stop:
        run = create_run(runs_dir, resolved, name=name)
        stop.made(run.path)
        out.print(f"run {run.id}")
        with _no_folder_if_refused(run):
            yield run


@contextlib.contextmanager
def _no_folder_if_refused(run) -> Iterator[None]:
    """A new run refused for bad input (FmaeError, exit 2) before its first step leaves no run folder
    behind; one that trained anything, or failed at work (exit 1), keeps its folder and its record."""
    try:
        yield
    except FmaeError:
        if not any(run.checkpoints.glob("*")) and not _has_records(run.metrics_path):
            shutil.rmtree(run.path, ignore_errors=True)
            err.print(f"run {run.id} removed: refused before its first step", soft_wrap=True)
        raise


def _has_records(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


@app.command("exec")
def exec_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder (queued, failed or cancelled).")],
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    master: MasterOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a prepared run folder from its run.toml, resuming from its last checkpoint if it has one."""
    nodes = rendezvous(nnodes, node_rank, master)
    train_here(_run_folder(run), True, quiet, nproc, nodes)


def _run_folder(path: Path) -> Path:
    from fmae.runs import RunDir

    from fmae.runs import STATES

    rd = RunDir.open(path)
    state = rd.read_status().get("state")
    if state not in STATES:
        raise FmaeError(f"{rd.status_path}: unknown state {state!r} (expected one of {', '.join(STATES)}) — "
                        'restore the file, or set "state": "failed" to retry the run')
    if state == "done":
        from fmae.predict.job import TASK, again_hint

        cfg = rd.read_config()
        if cfg.get("task") == TASK:
            raise FmaeError(f"{path}: {again_hint(rd.path, dict(cfg))}")
        raise FmaeError(f"{path}: this run is done — start a new one (`fmae train --from {path}/run.toml`)")
    return rd.path


def _from_run_toml(path: Path):
    from fmae.config import Resolved
    from fmae.runs import RunDir

    folder = path.parent if path.name == "run.toml" else path
    cfg = RunDir.open(folder).read_config()
    return Resolved(dict(cfg), {k: f"--from {path}" for k in cfg})


@app.command("probe-id")
def probe_id_cmd(
    source: Annotated[Path, typer.Argument(help="A run folder (its best checkpoint) or a checkpoint file.")],
    dataset: Annotated[str, typer.Option("--dataset", help="AU benchmark whose subjects to probe.")] = "bp4d",
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last (for a run folder).")] = "best",
    model: Annotated[Optional[str], typer.Option("--model", help="Encoder of a checkpoint file (a run folder knows its own).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    set_: SetOpt = None,
    name: Annotated[Optional[str], typer.Option("--name")] = None,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
    root: RootOpt = None,
    labels: LabelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Identity linear probe (the paper's): frozen encoder, 100 frames a subject, 70 train / 30 test."""
    from fmae.config import load_project
    from fmae.run_config import resolve_run_config

    project = load_project(config, runs_dir)
    ckpt, source_cfg = _checkpoint_of(source, checkpoint)
    cli_model = model or source_cfg.get("model")
    if cli_model is None:
        raise FmaeError(f"{source}: a checkpoint file does not say its architecture — pass --model (e.g. vit_base)")
    cli = cli_layer(model=cli_model, init=str(ckpt), epochs=epochs, set_=set_)
    if "input_size" in source_cfg and "input_size" not in cli:
        cli["input_size"] = int(source_cfg["input_size"])
    resolved = resolve_run_config(project, dataset, probe=True, seed=seed, cli=cli, root=root, labels=labels)
    if source_cfg.get("run_id"):
        resolved.values["source_run"] = source_cfg["run_id"]
    with _new_run(project.runs_dir, resolved, name) as run:
        train_here(run.path, False, quiet)
    summary = Summary.read(run) or Summary()
    if summary.best:
        out.print(f"identity probe top-1 accuracy: {summary.best['accuracy']:.4f} "
                  f"(chance {summary.best['chance']:.4f}; best of {summary.epochs} epochs on the 30-frame test split)")


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Score an AU run on another benchmark's frames (every one of them), over the AUs both label, e.g. a BP4D run on disfa.")] = None,
    device: Annotated[Optional[str], typer.Option("--device")] = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    root: RootOpt = None,
    labels: LabelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Re-evaluate a run's best or last checkpoint on its test split, or (--dataset) on another benchmark
    (a new run folder, task eval; cross-dataset results are rows of their own in `fmae report`)."""
    from fmae.config import Resolved, load_project

    project = load_project(config, runs_dir)
    ckpt, cfg = _checkpoint_of(run, checkpoint)
    if not cfg:
        raise FmaeError(f"{run}: not a run folder — `fmae eval` re-evaluates a run")
    values = {k: v for k, v in cfg.items() if k != "run_id"}
    values.update(eval_checkpoint=str(ckpt), source_run=cfg["run_id"], init="")
    if device:
        values["device"] = device
    sources = {k: f"{run}/run.toml" for k in values}
    name = f"eval-{checkpoint}"
    if dataset is not None:
        target = _cross_location(project, values, sources, run, dataset, root, labels)
        name += f"-on-{target}"
    elif root is not None or labels is not None:
        raise FmaeError("--root/--labels name another benchmark's copy: give them with --dataset")
    with _new_run(project.runs_dir, Resolved(values, sources), name) as new:
        train_here(new.path, False, quiet)
    summary = Summary.read(new) or Summary()
    if summary.last:
        rec = summary.last
        where = (f"on every {values['eval_dataset']} frame over AU " + ", ".join(k[2:] for k in rec.get("f1_05", {}))
                 if dataset is not None and "eval_dataset" in values else "on its test split")
        out.print(f"{summary.metric_label}: {rec[summary.metric]:.4f} (epoch {rec['epoch']} checkpoint, {where})",
                  soft_wrap=True)


def _cross_location(project, values: dict[str, Any], sources: dict[str, str], run: Path, dataset: str,
                    root: Optional[Path], labels: Optional[Path]) -> str:
    """Point an eval run at another AU benchmark's frames (its location from fmae.toml / --root / --labels)."""
    from fmae.data.locate import dataset_location, ensure_dataset, missing_labels
    from fmae.registry import get_dataset, shared_au_codes

    target = get_dataset(dataset)
    if values.get("task") != "au":
        raise FmaeError(f"{run}: a {values.get('task')} run — cross-dataset evaluation scores AU detection runs")
    if target.name == values.get("dataset"):
        raise FmaeError(f"--dataset {dataset}: {run} was trained on {target.name} — leave --dataset out to "
                        "re-evaluate it on its own test fold")
    shared_au_codes(str(values["dataset"]), target.name)  # refused here when they share no AU
    loc = dataset_location(project, target, root, labels)
    if not (loc.labels or (loc.train_labels and loc.test_labels)):
        raise missing_labels(target, loc)
    loc = ensure_dataset(target, loc)
    values.update(eval_dataset=target.name, data_root=str(loc.root or ""), labels=str(loc.labels or ""),
                  train_labels=loc.train_labels or "", test_labels=loc.test_labels or "")
    for key in ("data_root", "labels", "train_labels", "test_labels"):
        sources[key] = loc.labels_origin or loc.origin if key != "data_root" else loc.origin
    sources["eval_dataset"] = "--dataset"
    return target.name


def _checkpoint_of(source: Path, which: str) -> tuple[Path, dict[str, Any]]:
    """A checkpoint path, and the run's config when `source` is a run folder."""
    from fmae.runs import RunDir

    if which not in ("best", "last"):
        raise FmaeError(f"--checkpoint {which}: choose best or last")
    if source.is_dir():
        rd = RunDir.open(source)
        cfg = dict(rd.read_config())
        cfg["run_id"] = rd.id
        ckpt = rd.checkpoints / f"{which}.pt"
        if not ckpt.is_file():
            raise FmaeError(f"{ckpt}: no {which} checkpoint in this run (state: {rd.read_status().get('state')})")
        return ckpt.resolve(), cfg
    if not source.is_file():
        raise FmaeError(f"{source}: no such run folder or checkpoint file")
    return source.resolve(), {}
