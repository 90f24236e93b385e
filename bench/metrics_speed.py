"""Scoring speed: best-threshold per-AU F1 over t = 0.01 … 0.99 plus per-AU ROC AUC on N × K predictions.

Ours is `fmae.metrics.au_scores` (one sort of each AU's positive and negative probabilities; binary
searches of them give every threshold's counts and the AUC's ranks). Original-style is the FMAE-IAT
evaluation: scikit-learn's `f1_score` once per AU per threshold (99 × K calls, plus K at t = 0.5) and
`roc_auc_score` once per AU. Both score the same float32 probabilities; every number must agree to 1e-12
(asserted), and the target is ≥ 200× faster.

Usage: python bench/metrics_speed.py [--n 50000] [--aus 12] [--repeat 5]
Prints the table and writes it to bench/results/metrics_speed-<machine>.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TARGET = 200.0


def predictions(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """BP4D-like labels (base rates 0.15 … 0.6, one AU never present: its AUC is undefined) and the
    float32 sigmoid outputs of a fair model (AUC ≈ 0.8)."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.15, 0.6, k)
    labels = (rng.random((n, k)) < rates).astype(np.uint8)
    labels[:, -1] = 0  # an AU absent from the test fold: F1 is 0 by sklearn's zero_division, AUC NaN
    logits = rng.normal(0.0, 1.0, (n, k)) + 1.2 * (labels * 2.0 - 1.0) - 0.5
    probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return probs, labels


def original_style(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The original's loop: sklearn f1_score per AU per threshold, roc_auc_score per AU."""
    from sklearn.metrics import f1_score, roc_auc_score

    k = probs.shape[1]
    thresholds = np.arange(1, 100) / 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns for the AU with no positives (scored 0.0)
        f1_05 = np.array([f1_score(labels[:, j], probs[:, j] >= 0.5) for j in range(k)])
        table = np.array([[f1_score(labels[:, j], probs[:, j] >= t) for j in range(k)] for t in thresholds])
        auc = np.array([roc_auc_score(labels[:, j], probs[:, j]) if 0 < labels[:, j].sum() < len(labels)
                        else np.nan for j in range(k)])
    best = int(np.argmax(table.mean(axis=1)))
    per_au = np.argmax(table, axis=0)
    return {"f1_05": f1_05, "f1_best": table[best], "best_threshold": np.array([thresholds[best]]),
            "per_au_thresholds": thresholds[per_au], "f1_per_au_tuned": table[per_au, np.arange(k)], "auc": auc}


def ours(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    from fmae.metrics import au_scores

    s = au_scores(probs, labels)
    return {"f1_05": s.f1_05, "f1_best": s.f1_best, "best_threshold": np.array([s.best_threshold]),
            "per_au_thresholds": s.per_au_thresholds, "f1_per_au_tuned": s.f1_per_au_tuned, "auc": s.auc}


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for key in a:
        x, y = a[key], b[key]
        if not np.array_equal(np.isnan(x), np.isnan(y)):
            raise AssertionError(f"{key}: NaN in different places ({x} vs {y})")
        ok = ~np.isnan(x)
        if ok.any():
            worst = max(worst, float(np.abs(x[ok] - y[ok]).max()))
    return worst


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def machine() -> str:
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000, help="test frames")
    p.add_argument("--aus", type=int, default=12, help="AUs (BP4D: 12)")
    p.add_argument("--repeat", type=int, default=5, help="runs of ours (best kept); the original runs once")
    p.add_argument("--out", type=Path, default=None, help="results file (default bench/results/metrics_speed-<machine>.txt)")
    args = p.parse_args()

    probs, labels = predictions(args.n, args.aus)
    load_before = os.getloadavg()
    t_ours, a = timed(lambda: ours(probs, labels), args.repeat)
    t_orig, b = timed(lambda: original_style(probs, labels), 1)
    load_after = os.getloadavg()
    diff = max_difference(a, b)
    if diff > 1e-12:
        raise SystemExit(f"FAILED: ours and the original-style loop differ by {diff:.3g} (> 1e-12)")
    ratio = t_orig / t_ours
    calls = 100 * args.aus
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}",
        f"load average (1/5/15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after {', '.join(f'{x:.2f}' for x in load_after)}",
        f"data: {args.n:,} frames × {args.aus} AUs (float32 probabilities; one AU without positives)",
        "",
        "| scoring | seconds | |",
        "|---|---:|---|",
        f"| original-style: sklearn f1_score × {calls:,} ({args.aus} at t=0.5 + 99 × {args.aus}) + roc_auc_score × {args.aus} "
        f"| {t_orig:.3f} | run once |",
        f"| ours: fmae.metrics.au_scores (one sort per AU) | {t_ours:.4f} | best of {args.repeat} |",
        "",
        f"speed-up: {ratio:.0f}× (target ≥ {TARGET:.0f}×: {'met' if ratio >= TARGET else 'NOT met'})",
        f"largest difference over F1@0.5, F1 at the best threshold, the threshold, per-AU thresholds and F1s, AUC: "
        f"{diff:.2e} (required ≤ 1e-12)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or HERE / "results" / f"metrics_speed-{machine()}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
