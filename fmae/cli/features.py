"""`fmae features RUN`: a t-SNE picture of the encoder's pooled features of a run's test frames, coloured
by subject or by one AU's presence, with the silhouette score of every colouring (fmae/features.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmae.cli.common import out

app = typer.Typer()


@app.command("features")
def features_cmd(
    run: Annotated[Path, typer.Argument(help="An AU run folder (its best checkpoint), or an `fmae eval` run.")],
    by: Annotated[str, typer.Option("--by", help="Colour by subject, or au:N (AU N's presence, e.g. au:12).")] = "subject",
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="The PNG to write (default: RUN/features/tsne-<by>.png, where the app's Run screen looks); the 2-D points go to the same name .csv beside it.", show_default=False)] = None,
    max_frames: Annotated[int, typer.Option("--max-frames", help="At most this many test frames (a seeded random subset).")] = 2000,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the frame subset, PCA and t-SNE.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
) -> None:
    """t-SNE (after PCA to 50 dimensions) of the pooled features of the test frames, and how well subject and
    each AU's presence separate them (silhouette; IAT should lower the subject's)."""
    from fmae.features import PCA_DIMS, feature_map

    result = feature_map(run, by=by, out=out_file, max_frames=max_frames, checkpoint=checkpoint, seed=seed,
                         device=device)
    out.print(f"{result.frames} of {result.of} test frames of {result.subjects} subjects; wrote {result.png} "
              f"(coloured by {result.by}) and {result.csv}", soft_wrap=True)
    out.print(f"silhouette score (−1…1, higher = the colouring separates the features more), on the PCA-{PCA_DIMS} "
              "features | in the t-SNE plane:")
    for key, value in result.silhouette.items():
        plane = result.silhouette_2d.get(key)
        name = "subject" if key == "subject" else f"AU{key[3:]} present"
        out.print(f"  {name:<14} {'–' if value is None else f'{value:+.3f}'} | "
                  f"{'–' if plane is None else f'{plane:+.3f}'}")
