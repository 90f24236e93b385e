"""The arithmetic of a paired comparison, vectorised: each run's test predictions reduced once to
per-subject counts, then every bootstrap draw scored from those counts by one matrix product.

Why per-subject counts: a subject's frames are strongly correlated, so the bootstrap resamples test
*subjects* (resampling frames gives intervals too narrow). A draw is a vector of multiplicities w[s]
(how often subject s was drawn); the confusion counts of a draw at every threshold are then w @ counts,
and the AUC's Mann-Whitney numerator is wᵀ C w with C[i, j] the concordant (positive of subject i,
negative of subject j) pairs. So 2,000 draws cost a few matrix products, never a pass over the frames.

Every number equals `fmae.metrics` on the drawn frames: prediction `prob >= t` on the grid 0.01…0.99
(compared in float64), F1 = 2TP / (2TP + FP + FN) and 0 when that is 0/0, the best threshold the
first maximiser of the mean F1 over AUs (tuned on test, as the paper), AUC with ties counted half.
numpy only: the app imports this.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from fmae.metrics import THRESHOLDS

I05 = int(np.flatnonzero(np.isclose(THRESHOLDS, 0.5))[0])  # F1@0.5 is column 49 of the grid
METRIC_KEYS = ("f1", "f1_best", "auc")  # `fmae report --metric` names


@dataclass
class SubjectCounts:
    """One run's test predictions as sufficient statistics per test subject (S subjects, T thresholds,
    K AUs)."""

    ge_pos: np.ndarray  # [S, T*K] positives with prob >= t (t-major, then AU)
    ge_neg: np.ndarray  # [S, T*K] negatives with prob >= t
    pos: np.ndarray  # [S, K] positives
    neg: np.ndarray  # [S, K] negatives
    concord2: np.ndarray | None  # [K, S, S] 2 × (pairs positive-of-i above negative-of-j) + ties; None: no AUC

    @property
    def num_aus(self) -> int:
        return self.pos.shape[1]


def subject_counts(probs: np.ndarray, labels: np.ndarray, subject: np.ndarray, num_subjects: int,
                   with_auc: bool = True) -> SubjectCounts:
    """`probs` [N, K] in [0, 1], `labels` [N, K] 0/1, `subject` [N] in 0..S-1. The AUC's pair counts (most
    of the work: a sort per AU) only `with_auc`."""
    given = np.asarray(probs)
    labels = np.asarray(labels).astype(bool)
    n, k = given.shape
    s, t = num_subjects, len(THRESHOLDS)
    idx = grid_index(given.astype(np.float64))
    key = ((subject[:, None] * k + np.arange(k)) * 2 + labels) * (t + 1) + idx
    hist = np.bincount(key.ravel(), minlength=s * k * 2 * (t + 1)).reshape(s, k, 2, t + 1)
    at_least = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # [S, K, 2, T]: idx >= i + 1
    ge = at_least.transpose(0, 2, 3, 1).astype(np.float64)  # [S, 2, T, K]
    return SubjectCounts(ge[:, 1].reshape(s, t * k), ge[:, 0].reshape(s, t * k),
                         hist[:, :, 1].sum(-1).astype(np.float64), hist[:, :, 0].sum(-1).astype(np.float64),
                         _concordance(given, labels, subject, s) if with_auc else None)


def grid_index(probs: np.ndarray) -> np.ndarray:
    """How many grid thresholds lie at or below each probability (so prob >= t_i ⇔ i < index), as
    `np.searchsorted(THRESHOLDS, probs, side="right")` gives it, without the search: floor(100 p), then
    one step either way where the float product lands across a threshold."""
    t = len(THRESHOLDS)
    idx = np.clip(np.floor(probs * 100.0).astype(np.int64), 0, t)
    up = (idx < t) & (THRESHOLDS[np.minimum(idx, t - 1)] <= probs)
    idx += up
    down = (idx > 0) & (THRESHOLDS[np.maximum(idx - 1, 0)] > probs)
    idx -= down
    return idx


def _concordance(probs: np.ndarray, labels: np.ndarray, subject: np.ndarray, s: int) -> np.ndarray:
    n, k = probs.shape
    out = np.zeros((k, s, s))
    columns, ys = np.ascontiguousarray(probs.T), np.ascontiguousarray(labels.T)  # [K, N]: rows sort fastest
    change = np.empty(n, dtype=bool)
    for a in range(k):
        order = np.argsort(columns[a])
        p, y, sub = columns[a][order], ys[a][order], subject[order]
        pos = np.flatnonzero(y)
        if not len(pos):
            continue
        neg = np.flatnonzero(~y)
        below = np.zeros((s, n + 1), dtype=np.int32)  # below[j, m]: negatives of subject j among the first m
        below[sub[neg], neg + 1] = 1
        np.cumsum(below, axis=1, out=below)
        # tied values: a positive counts the negatives before its value's first frame, and (once more)
        # those up to its value's last frame: below + (below + tied) = 2 × (below + tied / 2)
        change[0] = True
        np.not_equal(p[1:], p[:-1], out=change[1:])
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], n)
        group = (np.cumsum(change) - 1)[pos]
        twice = (below[:, starts[group]] + below[:, ends[group]]).astype(np.float64)  # [S, Npos]
        pos_hot = np.zeros((len(pos), s))
        pos_hot[np.arange(len(pos)), sub[pos]] = 1.0
        out[a] = (twice @ pos_hot).T  # [S_pos, S_neg]
    return out


def scores(c: SubjectCounts, w: np.ndarray) -> dict[str, np.ndarray]:
    """Per-AU F1@0.5, best-threshold F1 and AUC of each draw: w [D, S] multiplicities → each [D, K]."""
    d, k, t = w.shape[0], c.num_aus, len(THRESHOLDS)
    # 2TP and 2TP + FP + FN = TP + FP + P summed per subject first ([S, T*K], small), so each draw costs
    # two products and two passes over [D, T*K]; integer sums either way, the same F1 to the bit
    two_tp = w @ (2.0 * c.ge_pos)  # [D, T*K]
    denom = w @ (c.ge_pos + c.ge_neg + np.tile(c.pos, (1, t)))
    np.maximum(denom, 1.0, out=denom)  # 0/0 (no positive, none predicted) is F1 0: TP is 0 there
    f1 = np.divide(two_tp, denom, out=two_tp).reshape(d, t, k)  # [D, T, K]
    best = np.argmax(f1.mean(axis=2), axis=1)  # [D]: the first threshold of the highest mean F1
    out = {"f1": f1[:, I05, :], "f1_best": f1[np.arange(d), best, :]}
    if c.concord2 is None:
        return out
    pairs = (w @ c.pos) * (w @ c.neg)  # [D, K]
    u2 = ((w @ c.concord2) * w).sum(axis=2).T  # [D, K]: wᵀ C w of each draw
    auc = np.divide(u2, 2.0 * pairs, out=np.full_like(u2, np.nan), where=pairs > 0)
    out["auc"] = auc
    return out


def with_mean(per_au: np.ndarray, metric: str) -> np.ndarray:
    """[…, K] → […, K + 1]: the mean over AUs appended, as the tables' avg column (AUC: over the AUs
    that are defined)."""
    if metric == "auc":
        ok = ~np.isnan(per_au)
        count = ok.sum(axis=-1)
        total = np.where(ok, per_au, 0.0).sum(axis=-1)
        avg = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
    else:
        avg = per_au.mean(axis=-1)
    return np.concatenate([per_au, avg[..., None]], axis=-1)


def draws_of(num_subjects: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[D, S] multiplicities of `draws` bootstrap resamples of S subjects (with replacement)."""
    return rng.multinomial(num_subjects, np.full(num_subjects, 1.0 / num_subjects), size=draws).astype(np.float64)


