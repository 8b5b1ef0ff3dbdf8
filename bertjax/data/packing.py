"""Packing of NSP pairs into shared rows, so that padding is not computed, in TensorFlow graph code.

A fixed-length row holds one NSP pair in the unpacked pipeline; pairs shorter than the row (the
short targets drawn with short_seq_prob, the last chunk of a document, short documents) leave the
rest as padding, which the model computes like real tokens. Packing puts up to `max_per_row` pairs
into one row, first-fit decreasing within a group of documents' pairs:

    row:        [CLS] a1 [SEP] b1 [SEP] [CLS] a2 [SEP] b2 [SEP] [PAD] ...
    pack_ids:     1   1    1   1    1     2   2    2   2    2     0
    position_ids: 0   1    2   3    4     0   1    2   3    4     0
    type_ids:     0   0    0   1    1     0   0    0   1    1     0

Each pair keeps its own [CLS] (its NSP position), its positions restart at 0 and its tokens attend
only to tokens with the same pack id (the model builds the block-diagonal mask from pack_ids), so a
packed row computes exactly what the pairs would compute in rows of their own. The packing is a
pure function of the group's pairs: an iterator checkpoint restores it exactly.
"""

from __future__ import annotations

import tensorflow as tf


def _first_fit_decreasing(lens: tf.Tensor, seq_len: int, max_per_row: int):
    """Bins for items of the given lengths: longest first, each into the first row it fits.

    Args:
      lens: int32 [K] item lengths, each <= seq_len.

    Returns:
      (row int32 [K], slot int32 [K], number of rows []): item i is the slot-th item of its row.
    """
    k = tf.size(lens)
    order = tf.argsort(lens, direction="DESCENDING", stable=True)  # [K]
    sorted_lens = tf.gather(lens, order)
    index = tf.range(k)

    def body(j, room, count, n_rows, row_of, slot_of):
        n = sorted_lens[j]
        fits = (room >= n) & (count < max_per_row) & (index < n_rows)  # [K] open rows it fits
        found = tf.reduce_any(fits)
        r = tf.where(found, tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32), n_rows)
        at = [[r]]
        row_of = tf.tensor_scatter_nd_update(row_of, [[j]], [r])
        slot_of = tf.tensor_scatter_nd_update(slot_of, [[j]], [count[r]])
        room = tf.tensor_scatter_nd_sub(room, at, [n])
        count = tf.tensor_scatter_nd_add(count, at, [1])
        return j + 1, room, count, n_rows + 1 - tf.cast(found, tf.int32), row_of, slot_of

    # Items longer than half a row never share one with each other and come first, so each
    # opens its own row: set those directly and loop only over the short rest.
    n_big = tf.reduce_sum(tf.cast(sorted_lens > seq_len // 2, tf.int32))
    big = index < n_big
    zeros = tf.zeros([k], tf.int32)
    _, _, _, n_rows, row_sorted, slot_sorted = tf.while_loop(
        lambda j, *_: j < k, body,
        (n_big, tf.where(big, seq_len - sorted_lens, seq_len), tf.cast(big, tf.int32), n_big,
         tf.where(big, index, 0), zeros))
    # Back from length order to item order.
    inverse = tf.math.invert_permutation(order)
    return tf.gather(row_sorted, inverse), tf.gather(slot_sorted, inverse), n_rows


def pack_pairs(tokens: tf.RaggedTensor, seg_a: tf.Tensor, label: tf.Tensor, seq_len: int,
               max_per_row: int, pad_id: int = 0) -> dict[str, tf.Tensor]:
    """Packs NSP pairs (from pairs.nsp_instances) into rows of `seq_len` tokens.

    Args:
      tokens: ragged int32 [K, None] "[CLS] A [SEP] B [SEP]" pairs, each at most seq_len long.
      seg_a: int32 [K] length of "[CLS] A [SEP]" of each pair.
      label: int32 [K] NSP labels.
      seq_len: L, the row length.
      max_per_row: M, the most pairs in one row.
      pad_id: the [PAD] id the rows' tokens are padded with.

    Returns:
      tokens, type_ids, position_ids, pack_ids: int32 [R, L] (pack id 1..M per pair, 0 on
      padding); nsp_positions, nsp_labels: int32 [R, M] (the [CLS] of each pair, 0 for unused
      slots); nsp_weights: float32 [R, M] (1 for used slots). Every pair appears exactly once.
    """
    lens = tf.cast(tokens.row_lengths(), tf.int32)  # [K]
    row, slot, n_rows = _first_fit_decreasing(lens, seq_len, max_per_row)
    # Items in row-major order: by row, then by slot.
    items = tf.argsort(row * max_per_row + slot, stable=True)  # [K]
    row, slot = tf.gather(row, items), tf.gather(slot, items)
    item_lens = tf.gather(lens, items)
    flat = tf.gather(tokens, items).flat_values  # the rows' tokens, concatenated
    token_row = tf.repeat(row, item_lens)
    position = tf.ragged.range(item_lens).flat_values  # restarts at each pair's [CLS]
    pack_id = tf.repeat(slot + 1, item_lens)
    type_id = tf.cast(position >= tf.repeat(tf.gather(seg_a, items), item_lens), tf.int32)

    def rows(values: tf.Tensor, pad: int = 0) -> tf.Tensor:
        ragged = tf.RaggedTensor.from_value_rowids(values, token_row, nrows=n_rows)
        return ragged.to_tensor(default_value=pad, shape=[None, seq_len])  # [R, L]

    start = tf.cumsum(item_lens, exclusive=True)  # [K] offset of each item in the concatenation
    offset = start - tf.gather(tf.math.segment_min(start, row), row)  # [K] offset in its row
    where = tf.stack([row, slot], axis=1)  # [K, 2]
    shape = tf.stack([n_rows, max_per_row])
    return {
        "tokens": rows(flat, pad_id), "type_ids": rows(type_id), "position_ids": rows(position),
        "pack_ids": rows(pack_id),
        "nsp_positions": tf.scatter_nd(where, offset, shape),
        "nsp_labels": tf.scatter_nd(where, tf.gather(label, items), shape),
        "nsp_weights": tf.scatter_nd(where, tf.ones_like(offset, tf.float32), shape),
    }
