"""Synthetic pre-training batches in numpy (no TensorFlow): for benchmarks, tests and smoke runs.

Each sequence is an arithmetic progression of token ids modulo a small alphabet, so a masked
token is predictable from its neighbours and the loss of a working model visibly falls. The NSP
label is a function of the progression's stride, which the pooled output can learn.
"""

from __future__ import annotations

import numpy as np

MASK_ID = 4
FIRST_REGULAR_ID = 5


def batch(rng: np.random.Generator, batch_size: int, seq_len: int, max_predictions: int,
          vocab_size: int, alphabet: int = 200) -> dict[str, np.ndarray]:
    """One batch with the google-research/bert feature names.

    Args:
      rng: numpy generator (the caller owns its state, so runs are reproducible).
      batch_size, seq_len, max_predictions: shapes.
      vocab_size: ids stay below it.
      alphabet: how many distinct regular tokens the progressions use.

    Returns:
      input_ids, input_mask, segment_ids [B, L] int32; masked_lm_positions, masked_lm_ids
      [B, P] int32; masked_lm_weights [B, P] float32; next_sentence_labels [B] int32.
    """
    alphabet = max(2, min(alphabet, vocab_size - FIRST_REGULAR_ID))
    lengths = rng.integers(max(seq_len // 2, 4), seq_len + 1, size=batch_size)
    start = rng.integers(0, alphabet, size=(batch_size, 1))
    stride = rng.integers(1, 9, size=(batch_size, 1))
    pos = np.arange(seq_len)[None, :]
    tokens = FIRST_REGULAR_ID + (start + stride * pos) % alphabet
    valid = pos < lengths[:, None]
    input_ids = np.where(valid, tokens, 0).astype(np.int32)
    input_ids[:, 0] = 2  # [CLS]
    segment_ids = ((pos >= lengths[:, None] // 2) & valid).astype(np.int32)

    n_pred = np.minimum(np.maximum(1, (lengths * 15) // 100), max_predictions)
    scores = rng.random((batch_size, seq_len))
    scores[:, 0] = 2.0  # never the first token
    scores[~valid] = 3.0  # never padding
    order = np.argsort(scores, axis=1)[:, :max_predictions]  # distinct, valid ones first
    weights = np.arange(max_predictions)[None, :] < n_pred[:, None]  # [B, P]
    chosen = np.sort(np.where(weights, order, seq_len), axis=1)  # kept ones, ascending
    chosen = np.where(weights, chosen, 0)
    labels = np.take_along_axis(input_ids, chosen, axis=1) * weights
    rows = np.repeat(np.arange(batch_size), max_predictions).reshape(batch_size, -1)
    input_ids[rows[weights], chosen[weights]] = MASK_ID
    return {
        "input_ids": input_ids,
        "input_mask": valid.astype(np.int32),
        "segment_ids": segment_ids,
        "masked_lm_positions": chosen.astype(np.int32),
        "masked_lm_ids": labels.astype(np.int32),
        "masked_lm_weights": weights.astype(np.float32),
        "next_sentence_labels": (stride[:, 0] % 2).astype(np.int32),
    }