def nanmean_cells(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 (cells) of the defined values; NaN where no cell has one."""
    ok = ~np.isnan(x)
    count = ok.sum(axis=0)
    total = np.where(ok, x, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def sign_flip_p(deltas: np.ndarray, rng: np.random.Generator, max_exact: int = 16,
                samples: int = 20000) -> tuple[np.ndarray, int, bool]:
    """Two-sided p-value per column of the mean of `deltas` [C, M] (one row per cell) under the null
    that each cell's difference is as likely negative as positive: every sign pattern when C ≤
    `max_exact` (exact), else `samples` random ones. Returns (p [M], patterns used, exact)."""
    c = deltas.shape[0]
    if c <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=c)))  # [2^C, C]
        exact = True
    else:
        signs = rng.choice((1.0, -1.0), size=(samples, c))
        signs[0] = 1.0  # the observed pattern counts once, so p is never 0
        exact = False
    filled = np.where(np.isnan(deltas), 0.0, deltas)  # a cell without a value adds nothing either way
    observed = np.abs(filled.mean(axis=0))  # [M]
    flipped = np.abs(signs @ filled / c)  # [P, M]
    p = (flipped >= observed - 1e-12).mean(axis=0)
    p[np.isnan(deltas).all(axis=0)] = np.nan
    return p, len(signs), exact
