"""`fmae features RUN --by subject|au:N`: what the encoder's pooled features of the test frames separate,
as a picture and as numbers.

At most `max_frames` test frames (a seeded random subset) go through the run's checkpoint (best, or the
checkpoint an eval run scored); their pooled features (global average pool + fc_norm, what the heads
see) are reduced by scikit-learn's PCA to 50 dimensions, then embedded in 2-D by t-SNE. The picture is
coloured by subject or by one AU's presence; the silhouette score of every colouring (subject, and each
AU's presence) is computed on the 50-d PCA features, where distances mean something (t-SNE keeps
neighbourhoods, not distances; its plane's score is given beside it). IAT should lower the subject
score. The picture goes to RUN/features/tsne-<by>.png unless `--out` names another; the 2-D points go
to a CSV beside it (x, y, subject, path, one 0/1 column per AU), which the Run screen's Features tab
reads from the run folder.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmae.atomic_write import write_bytes_atomic, write_text_atomic
from fmae.errors import FmaeError
from fmae.runs import RunDir

log = logging.getLogger("fmae.features")
PCA_DIMS = 50


@dataclass
class FeatureMap:
    run_id: str
    by: str  # "subject" or "au:N"
    frames: int  # frames embedded
    of: int  # test frames there were
    subjects: int
    silhouette: dict[str, float | None] = field(default_factory=dict)  # colouring -> score on PCA-50 features
    silhouette_2d: dict[str, float | None] = field(default_factory=dict)  # the same in the t-SNE plane
    png: Path | None = None
    csv: Path | None = None


def parse_by(by: str, codes: tuple[int, ...]) -> str:
    """"subject" or "au:N" with N one of the run's AUs."""
    text = by.strip().lower()
    if text == "subject":
        return text
    if text.startswith("au:"):
        try:
            code = int(text[3:])
        except ValueError:
            code = -1
        if code in codes:
            return f"au:{code}"
    raise FmaeError(f"--by {by}: choose subject or au:N with N one of this run's AUs ({', '.join(map(str, codes))})")


def scored_codes(cfg: dict[str, Any]) -> tuple[int, ...]:
    """The AUs a run scores: its benchmark's, or (cross-dataset eval) those shared with the other one."""
    from fmae.registry import get_dataset, shared_au_codes

    other = cfg.get("eval_dataset")
    return shared_au_codes(cfg["dataset"], other) if other else get_dataset(cfg["dataset"]).au_codes


def _silhouette(points: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import silhouette_score

    kinds = len(np.unique(labels))
    if kinds < 2 or kinds >= len(labels):
        return None  # undefined with one group, or one frame a group
    return float(silhouette_score(points, labels))


def embed(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] → (the PCA-50 features [N, ≤50], the t-SNE plane [N, 2])."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 5:
        raise FmaeError(f"{n} test frames: t-SNE needs at least 5 (raise --max-frames or use a larger test split)")
    reduced = PCA(n_components=min(PCA_DIMS, n, features.shape[1]), random_state=seed).fit_transform(features)
    perplexity = float(min(30.0, (n - 1) / 3))
    plane = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    return reduced, plane


def _pooled_features(cfg: dict[str, Any], checkpoint: Path, max_frames: int, seed: int, device: str,
                     batch_size: int) -> tuple[np.ndarray, Any, np.ndarray, int, tuple[int, ...]]:
    import torch

    from fmae.models.checkpoint import extract_state_dict, read_checkpoint
    from fmae.models.heads import pooled_features
    from fmae.train.tasks import make_task

    if device == "cuda" and not torch.cuda.is_available():
        raise FmaeError("--device cuda, but no CUDA GPU is visible to this process — use --device cpu")
    # the run's own data and model, decoded by the eval transform, weights from the checkpoint (not init)
    task = make_task({**cfg, "init": "", "data_cache": "off", "num_workers": 0})
    data = task.build_data()
    model, _ = task.build_model()
    try:
        model.load_state_dict(extract_state_dict(read_checkpoint(checkpoint), checkpoint))
    except RuntimeError as e:
        raise FmaeError(f"{checkpoint}: does not fit this run's model ({' '.join(str(e).split())[:160]})") from None
    model.to(device).eval()
    total = len(data.test)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(max_frames, total), replace=False))
    out = []
    with torch.no_grad():
        for start in range(0, len(chosen), batch_size):
            x = torch.stack([data.test[int(i)][0] for i in chosen[start:start + batch_size]]).to(device)
            out.append(pooled_features(model.encoder, x).float().cpu().numpy())  # [B, D]
    codes = tuple(task.codes or task.spec.au_codes)
    return np.concatenate(out), task.test_labels, chosen, total, codes


