"""fmae.metrics against scikit-learn and naive loops: the vectorised code must give the same numbers."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from fmae.errors import FmaeError
from fmae.metrics import (THRESHOLDS, AUScores, FERScores, accuracy, au_scores, confusion_matrix,
                          f1_per_threshold, fer_scores, roc_auc_per_au)

SEEDS = [0, 1, 7]


def au_case(seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """[N, 8] probabilities and labels with every awkward column the evaluation meets."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 8)) < rng.uniform(0.15, 0.6, 8)).astype(np.int64)
    probs = np.clip(0.35 * labels + 0.65 * rng.random((n, 8)), 0, 1)
    probs[:, 0] = np.round(probs[:, 0], 2)  # ties, and many probs exactly equal to some i/100
    probs[:, 1] = rng.choice([0.0, 0.1, 0.37, 0.5, 0.9, 1.0], n)  # heavy ties on thresholds and ends
    labels[:, 2] = 0  # an AU with no positives
    labels[:, 3] = 1  # an AU with only positives
    probs[:, 4] = rng.random(n) * 0.009  # an AU never predicted positive at any threshold
    probs[:5, 5] = [0.5, 0.37, 0.5, 0.37, 0.01]
    return probs, labels


@functools.cache
def sklearn_f1_table(seed: int) -> np.ndarray:
    """[T, K] for au_case(seed) with sklearn: one multilabel call per threshold gives each AU's binary F1."""
    probs, labels = au_case(seed)
    return np.stack([f1_score(labels, (probs >= t).astype(int), average=None, zero_division=0.0)
                     for t in THRESHOLDS])


def test_thresholds_are_exactly_i_over_100():
    assert len(THRESHOLDS) == 99
    assert all(THRESHOLDS[i - 1] == i / 100 for i in range(1, 100))
    assert THRESHOLDS[36] == 0.37 and THRESHOLDS[49] == 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_per_threshold_matches_sklearn(seed):
    probs, labels = au_case(seed)
    ours = f1_per_threshold(probs, labels)
    assert ours.shape == (99, 8)
    np.testing.assert_allclose(ours, sklearn_f1_table(seed), rtol=0, atol=1e-12)
    assert np.all(ours[:, 2] == 0.0)  # no positives: sklearn's zero_division (TP = 0)
    assert np.all(ours[:, 4] == 0.0)  # never predicted positive
    # A binary call per AU agrees with the multilabel reference at the thresholds the data sits on.
    for t_index in (36, 49):
        for k in range(8):
            ref = f1_score(labels[:, k], probs[:, k] >= THRESHOLDS[t_index], zero_division=0.0)
            assert abs(ours[t_index, k] - ref) < 1e-12


