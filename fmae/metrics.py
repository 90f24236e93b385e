"""Test-set metrics: AU detection (F1 over thresholds, ROC AUC) and FER (accuracy, confusion, recall).

The AU numbers follow the original FMAE-IAT evaluation so that results compare with the paper:

- probabilities are sigmoid(AU logits); the prediction at threshold t is `prob >= t`;
- per-AU F1 is scikit-learn's binary `f1_score`, 2·TP / (2·TP + FP + FN), and 0.0 when an AU has no
  positive label and no positive prediction (sklearn's zero_division);
- F1 at t = 0.5, and the paper's number: the single t in 0.01, 0.02, …, 0.99 whose MEAN F1 over AUs
  is highest (the first such t). That threshold is tuned on the test set itself, which flatters
  the score; it is always reported as "F1 best-threshold (tuned on test)", never as plain F1;
- per-AU ROC AUC (sklearn's `roc_auc_score`), undefined (NaN) for an AU with one class only.

Instead of the original's loop of 99 thresholds × K AUs × a full pass over N frames, each AU's positive
and negative probabilities are sorted once; a binary search of the sorted arrays gives the confusion
counts at every threshold at once, and a search of the positives among the negatives gives the AUC
(O(N·K·log N) in all, ~1,000× the scikit-learn loop). Comparisons run in float64, so float32 and float64 copies of the same probabilities
score identically. This module imports only numpy: the terminal app reads it without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fmae.errors import FmaeError
from fmae.summary import GRID_EDGES, degenerate_threshold  # noqa: F401 (in summary.py: the app reads it without numpy)

THRESHOLDS = np.arange(1, 100) / 100  # [99]: 0.01 … 0.99, each exactly i/100 as Python computes it
assert (THRESHOLDS[0], THRESHOLDS[-1]) == GRID_EDGES
DEGENERATE_LABEL = "degenerate: best threshold at the grid's edge (all or nothing predicted)"



def all_positive_f1(labels) -> float:
    """Mean over AUs of the F1 of predicting every AU present on these labels: 2p / (1 + p), p an AU's
    base rate. The floor a run's F1 must clear before it shows anything learnt."""
    p = np.asarray(labels, dtype=np.float64).mean(axis=0)  # [K]
    return float(np.mean(2 * p / (1 + p)))


# ---------------------------------------------------------------------------------------------------
# AU detection


