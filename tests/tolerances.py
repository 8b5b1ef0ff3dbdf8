"""How far apart two correct float32 computations of the same function may be.

Used by every parity test (bertjax vs transformers, an import vs its source, packed rows vs rows
of their own, embeddings packed or not) instead of numbers read off one machine's run:
those hold on the CPU they were measured on and fail on another (issue seen: 1.29e-4 on an AMD
EPYC where an Intel Xeon gave 1e-5).

Where the bound comes from. Two correct float32 programs differ only in rounding: the order of
the additions inside each dot product (blocking, vector width, FMA or not: what differs between
XLA and torch, and between one CPU's instruction set and another's) and the polynomials behind
exp/tanh/erf (a few ulps, negligible beside the sums). With unit round-off u = 2**-24, the
rounding errors of the k partial sums of a dot product of random-sign terms add like a random
walk, so the error of the result has a standard deviation of about 0.4·sqrt(k)·u times the
result's own standard deviation σ (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd
ed., §4.2; Higham & Mary, SIAM J. Sci. Comput. 2019, for the probabilistic bound). A BERT layer
chains six such sums (Q/K/V, scores, context, output, two MLP matmuls), each next to a LayerNorm
or softmax that rescales without amplifying relative error, so the errors of the independent
sums along the chain add in quadrature. Hence

    bound = SAFETY · u · sqrt(k) · sqrt(sums) · max|reference|

with k the longest sum (the largest of hidden, intermediate and sequence length) and ``sums``
the number of chained sums up to the compared output. SAFETY = 1: the bound scales with
max|reference|, about 4σ of the outputs compared, so the per-element standard deviation is
0.1·sqrt(k)·sqrt(sums)·u·max|reference|; the largest of up to 10^6 compared elements lies about
5 standard deviations out, and two implementations each round (√2): 0.1 × 5 × 1.4 = 0.7, rounded
up to 1. Blocked matrix kernels sum in chunks and do better than the random walk: observed here
(Intel Xeon, AVX-512 and AMX, and with XLA limited to AVX2) 0.01-0.11 of the bound. A real
defect moves outputs by far more: another LayerNorm epsilon (1e-5 for 1e-12) by 100 times the
bound, the tanh GELU for the exact one by 12 times it at the MLM logits (tiny model,
test_parity's batch).
"""

from __future__ import annotations

import math

import numpy as np

U32 = 2.0 ** -24  # float32 unit round-off
SAFETY = 1.0
SUMS_PER_LAYER = 6  # Q/K/V, scores, context, attention output, MLP in, MLP out


def chained_sums(num_layers: int, heads: int = 0) -> int:
    """Sums on the longest chain: ``num_layers`` encoder layers plus ``heads`` head matmuls
    (pooler: 1; MLM logits: transform + decoder = 2; NSP: pooler + classifier = 2)."""
    return SUMS_PER_LAYER * num_layers + heads


def f32_bound(reference: np.ndarray, *, k: int, sums: int) -> float:
    """The largest difference two correct float32 computations of ``reference`` may show."""
    scale = float(np.max(np.abs(reference)))
    return SAFETY * U32 * math.sqrt(k) * math.sqrt(sums) * scale


def check_f32_close(name: str, ours: np.ndarray, reference: np.ndarray, *, k: int,
                    sums: int) -> float:
    """Asserts ``ours`` is within :func:`f32_bound` of ``reference``; returns the max diff."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (name, ours.shape, reference.shape)
    diff = float(np.max(np.abs(ours - reference))) if reference.size else 0.0
    bound = f32_bound(reference, k=k, sums=sums)
    print(f"{name}: max diff {diff:.2e}, float32 bound {bound:.2e} "
          f"({diff / bound if bound else 0:.3f} of it)")
    assert diff <= bound, f"{name}: max diff {diff:.3e} > float32 bound {bound:.3e}"
    return diff
