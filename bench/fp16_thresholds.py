"""How much the original's fp16 evaluation changes the AU F1s against fmae's float64 comparison.

The original evaluates under fp16 autocast: the logits come out of the head in float16, their sigmoid is
float16, and `prob >= t` compares in float16 (t = i/100 cast to it, e.g. 0.29 -> 0.2900390625). fmae
scores float32 probabilities against float64 thresholds (`fmae.metrics.au_scores`). This script scores
the same logits both ways and prints the largest differences over seeds:

    .venv/bin/python bench/fp16_thresholds.py [--seeds 20]

Labels at BP4D-like base rates. "random": logits N(0, 1) independent of the labels; "uniform":
probabilities U(0, 1) independent of the labels (a flat F1 curve over every threshold, where the best one
is a toss-up between near-equal ones); "realistic": logits that separate the labels (AUC ≈ 0.86, an
AU detector's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmae.metrics import THRESHOLDS, au_scores  # noqa: E402

RATES = np.array([0.21, 0.17, 0.20, 0.46, 0.55, 0.59, 0.56, 0.17, 0.34, 0.16, 0.15, 0.05])  # BP4D-like


def original_scores(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """(mean F1 at 0.5, best-threshold mean F1) as the original computes them under fp16 autocast."""
    probs = torch.sigmoid(logits.half())  # float16, as autocast leaves the head's output
    pos = labels.astype(bool)
    means = []
    for t in THRESHOLDS:
        pred = (probs >= float(t)).numpy()  # the Python float is cast to float16 for the comparison
        tp = (pred & pos).sum(0)
        denom = pred.sum(0) + pos.sum(0)
        f1 = np.divide(2.0 * tp, denom, out=np.zeros(len(denom)), where=denom > 0)  # sklearn: 0 when empty
        means.append(f1.mean())
    return float(means[49]), float(max(means))


def data(kind: str, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    labels = (rng.random((n, len(RATES))) < RATES).astype(np.uint8)
    if kind == "random":
        logits = rng.standard_normal(labels.shape)
    elif kind == "uniform":
        p = rng.uniform(1e-4, 1 - 1e-4, labels.shape)
        logits = np.log(p / (1 - p))
    else:  # separation d' = 1.5 (AUC ≈ 0.86), centred so that p is spread over (0, 1)
        logits = rng.standard_normal(labels.shape) + 1.5 * labels - 1.0
    return torch.from_numpy(logits.astype(np.float32)), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    print("| data | frames | max abs Δ F1@0.5 (mean over AUs) | max abs Δ F1 best-threshold (tuned on test) | seeds |")
    print("|---|---|---|---|---|")
    for kind in ("random", "uniform", "realistic"):
        for n in (200, 2000, 20000):
            d05, dbest = [], []
            for seed in range(args.seeds):
                logits, labels = data(kind, n, np.random.default_rng(seed))
                ours = au_scores(torch.sigmoid(logits).numpy(), labels)  # float32 probs, float64 thresholds
                f05, fbest = original_scores(logits, labels)
                d05.append(abs(ours.f1_05_mean - f05))
                dbest.append(abs(ours.f1_best_mean - fbest))
            print(f"| {kind} | {n} | {max(d05):.2g} | {max(dbest):.2g} | {args.seeds} |")


if __name__ == "__main__":
    main()
