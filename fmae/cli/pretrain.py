"""`fmae pretrain` (MAE on face images from LMDB stores or folders) and `fmae visualize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmae.cli.common import (ConfigOpt, GpusPerNodeOpt, NodesOpt, NprocOpt, QuietOpt, RunsDirOpt, SetOpt, cli_layer,
                              out, show_dry_run)
from fmae.cli.training import submit_to_slurm, train_here
from fmae.errors import FmaeError

app = typer.Typer()


@app.command("pretrain")
def pretrain_cmd(
    data: Annotated[list[Path], typer.Option("--data", help="Image store (`fmae data lmdb`) or image folder; repeatable.")],
    model: Annotated[Optional[str], typer.Option("--model", help="vit_tiny, vit_small, vit_base, vit_large.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Per-process batch (recipe: by model size).")] = None,
    mask_ratio: Annotated[Optional[float], typer.Option("--mask-ratio")] = None,
    decoder_depth: Annotated[Optional[int], typer.Option("--decoder-depth", help="Default: the model's (paper's ViTs 8, vit_tiny 3).")] = None,
    decoder_dim: Annotated[Optional[int], typer.Option("--decoder-dim", help="Default: the model's (paper's ViTs 512, vit_tiny 64).")] = None,
    decoder_heads: Annotated[Optional[int], typer.Option("--decoder-heads")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")] = None,
    name: Annotated[Optional[str], typer.Option("--name")] = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the resolved config; create nothing.")] = False,
    nproc: NprocOpt = 1,
    nodes: NodesOpt = 1,
    gpus_per_node: GpusPerNodeOpt = None,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """MAE pretraining (the paper's recipe: mask 0.75, norm-pix loss, blr 1.5e-4, betas 0.9/0.95)."""
    from fmae.config import load_project
    from fmae.run_config import create_run, resolve_pretrain_config

    project = load_project(config, runs_dir)
    cli = cli_layer(model=model, epochs=epochs, batch_size=batch_size, mask_ratio=mask_ratio,
                     decoder_depth=decoder_depth, decoder_dim=decoder_dim, decoder_heads=decoder_heads,
                     device=device, set_=set_)
    resolved = resolve_pretrain_config(project, [p.expanduser() for p in data], seed=seed, cli=cli)
    if dry_run:
        show_dry_run(resolved, "MAE pretraining")
        return
    run = create_run(project.runs_dir, resolved, name=name)
    out.print(f"run {run.id}")
    if submit_to_slurm(run.path, project, nodes, gpus_per_node, nproc):
        return
    train_here(run.path, False, quiet, nproc)
    out.print(f"pretrained encoder: {run.checkpoints / 'pretrained.pth'} (fine-tune with --init)")


@app.command("visualize")
def visualize_cmd(
    source: Annotated[Path, typer.Argument(help="A pretraining run folder or an MAE checkpoint file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (or folders of images).")],
    out_png: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Encoder of a checkpoint file (a run knows its own).")] = None,
    mask_ratio: Annotated[float, typer.Option("--mask-ratio")] = 0.75,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random masks.")] = 0,
    input_size: Annotated[Optional[int], typer.Option("--input-size")] = None,
    decoder_heads: Annotated[Optional[int], typer.Option("--decoder-heads", help="For a checkpoint file (default: the model's, 16 for the paper's ViTs).")] = None,
) -> None:
    """Original / masked / reconstructed (/ with visible patches) rows for each image, as one PNG."""
    import torch

    from fmae.atomic_write import write_bytes_atomic
    from fmae.data.torch.datasets import load_rgb
    from fmae.data.image_files import IMAGE_SUFFIXES
    from fmae.data.torch.transforms import eval_transform
    from fmae.models.mae_checkpoint import mae_for_checkpoint
    from fmae.runs import RunDir
    from fmae.visualize import reconstruction_grid

    if not 0 < mask_ratio < 1:
        raise FmaeError(f"--mask-ratio {mask_ratio}: must be between 0 and 1")
    cfg: dict = {}
    if source.is_dir():
        rd = RunDir.open(source)
        cfg = dict(rd.read_config())
        if cfg.get("task") != "pretrain":
            raise FmaeError(f"{source}: a {cfg.get('task')} run has no decoder to reconstruct with — pass a pretraining run")
        ckpt_path = rd.checkpoints / "pretrained.pth"
        if not ckpt_path.is_file():
            ckpt_path = rd.checkpoints / "last.pt"
    else:
        ckpt_path = source
    mae = mae_for_checkpoint(ckpt_path, model or cfg.get("model"), cfg, input_size=input_size,
                             decoder_heads=decoder_heads)
    size = mae.grid * mae.patch
    files: list[Path] = []
    for p in images:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FmaeError(f"{p}: no such image or folder")
    if not files:
        raise FmaeError("no images to visualise")
    files = files[:32]
    tf = eval_transform({"input_size": size})
    batch = torch.stack([tf(load_rgb(f)) for f in files])
    png = reconstruction_grid(mae, batch, mask_ratio, seed=seed)
    import io

    buf = io.BytesIO()
    png.save(buf, format="PNG")
    write_bytes_atomic(out_png, buf.getvalue())
    out.print(f"wrote {out_png}: {len(files)} images × original / masked / reconstruction / with visible patches "
              f"(mask ratio {mask_ratio}, seed {seed})")