def test_f1_per_threshold_float32_probs_score_as_float64():
    probs, labels = au_case(3)
    p32 = probs.astype(np.float32)
    ours = f1_per_threshold(p32, labels)
    np.testing.assert_array_equal(ours, f1_per_threshold(p32.astype(np.float64), labels))
    for i in range(0, 99, 9):
        ref = f1_score(labels, (p32 >= THRESHOLDS[i]).astype(int), average=None, zero_division=0.0)
        np.testing.assert_allclose(ours[i], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_au_scores_match_naive_loops(seed):
    probs, labels = au_case(seed)
    table = sklearn_f1_table(seed)  # [T, K]
    best_i, best_mean = 0, -1.0
    for i in range(len(THRESHOLDS)):  # the original's scan: the first t with the highest mean wins
        m = float(np.mean(table[i]))
        if m > best_mean:
            best_i, best_mean = i, m
    scores = au_scores(probs, labels)
    assert scores.best_threshold == THRESHOLDS[best_i]
    assert abs(scores.f1_best_mean - best_mean) < 1e-12
    np.testing.assert_allclose(scores.f1_best, table[best_i], rtol=0, atol=1e-12)

    at_05 = f1_score(labels, (probs >= 0.5).astype(int), average=None, zero_division=0.0)
    np.testing.assert_allclose(scores.f1_05, at_05, rtol=0, atol=1e-12)
    assert abs(scores.f1_05_mean - at_05.mean()) < 1e-12

    for k in range(8):
        i = int(np.argmax(table[:, k]))
        assert scores.per_au_thresholds[k] == THRESHOLDS[i]
        assert abs(scores.f1_per_au_tuned[k] - table[i, k]) < 1e-12
    assert scores.f1_per_au_tuned_mean >= scores.f1_best_mean - 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn(seed):
    probs, labels = au_case(seed)
    auc = roc_auc_per_au(probs, labels)
    for k in range(8):
        if k in (2, 3):
            assert math.isnan(auc[k])  # one class only: undefined, as sklearn refuses it
        else:
            assert abs(auc[k] - roc_auc_score(labels[:, k], probs[:, k])) < 1e-12
    assert abs(au_scores(probs, labels).auc_mean - np.mean(auc[[0, 1, 4, 5, 6, 7]])) < 1e-12


@pytest.mark.parametrize("case", ["random", "tied", "all_zero", "all_one"])
def test_au_scores_equal_the_per_threshold_sklearn_loop(case):
    # The original's evaluation, call for call: binary f1_score per AU per threshold, roc_auc_score per AU.
    rng = np.random.default_rng(11)
    n, k = 97, 4
    labels = (rng.random((n, k)) < 0.4).astype(np.int64)
    probs = rng.random((n, k)).astype(np.float32)
    if case == "tied":
        probs = rng.choice(np.array([0.0, 0.01, 0.3, 0.5, 0.99, 1.0], np.float32), (n, k))
    elif case == "all_zero":
        labels[:] = 0
    elif case == "all_one":
        labels[:] = 1
    s = au_scores(probs, labels)
    table = np.array([[f1_score(labels[:, j], probs[:, j] >= t, zero_division=0.0) for j in range(k)]
                      for t in THRESHOLDS])  # [T, K]
    np.testing.assert_allclose(f1_per_threshold(probs, labels), table, rtol=0, atol=1e-12)
    best = int(np.argmax(table.mean(axis=1)))
    assert s.best_threshold == THRESHOLDS[best]
    np.testing.assert_allclose(s.f1_best, table[best], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.per_au_thresholds, THRESHOLDS[np.argmax(table, axis=0)], rtol=0, atol=0)
    at_05 = [f1_score(labels[:, j], probs[:, j] >= 0.5, zero_division=0.0) for j in range(k)]
    np.testing.assert_allclose(s.f1_05, at_05, rtol=0, atol=1e-12)
    if case in ("all_zero", "all_one"):
        assert np.isnan(s.auc).all()
    else:
        ref = [roc_auc_score(labels[:, j], probs[:, j]) for j in range(k)]
        np.testing.assert_allclose(s.auc, ref, rtol=0, atol=1e-12)


def test_hand_computed_case_and_first_threshold_on_ties():
    probs = np.array([[0.2, 0.5], [0.8, 0.5], [0.8, 0.49]])
    labels = np.array([[0, 1], [1, 1], [1, 0]])
    s = au_scores(probs, labels)
    # AU a: t ≤ 0.2 → F1 4/5; 0.2 < t ≤ 0.8 → 1; above → 0.  AU b: t ≤ 0.49 → 4/5; ≤ 0.5 → 1 (0.5 ≥ 0.5).
    assert s.f1_05.tolist() == [1.0, 1.0]
    assert s.best_threshold == 0.5  # the only t where both AUs reach 1; >= counts 0.5 as positive
    assert s.f1_best.tolist() == [1.0, 1.0] and s.f1_best_mean == 1.0
    assert s.per_au_thresholds.tolist() == [0.21, 0.5]  # the first t of each AU's plateau
    np.testing.assert_allclose(s.auc, [1.0, 1.0], rtol=0, atol=1e-12)
    f1 = f1_per_threshold(probs, labels)
    assert f1[19].tolist() == [0.8, 0.8] and f1[20].tolist() == [1.0, 0.8] and f1[80].tolist() == [0.0, 0.0]


def test_best_threshold_is_first_of_a_plateau():
    # Mean F1 is 1.0 for every t in 0.31 … 0.80; the original's argmax scan keeps the lowest.
    s = au_scores(np.array([[0.2, 0.3], [0.8, 0.9]]), np.array([[0, 0], [1, 1]]))
    assert s.best_threshold == 0.31 and s.f1_best_mean == 1.0
    assert s.per_au_thresholds.tolist() == [0.21, 0.31]
    s = au_scores(np.array([[0.2], [0.8]]), np.array([[0], [1]]))
    assert s.best_threshold == 0.21 and s.f1_best.tolist() == [1.0]


def test_mean_auc_nan_when_no_au_has_both_classes():
    s = au_scores(np.array([[0.1, 0.9], [0.4, 0.2]]), np.array([[0, 1], [0, 1]]))
    assert np.isnan(s.auc).all() and math.isnan(s.auc_mean)
    d = s.to_dict([1, 2])
    assert d["auc"] == {"AU1": None, "AU2": None} and d["auc_mean"] is None


def test_au_to_dict_is_plain_json():
    probs, labels = au_case(0)
    s = au_scores(probs, labels)
    codes = [1, 2, 4, 6, 7, 10, 12, 14]
    d = s.to_dict(codes)
    json.dumps(d, allow_nan=False)  # NaN must already be None
    names = [f"AU{c}" for c in codes]
    assert set(d) == {"f1_05", "f1_05_mean", "f1_best", "f1_best_mean", "best_threshold", "f1_per_au_tuned",
                      "f1_per_au_tuned_mean", "per_au_thresholds", "auc", "auc_mean"}
    for key in ("f1_05", "f1_best", "f1_per_au_tuned", "per_au_thresholds", "auc"):
        assert list(d[key]) == names
    assert d["f1_best"]["AU4"] == s.f1_best[2] and d["f1_best_mean"] == s.f1_best_mean
    assert d["best_threshold"] == s.best_threshold and type(d["best_threshold"]) is float
    assert d["auc"]["AU4"] is None and d["auc"]["AU6"] is None and d["auc"]["AU1"] == s.auc[0]
    assert abs(np.mean(list(d["f1_05"].values())) - d["f1_05_mean"]) < 1e-12
    assert isinstance(s, AUScores)


@pytest.mark.parametrize("probs, labels, needle", [
    (np.zeros((4, 3)), np.zeros((4, 2)), "same shape"),
    (np.zeros(4), np.zeros(4), "[N, K]"),
    (np.zeros((0, 3)), np.zeros((0, 3)), "no test samples"),
    (np.full((2, 2), 0.5), np.array([[0, 2], [1, 0]]), "0 or 1"),
    (np.full((2, 2), 0.5), np.array([[0, np.nan], [1, 0]]), "0 or 1"),
    (np.array([[0.5, np.nan], [0.1, 0.2]]), np.zeros((2, 2)), "NaN"),
    (np.array([[-2.0, 3.0], [0.1, 0.2]]), np.zeros((2, 2)), "[0, 1]"),
])
def test_bad_au_input_raises(probs, labels, needle):
    for fn in (au_scores, f1_per_threshold, roc_auc_per_au):
        with pytest.raises(FmaeError) as err:
            fn(probs, labels)
        assert needle in str(err.value)


def test_bad_thresholds_and_codes_raise():
    probs, labels = au_case(0)
    with pytest.raises(FmaeError, match="increasing"):
        f1_per_threshold(probs, labels, [0.5, 0.3])
    with pytest.raises(FmaeError, match="8 scored AUs"):
        au_scores(probs, labels).to_dict([1, 2])


@pytest.mark.parametrize("seed", SEEDS)
def test_fer_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 120, 7
    targets = rng.choice([0, 1, 2, 3, 5, 6], n)  # class 4 absent from the test set
    scores = rng.random((n, c)) + 0.8 * np.eye(c)[targets] * rng.random((n, 1))
    pred = scores.argmax(1)
    fs = fer_scores(scores, targets, c)
    assert fs.accuracy == accuracy_score(targets, pred)
    assert accuracy(scores, targets) == accuracy_score(targets, pred)
    assert accuracy(pred, targets) == accuracy_score(targets, pred)
    expected_cm = sk_confusion_matrix(targets, pred, labels=list(range(c)))
    np.testing.assert_array_equal(fs.confusion, expected_cm)
    np.testing.assert_array_equal(confusion_matrix(pred, targets, c), expected_cm)
    ref = recall_score(targets, pred, labels=list(range(c)), average=None, zero_division=0.0)
    present = [0, 1, 2, 3, 5, 6]
    np.testing.assert_allclose(fs.per_class_recall[present], ref[present], rtol=0, atol=1e-12)
    assert math.isnan(fs.per_class_recall[4])
    assert abs(fs.mean_class_recall - ref[present].mean()) < 1e-12

    names = ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    d = fs.to_dict(names)
    json.dumps(d, allow_nan=False)
    assert d["per_class_recall"]["neutral"] is None and d["per_class_recall"]["sad"] == fs.per_class_recall[5]
    assert d["confusion"] == expected_cm.tolist() and d["accuracy"] == fs.accuracy
    assert isinstance(fs, FERScores)


@pytest.mark.parametrize("call, needle", [
    (lambda: fer_scores(np.zeros((3, 4)), np.array([0, 1, 2]), 5), "4 columns for 5 classes"),
    (lambda: fer_scores(np.zeros((3, 4)), np.array([0, 1]), 4), "targets are (2,)"),
    (lambda: fer_scores(np.zeros((3, 4)), np.array([0, 1, 4]), 4), "0..3"),
    (lambda: fer_scores(np.zeros((0, 4)), np.array([], dtype=int), 4), "no test samples"),
    (lambda: confusion_matrix(np.array([0, 9]), np.array([0, 1]), 3), "0..2"),
    (lambda: accuracy(np.array([0.5, 1.0]), np.array([0, 1])), "integer class indices"),
])
def test_bad_fer_input_raises(call, needle):
    with pytest.raises(FmaeError) as err:
        call()
    assert needle in str(err.value)


def test_metrics_imports_neither_torch_nor_sklearn():
    code = "import sys, fmae.metrics; print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
