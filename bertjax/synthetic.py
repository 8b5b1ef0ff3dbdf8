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
          vocab_size: int, alphabet: int = 200, pairs_per_row: int = 1) -> dict[str, np.ndarray]:
    """One batch with the google-research/bert feature names (``packed_batch`` rows when
    pairs_per_row > 1).

    Args:
      rng: numpy generator (the caller owns its state, so runs are reproducible).
      batch_size, seq_len, max_predictions: shapes.
      vocab_size: ids stay below it.
      alphabet: how many distinct regular tokens the progressions use.

    Returns:
      input_ids, input_mask, segment_ids [B, L] int32; masked_lm_positions, masked_lm_ids
      [B, P] int32; masked_lm_weights [B, P] float32; next_sentence_labels [B] int32.
    """
    if pairs_per_row > 1:
        return packed_batch(rng, batch_size, seq_len, max_predictions, vocab_size, pairs_per_row,
                            alphabet)
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


def packed_batch(rng: np.random.Generator, batch_size: int, seq_len: int, max_predictions: int,
                 vocab_size: int, pairs_per_row: int, alphabet: int = 200) -> dict[str, np.ndarray]:
    """A batch of packed rows (the layout of bertjax/data/packing.py): M short pairs per row.

    Each row holds M = pairs_per_row progressions of at most seq_len // M tokens, each with its
    own [CLS], positions restarting and pack ids 1..M; predictions are split evenly among them.

    Returns:
      the keys of ``batch`` plus position_ids, pack_ids [B, L] int32 and, per pair,
      next_sentence_positions, next_sentence_labels [B, M] int32, next_sentence_weights [B, M]
      float32.
    """
    m = pairs_per_row
    short = batch(rng, batch_size * m, seq_len // m, max(1, max_predictions // m), vocab_size,
                  alphabet)
    lengths = short["input_mask"].sum(1).reshape(batch_size, m)  # [B, M]
    starts = np.cumsum(lengths, axis=1) - lengths  # [B, M] offset of each pair in its row
    out = {k: np.zeros((batch_size, seq_len), np.int32) for k in
           ("input_ids", "input_mask", "segment_ids", "position_ids", "pack_ids")}
    for i in range(batch_size * m):
        r, slot = divmod(i, m)
        n, s = lengths[r, slot], starts[r, slot]
        for key in ("input_ids", "input_mask", "segment_ids"):
            out[key][r, s:s + n] = short[key][i, :n]
        out["position_ids"][r, s:s + n] = np.arange(n)
        out["pack_ids"][r, s:s + n] = slot + 1
    p = short["masked_lm_positions"].shape[1]
    pad = [(0, 0), (0, max_predictions - m * p)]
    shift = np.repeat(starts.reshape(-1, 1), p, axis=1) * (short["masked_lm_weights"] > 0)
    for key, values in (("masked_lm_positions", (short["masked_lm_positions"] + shift).astype(np.int32)),
                        ("masked_lm_ids", short["masked_lm_ids"]),
                        ("masked_lm_weights", short["masked_lm_weights"])):
        out[key] = np.pad(values.reshape(batch_size, m * p), pad).astype(values.dtype)
    out["next_sentence_positions"] = starts.astype(np.int32)
    out["next_sentence_labels"] = short["next_sentence_labels"].reshape(batch_size, m)
    out["next_sentence_weights"] = np.ones((batch_size, m), np.float32)
    return out
