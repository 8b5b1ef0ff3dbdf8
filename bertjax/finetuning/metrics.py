"""Classification and regression metrics, and the metrics each GLUE task reports.

Each metric takes numpy-compatible 1-D arrays of the whole evaluation set (predictions first,
like `glue_metrics`) and returns a Python float. Metrics are computed once over the gathered set
rather than averaged over batches because F1, Matthews correlation and the correlations are not
decomposable into per-batch means.

Conventions where a metric is undefined: F1 and Matthews correlation return 0.0 (as the common
GLUE scorers do, so an untrained model scores 0 instead of poisoning logs); Pearson and Spearman
return nan when either side is constant, since a correlation there genuinely has no value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bertjax.data.glue import glue_task


def _as_1d(x: np.ndarray | Sequence, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 1:  # regression heads often output [N, 1]
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per example), got shape {a.shape}")
    return a


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _as_1d(predictions, "predictions"), _as_1d(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.size == 0:
        raise ValueError("no examples to score: predictions and labels are empty")
    return p, y


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose predicted class equals the label.

    Args:
      predictions: [N] predicted class ids.
      labels: [N] true class ids.

    Returns:
      Accuracy in [0, 1].
    """
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the `positive` class: 2·TP / (2·TP + FP + FN).

    Args:
      predictions: [N] predicted class ids.
      labels: [N] true class ids.
      positive: the class counted as positive (MRPC and QQP use 1).

    Returns:
      F1 in [0, 1]; 0.0 when there are neither predicted nor true positives.
    """
    p, y = _pair(predictions, labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    # The 2TP form avoids the 0/0 of precision when nothing is predicted positive.
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (the multi-class R_K form; equals the 2x2 formula).

    With confusion matrix C (rows true, columns predicted), t = row sums, p = column sums,
    c = trace, s = N:  MCC = (c·s − t·p) / sqrt((s² − p·p)(s² − t·t)).

    Args:
      predictions: [N] predicted class ids.
      labels: [N] true class ids.

    Returns:
      MCC in [-1, 1]; 0.0 when a marginal is constant (e.g. one class always predicted).
    """
    p, y = _pair(predictions, labels)
    classes, inverse = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (inverse[:n], inverse[n:]), 1.0)
    t, q = conf.sum(axis=1), conf.sum(axis=0)
    c, s = np.trace(conf), float(n)
    cov_yp = c * s - t @ q
    cov_pp = s * s - q @ q
    cov_yy = s * s - t @ t
    if cov_pp == 0.0 or cov_yy == 0.0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_pp * cov_yy))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation coefficient.

    Args:
      predictions: [N] real-valued predictions.
      labels: [N] real-valued targets.

    Returns:
      r in [-1, 1]; nan if either side is constant.
    """
    p, y = _pair(predictions, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    dp, dy = p - p.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dp * dp) * np.sum(dy * dy))
    if denom == 0.0:
        return float("nan")
    # Clip: rounding can push |r| a hair above 1 for perfectly (anti-)correlated inputs.
    return float(np.clip(np.sum(dp * dy) / denom, -1.0, 1.0))


def rank_average(x: np.ndarray | Sequence[float]) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span.

    Example: [10, 20, 20, 30] -> [1, 2.5, 2.5, 4].

    Args:
      x: [N] values.

    Returns:
      [N] float64 ranks.
    """
    a = _as_1d(x, "values")
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # Start index of each run of equal values in sorted order.
    new_run = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]])
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [len(a)]])  # exclusive
    # Positions starts..ends-1 have 1-based ranks starts+1..ends; their mean is (starts+1+ends)/2.
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = run_rank[run_id]
    return ranks


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation: `pearson` of the average ranks (`rank_average`: ties share a
    rank). Arguments as `pearson`'s; returns rho in [-1, 1], nan if either side is constant."""
    p, y = _pair(predictions, labels)
    return pearson(rank_average(p), rank_average(y))


_METRIC_FNS = {"accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef, "pearson": pearson,
               "spearman": spearman}


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics GLUE reports for `task`.

    Args:
      task: GLUE task name (see bertjax.data.glue.GLUE_TASKS).
      predictions: [N] class ids, or [N, C] logits (argmax taken) for classification tasks;
        [N] or [N, 1] scores for STS-B.
      labels: [N] class ids or STS-B scores.

    Returns:
      {metric name: value}, e.g. {"f1": 0.8, "accuracy": 0.75} for mrpc.
    """
    spec = glue_task(task)
    predictions = np.asarray(predictions)
    if not spec.is_regression and predictions.ndim == 2 and predictions.shape[1] > 1:
        predictions = predictions.argmax(axis=-1)  # logits -> class ids
    return {m: _METRIC_FNS[m](predictions, labels) for m in spec.metrics}