def _check_au(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Return (probs float64 [N, K], labels bool [N, K]) or raise FmaeError naming what is wrong."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or probs.shape != labels.shape:
        raise FmaeError(f"AU probabilities {probs.shape} and labels {labels.shape} must both be [N, K] "
                        "with the same shape")
    if probs.shape[0] == 0:
        raise FmaeError("no test samples: cannot score an empty test set")
    probs = probs.astype(np.float64)
    # NaN would silently count as "never positive" in F1 and break the ranks of the AUC; values
    # outside [0, 1] mean logits were passed where sigmoid(logits) belongs.
    if np.isnan(probs).any():
        raise FmaeError("AU probabilities contain NaN: the model's outputs are not finite")
    if probs.min() < 0 or probs.max() > 1:
        raise FmaeError(f"AU probabilities must lie in [0, 1] (sigmoid of the logits, not the logits); "
                        f"found {probs.min():.4g}..{probs.max():.4g}")
    if not np.all((labels == 0) | (labels == 1)):
        bad = np.unique(labels[~((labels == 0) | (labels == 1))])[:5]
        raise FmaeError(f"AU labels must be 0 or 1; found {bad.tolist()}")
    return probs, labels.astype(bool)


def f1_per_threshold(probs, labels, thresholds=THRESHOLDS) -> np.ndarray:
    """Per-AU F1 at every threshold, as sklearn's f1_score(labels[:, k], probs[:, k] >= t): [T, K]."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or len(thresholds) == 0 or np.any(np.diff(thresholds) <= 0):
        raise FmaeError("thresholds must be a non-empty, strictly increasing 1-D sequence")
    return _f1_table(_sorted_by_class(*_check_au(probs, labels)), thresholds)


def _sorted_by_class(probs: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per AU: (its positive frames' probabilities sorted, its negative frames' sorted) — the one sort
    per AU that every threshold's confusion counts and the AUC are read from."""
    columns = np.ascontiguousarray(probs.T)  # [K, N]: a column sorts fastest as a contiguous row
    ys = np.ascontiguousarray(labels.T)  # [K, N]
    return [(np.sort(col[y]), np.sort(col[~y])) for col, y in zip(columns, ys)]


def _f1_table(by_class: list[tuple[np.ndarray, np.ndarray]], thresholds: np.ndarray) -> np.ndarray:
    f1 = np.zeros((len(thresholds), len(by_class)))  # [T, K]
    for k, (pos, neg) in enumerate(by_class):
        # prob >= t ⇔ at or after the first element >= t: counts at every threshold by binary search
        tp = len(pos) - np.searchsorted(pos, thresholds, side="left")  # [T]
        fp = len(neg) - np.searchsorted(neg, thresholds, side="left")  # [T]
        denom = 2 * tp + fp + (len(pos) - tp)  # 2TP + FP + FN
        np.divide(2.0 * tp, denom, out=f1[:, k], where=denom > 0)
    return f1


def roc_auc_per_au(probs, labels) -> np.ndarray:
    """Per-AU ROC AUC as sklearn's roc_auc_score, NaN for an AU with one class only: [K]."""
    return _auc(_sorted_by_class(*_check_au(probs, labels)))


def _auc(by_class: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    # Mann-Whitney U, exactly the area under the ROC curve: each positive counts the negatives below
    # it, and half of those tied with it. Integer sums until the one division.
    auc = np.full(len(by_class), np.nan)  # [K]
    for k, (pos, neg) in enumerate(by_class):
        if len(pos) and len(neg):
            below = int(np.searchsorted(neg, pos, side="left").sum())
            below_or_tied = int(np.searchsorted(neg, pos, side="right").sum())
            auc[k] = (below + below_or_tied) / (2.0 * len(pos) * len(neg))
    return auc


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without numpy's warning) when there are none."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else math.nan


def _au_names(au_codes, k: int) -> list[str]:
    if len(au_codes) != k:
        raise FmaeError(f"{len(au_codes)} AU codes given for {k} scored AUs")
    return [str(c) if str(c).startswith("AU") else f"AU{c}" for c in au_codes]


def _json_float(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class AUScores:
    f1_05: np.ndarray  # [K] F1 at t = 0.5
    f1_05_mean: float
    best_threshold: float  # the one t with the highest mean F1 — chosen ON THE TEST SET
    f1_best: np.ndarray  # [K] F1 at best_threshold
    f1_best_mean: float  # the paper's number: "F1 best-threshold (tuned on test)"
    per_au_thresholds: np.ndarray  # [K] each AU's own best t (also tuned on test)
    f1_per_au_tuned: np.ndarray  # [K] F1 of each AU at its own best t
    f1_per_au_tuned_mean: float
    auc: np.ndarray  # [K] ROC AUC, NaN for an AU with one class only
    auc_mean: float  # over the AUs with an AUC; NaN if none

    def to_dict(self, au_codes) -> dict:
        """Plain JSON-able values, per-AU ones keyed "AU1", "AU2"…; NaN becomes None."""
        names = _au_names(au_codes, len(self.f1_05))

        def per_au(values):
            return {name: _json_float(v) for name, v in zip(names, values)}

        return {
            "f1_05": per_au(self.f1_05), "f1_05_mean": _json_float(self.f1_05_mean),
            "f1_best": per_au(self.f1_best), "f1_best_mean": _json_float(self.f1_best_mean),
            "best_threshold": float(self.best_threshold),
            "f1_per_au_tuned": per_au(self.f1_per_au_tuned),
            "f1_per_au_tuned_mean": _json_float(self.f1_per_au_tuned_mean),
            "per_au_thresholds": per_au(self.per_au_thresholds),
            "auc": per_au(self.auc), "auc_mean": _json_float(self.auc_mean),
        }


def au_scores(probs, labels) -> AUScores:
    """All AU numbers for one evaluation; probs and labels are [N, K]."""
    by_class = _sorted_by_class(*_check_au(probs, labels))
    f1 = _f1_table(by_class, THRESHOLDS)  # [T, K]
    f1_05 = _f1_table(by_class, np.array([0.5]))[0]  # [K]
    mean = f1.mean(axis=1)  # [T]
    best = int(np.argmax(mean))  # argmax keeps the first (lowest) t on ties, as the original did
    per_au = np.argmax(f1, axis=0)  # [K]
    tuned = f1[per_au, np.arange(f1.shape[1])]  # [K]
    auc = _auc(by_class)
    return AUScores(
        f1_05=f1_05, f1_05_mean=float(f1_05.mean()),
        best_threshold=float(THRESHOLDS[best]), f1_best=f1[best].copy(), f1_best_mean=float(mean[best]),
        per_au_thresholds=THRESHOLDS[per_au], f1_per_au_tuned=tuned, f1_per_au_tuned_mean=float(tuned.mean()),
        auc=auc, auc_mean=_nanmean(auc),
    )


# ---------------------------------------------------------------------------------------------------
# Facial expression recognition


def _check_fer(pred_or_scores, targets, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (predicted class [N] int, targets [N] int) or raise FmaeError."""
    p, targets = np.asarray(pred_or_scores), np.asarray(targets)
    if p.ndim not in (1, 2) or targets.ndim != 1 or len(p) != len(targets):
        raise FmaeError(f"FER predictions {p.shape} must be [N] classes or [N, C] scores for targets [N]; "
                        f"targets are {targets.shape}")
    if len(targets) == 0:
        raise FmaeError("no test samples: cannot score an empty test set")
    if p.ndim == 2 and num_classes is not None and p.shape[1] != num_classes:
        raise FmaeError(f"FER scores have {p.shape[1]} columns for {num_classes} classes")
    pred = p.argmax(axis=1) if p.ndim == 2 else p
    for name, a in (("predictions", pred), ("targets", targets)):
        if not np.issubdtype(a.dtype, np.integer) and not np.all(np.equal(np.mod(a, 1), 0)):
            raise FmaeError(f"FER {name} must be integer class indices")
        if num_classes is not None and (a.min() < 0 or a.max() >= num_classes):
            raise FmaeError(f"FER {name} must lie in 0..{num_classes - 1}; found {a.min()}..{a.max()}")
    return pred.astype(np.int64), targets.astype(np.int64)


def accuracy(pred_or_scores, targets) -> float:
    """Top-1 accuracy from [N] predicted classes or [N, C] scores (argmax)."""
    pred, targets = _check_fer(pred_or_scores, targets)
    return float(np.mean(pred == targets))


def confusion_matrix(pred, targets, num_classes: int) -> np.ndarray:
    """[C, C] counts; rows are the true class, columns the predicted one (sklearn's layout)."""
    pred, targets = _check_fer(pred, targets, num_classes)
    return np.bincount(targets * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


@dataclass
class FERScores:
    accuracy: float
    per_class_recall: np.ndarray  # [C], NaN for a class absent from the test set
    mean_class_recall: float  # over the classes present
    confusion: np.ndarray  # [C, C] int, rows = truth

    def to_dict(self, class_names) -> dict:
        if len(class_names) != len(self.per_class_recall):
            raise FmaeError(f"{len(class_names)} class names given for {len(self.per_class_recall)} classes")
        return {
            "accuracy": float(self.accuracy), "mean_class_recall": _json_float(self.mean_class_recall),
            "per_class_recall": {str(n): _json_float(r) for n, r in zip(class_names, self.per_class_recall)},
            "confusion": self.confusion.tolist(),
        }


def fer_scores(scores, targets, num_classes: int) -> FERScores:
    """Accuracy, per-class recall and confusion from [N, C] scores and [N] true classes."""
    pred, targets = _check_fer(scores, targets, num_classes)
    confusion = confusion_matrix(pred, targets, num_classes)  # [C, C]
    support = confusion.sum(axis=1)  # [C]
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, np.diag(confusion) / support, np.nan)
    return FERScores(accuracy=float(np.mean(pred == targets)), per_class_recall=recall,
                     mean_class_recall=_nanmean(recall), confusion=confusion)
