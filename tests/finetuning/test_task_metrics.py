"""Metrics against values worked out by hand (in the comments), with scipy as an extra check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bertjax.data import glue
from bertjax.finetuning import metrics

# Shared binary example. Pairs (pred, label), index by index:
#   0:(1,1) TP  1:(1,0) FP  2:(0,0) TN  3:(0,0) TN  4:(1,1) TP  5:(0,1) FN  6:(1,1) TP  7:(1,0) FP
# -> TP=3, FP=2, TN=2, FN=1.
PRED = np.array([1, 1, 0, 0, 1, 0, 1, 1])
GOLD = np.array([1, 0, 0, 0, 1, 1, 1, 0])


def test_accuracy():
    # 5 of 8 agree (TP + TN).
    assert metrics.accuracy(PRED, GOLD) == pytest.approx(5 / 8)


def test_f1_positive_class_is_configurable():
    # positive=1: 2TP/(2TP+FP+FN) = 6/(6+2+1) = 2/3.
    assert metrics.f1(PRED, GOLD) == pytest.approx(2 / 3)
    # positive=0: TP'=TN=2, FP'=FN=1, FN'=FP=2 -> 4/(4+1+2) = 4/7.
    assert metrics.f1(PRED, GOLD, positive=0) == pytest.approx(4 / 7)
    # Nothing predicted or true positive: defined as 0, not nan.
    assert metrics.f1([0, 0], [0, 0]) == 0.0


def test_matthews_2x2():
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 − 2) / sqrt(5·4·4·3) = 4/sqrt(240).
    assert metrics.matthews_corrcoef(PRED, GOLD) == pytest.approx(4 / math.sqrt(240))
    assert metrics.matthews_corrcoef(GOLD, GOLD) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef(1 - GOLD, GOLD) == pytest.approx(-1.0)
    # Constant prediction: a marginal is degenerate -> 0.
    assert metrics.matthews_corrcoef(np.ones(8, int), GOLD) == 0.0


def test_matthews_multiclass():
    # y=[0,1,2,0], p=[0,2,2,0]: confusion rows (true) 0:[2,0,0] 1:[0,0,1] 2:[0,0,1].
    # t=[2,1,1], p=[2,0,2], c=3, s=4: (3·4 − (4+0+2)) / sqrt((16 − 8)(16 − 6)) = 6/sqrt(80).
    assert metrics.matthews_corrcoef([0, 2, 2, 0], [0, 1, 2, 0]) == pytest.approx(6 / math.sqrt(80))


def test_pearson():
    # x=[1,2,3], y=[2,4,5]: dx=[-1,0,1], dy=[-5/3,1/3,4/3]; Σdxdy=3, Σdx²=2, Σdy²=14/3
    # -> r = 3/sqrt(28/3) = sqrt(27/28).
    assert metrics.pearson([1, 2, 3], [2, 4, 5]) == pytest.approx(math.sqrt(27 / 28))
    assert math.isnan(metrics.pearson([1, 1, 1], [2, 4, 5]))
    # Regression heads output [N, 1]; accepted as [N].
    assert metrics.pearson(np.array([[1.0], [2.0], [3.0]]), [2, 4, 5]) == pytest.approx(
        math.sqrt(27 / 28))


def test_ranks_average_ties():
    np.testing.assert_array_equal(metrics.rank_average([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(metrics.rank_average([3, 1, 3, 3]), [3, 1, 3, 3])


def test_spearman_with_ties():
    # x=[1,2,2,3] -> ranks [1,2.5,2.5,4]; y=[1,3,2,4] -> ranks [1,3,2,4]; both means 2.5.
    # d_x=[-1.5,0,0,1.5], d_y=[-1.5,.5,-.5,1.5]: Σ=4.5, Σd_x²=4.5, Σd_y²=5 -> 4.5/sqrt(22.5).
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))


def test_against_scipy_on_random_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=200).astype(float)  # many ties
    y = x + rng.normal(size=200)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def test_input_errors():
    with pytest.raises(ValueError, match="differ in length: 2 vs 3"):
        metrics.accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy([], [])


def test_glue_table():
    assert glue.glue_task("MNLI").dev_files == ("dev_matched.tsv", "dev_mismatched.tsv")
    assert glue.glue_task("sts-b").is_regression and glue.glue_task("stsb").num_labels == 1
    assert glue.glue_task("mnli").num_labels == 3
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        glue.glue_task("squad")


def test_glue_metrics_per_task():
    assert metrics.glue_metrics("cola", PRED, GOLD) == {"mcc": pytest.approx(4 / math.sqrt(240))}
    assert metrics.glue_metrics("mrpc", PRED, GOLD) == {"f1": pytest.approx(2 / 3),
                                                        "accuracy": pytest.approx(5 / 8)}
    # Logits are reduced by argmax: rows pick 1, 0, 2 -> 2 of 3 right.
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert metrics.glue_metrics("mnli", logits, [1, 0, 1]) == {"accuracy": pytest.approx(2 / 3)}
    out = metrics.glue_metrics("stsb", np.array([[1.0], [2.0], [2.0], [3.0]]), [1, 3, 2, 4])
    assert set(out) == {"pearson", "spearman"}
    assert out["spearman"] == pytest.approx(3 / math.sqrt(10))