def default_out(run: Path, by: str) -> Path:
    """Where a picture goes without --out: in the run folder, where the app looks, one file per colouring."""
    return run / "features" / f"tsne-{by.replace(':', '')}.png"


def feature_map(run: Path, *, by: str = "subject", out: Path | None = None, max_frames: int = 2000,
                checkpoint: str = "best", seed: int = 0, device: str = "cpu", batch_size: int = 64) -> FeatureMap:
    """The picture (PNG at `out`, default `default_out`), its points (CSV beside it) and the silhouette
    scores of one AU run."""
    rd = RunDir.open(run)
    cfg = dict(rd.read_config())
    if cfg.get("task") != "au":
        raise FmaeError(f"{run}: a {cfg.get('task')} run — feature pictures colour AU runs' test frames by subject or AU")
    if max_frames < 5:
        raise FmaeError(f"--max-frames {max_frames}: give at least 5 (t-SNE needs a few frames)")
    if out is not None and out.suffix.lower() != ".png":
        raise FmaeError(f"--out {out}: name a .png file (the points go to {out.with_suffix('.csv').name} beside it)")
    if device not in ("cpu", "cuda"):
        raise FmaeError(f"--device {device}: choose cpu or cuda")
    if checkpoint not in ("best", "last"):
        raise FmaeError(f"--checkpoint {checkpoint}: choose best or last")
    by = parse_by(by, scored_codes(cfg))
    out = out if out is not None else default_out(rd.path, by)
    ckpt = Path(cfg["eval_checkpoint"]) if cfg.get("eval_checkpoint") else rd.checkpoints / f"{checkpoint}.pt"
    if not ckpt.is_file():
        raise FmaeError(f"{ckpt}: no {checkpoint} checkpoint (state: {rd.read_status().get('state')})")
    features, labels, chosen, total, codes = _pooled_features(cfg, ckpt, max_frames, seed, device, batch_size)
    subjects = np.array(labels.subjects)[chosen]
    aus = np.asarray(labels.labels)[chosen]  # [n, K] in the scored AUs' order
    reduced, plane = embed(features, seed)
    colourings = {"subject": subjects, **{f"au:{c}": aus[:, j] for j, c in enumerate(codes)}}
    result = FeatureMap(rd.id, by, len(chosen), total, len(set(subjects)),
                        {k: _silhouette(reduced, v) for k, v in colourings.items()},
                        {k: _silhouette(plane, v) for k, v in colourings.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    result.png, result.csv = out, out.with_suffix(".csv")
    write_bytes_atomic(out, _plot(plane, colourings[by], by, result))
    write_text_atomic(result.csv, _points_csv(plane, subjects, np.array(labels.paths)[chosen], aus, codes))
    return result


def _plot(plane: np.ndarray, colour: np.ndarray, by: str, result: FeatureMap) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=120)
    if by == "subject":
        names = sorted(set(colour.tolist()))
        many = len(names) > 20  # tab20's colours run out: spread a continuous map instead
        colours = plt.get_cmap("gist_ncar")(np.linspace(0, 0.95, len(names))) if many else plt.get_cmap("tab20").colors
        for name, col in zip(names, colours):
            keep = colour == name
            ax.scatter(plane[keep, 0], plane[keep, 1], s=8, color=col, label=name)
        if len(names) <= 20:
            ax.legend(fontsize=6, markerscale=1.5, ncol=2, loc="best", title="subject", title_fontsize=7)
    else:
        for value, name, col in ((0, "absent", "#9aa5b1"), (1, "present", "#d1495b")):
            keep = colour == value
            ax.scatter(plane[keep, 0], plane[keep, 1], s=8, color=col, label=f"AU{by[3:]} {name}")
        ax.legend(fontsize=8, loc="best")
    score = result.silhouette.get(by)
    ax.set_title(f"{result.run_id}\nt-SNE of pooled encoder features, {result.frames} of {result.of} test frames, "
                 f"by {by.replace('au:', 'AU')}; silhouette (PCA-{PCA_DIMS}) "
                 + ("–" if score is None else f"{score:.3f}"), fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _points_csv(plane: np.ndarray, subjects: np.ndarray, paths: np.ndarray, aus: np.ndarray,
                codes: tuple[int, ...]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["x", "y", "subject", "path", *(f"AU{c}" for c in codes)])
    for (x, y), s, p, row in zip(plane, subjects, paths, aus):
        writer.writerow([f"{x:.6g}", f"{y:.6g}", s, p, *map(int, row)])
    return buf.getvalue()
