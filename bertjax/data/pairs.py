"""TensorFlow graph code that turns tokenized documents into pre-training sequences.

Two ways, both emitting ragged token sequences that already hold [CLS]/[SEP]:

* `nsp_instances`: google-research/bert's create_instances_from_document. Consecutive sentences
  are gathered until a target length; segment A is a random prefix of that chunk; B is the true
  continuation (label 0, IsNext) or, with probability 1/2, sentences from another document
  (label 1, the chunk's unused sentences are put back). The pair is truncated from random ends of
  the longer segment to fit. Two deliberate differences: the short target length (short_seq_prob)
  is drawn per instance, not per document, so long documents do not make all their instances short;
  and a one-sentence chunk that should get a true continuation takes the next sentence as B (or,
  at the end of the document, the previous one as A) instead of being forced random, which keeps
  the IsNext rate at 50% (only one-sentence documents are always random).
* `packed_sequences`: RoBERTa's FULL-SENTENCES, for MLM-only training: whole sentences packed
  greedily up to the length, crossing document boundaries with an extra [SEP] between documents.

Every segment is a contiguous token range, so the loop only moves integer boundaries (one
iteration per output sequence) and token gathering happens once, vectorised, at the end. All
randomness is stateless, seeded from the element's position in the stream, so the output is a pure
function of (seed, position) and an iterator checkpoint restores it exactly.
"""

from __future__ import annotations

import tensorflow as tf

from bertjax.data.tokenizer import CLS_ID, SEP_ID


def split_long_sentences(lengths: tf.RaggedTensor, max_len: int) -> tf.RaggedTensor:
    """Sentence lengths with every sentence longer than `max_len` cut into pieces of at most it.

    Tokens are unchanged (still contiguous); long sentences are split instead of truncated later,
    so no text is thrown away.

    Args:
      lengths: ragged int32 [D, None], positive sentence lengths per document.
      max_len: the longest allowed piece.

    Returns:
      ragged int32 [D, None] with the same row sums.
    """
    flat = lengths.flat_values  # [S]
    pieces = (flat + max_len - 1) // max_len  # [S]
    j = tf.ragged.range(pieces).flat_values  # piece index within its sentence, [S']
    split = tf.minimum(max_len, tf.repeat(flat, pieces) - j * max_len)
    return tf.RaggedTensor.from_row_lengths(split, tf.reduce_sum(lengths.with_flat_values(pieces),
                                                                 axis=1))


def _prefix(lengths: tf.Tensor) -> tf.Tensor:
    """[0, l0, l0+l1, ...]: sentence boundaries as token offsets, int32 [S+1]."""
    return tf.concat([[0], tf.cumsum(lengths)], axis=0)


def _ranges_to_ragged(tokens: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.RaggedTensor:
    """tokens[lo[k]:hi[k]] for every k, as a ragged [K, None]."""
    return tf.gather(tokens, tf.ragged.range(lo, hi))


def _truncate(la: tf.Tensor, lb: tf.Tensor, max_tokens: int, seed: tf.Tensor):
    """Tokens to cut from the front/back of A and B, as the original's truncate_seq_pair would.

    The original removes one token at a time from the longer segment (B on ties), from the front
    or back at random. The counts per segment follow in closed form; the front/back split of each
    count is Binomial(count, 1/2).

    Returns:
      (a_front, a_back, b_front, b_back), int32 [K] each.
    """
    excess = tf.maximum(0, la + lb - max_tokens)
    first = tf.minimum(excess, tf.abs(la - lb))  # from the longer one until they are equal
    rest = excess - first  # then alternately, B first
    ra = tf.where(la > lb, first, 0) + rest // 2
    rb = tf.where(la > lb, 0, first) + rest - rest // 2
    seeds = tf.random.experimental.stateless_split(seed, 2)
    fa = tf.random.stateless_binomial(tf.shape(ra), seeds[0], tf.cast(ra, tf.float32), 0.5,
                                      output_dtype=tf.int32)
    fb = tf.random.stateless_binomial(tf.shape(rb), seeds[1], tf.cast(rb, tf.float32), 0.5,
                                      output_dtype=tf.int32)
    return fa, ra - fa, fb, rb - fb


def nsp_instances(tokens: tf.RaggedTensor, lengths: tf.RaggedTensor, seed: tf.Tensor,
                  seq_len: int, short_seq_prob: float = 0.1, cls_id: int = CLS_ID,
                  sep_id: int = SEP_ID) -> dict[str, tf.Tensor]:
    """NSP pairs from a group of documents; random-next segments come from another document of it.

    All documents advance together, one instance per loop iteration, so the loop runs as many
    times as the longest document has instances and its ops are vectorised over the group.

    Args:
      tokens: ragged int32 [D, None], the documents' tokens.
      lengths: ragged int32 [D, None], their sentence lengths (> 0; every document non-empty).
      seed: int64 [2], stateless seed of this group.
      seq_len: output length including [CLS] and two [SEP].
      short_seq_prob: probability of a random shorter target length.
      cls_id, sep_id: the ids of [CLS] and [SEP] in the data's vocabulary.

    Returns:
      tokens: ragged int32 [K, None] "[CLS] A [SEP] B [SEP]"; seg_a: int32 [K] length of
      "[CLS] A [SEP]"; label: int32 [K], 0 = IsNext, 1 = random.
    """
    max_tokens = seq_len - 3
    lengths = split_long_sentences(lengths, max_tokens)
    pre = _prefix(lengths.flat_values)  # [S+1] token offsets of sentence boundaries in the group
    s0 = tf.cast(lengths.row_starts(), tf.int32)  # [D] first sentence of each document
    s1 = tf.cast(lengths.row_limits(), tf.int32)  # [D] one past its last sentence
    n_doc = s1 - s0
    d = tf.size(s0)
    # The partner of document j is j+r (mod D) for one r in [1, D): never itself when D > 1.
    shift_seed = tf.random.experimental.stateless_fold_in(seed, (1 << 30) + 1)
    r_shift = tf.random.stateless_uniform([], shift_seed, minval=1, maxval=tf.maximum(d, 2),
                                          dtype=tf.int32)
    partner = (tf.range(d) + r_shift) % tf.maximum(d, 1)
    p0, pn = tf.gather(s0, partner), tf.gather(n_doc, partner)
    at = lambda idx: tf.gather(pre, idx)  # noqa: E731 (token offset of a sentence boundary)
    m = max_tokens

    def body(c_state, k, arrays):
        active = c_state < s1  # [D]
        c = tf.where(active, c_state, s0)  # finished documents compute on valid indices, unused
        u = tf.random.stateless_uniform([d, 5], tf.random.experimental.stateless_fold_in(seed, k))
        short = 2 + tf.cast(u[:, 1] * (m - 1), tf.int32)
        target = tf.where(u[:, 0] < short_seq_prob, tf.minimum(short, m), m)
        # The chunk [c, i] ends at the first sentence that reaches the target (or the document end).
        q = tf.searchsorted(pre, at(c) + target, side="left")
        i = tf.minimum(tf.maximum(q - 1, c), s1 - 1)
        n_seg = i - c + 1
        a_end = tf.minimum(c + 1 + tf.cast(u[:, 2] * tf.cast(n_seg - 1, tf.float32), tf.int32),
                           tf.maximum(i, c + 1))  # A = sentences [c, a_end), a_end in [c+1, i]
        last = i + 1 >= s1
        is_random = (u[:, 3] < 0.5) | (n_doc == 1)  # a one-sentence document has no continuation
        # A one-sentence chunk that gets a true continuation takes the next sentence as B, or at
        # the end of the document becomes B itself after the previous sentence as A.
        extend = (n_seg == 1) & ~last
        back = (n_seg == 1) & last & ~is_random
        a_start = tf.where(back, c - 1, c)
        a_end = tf.where(back, c, a_end)
        b_start = tf.where(extend, tf.minimum(i + 1, s1), tf.where(back, c, a_end))
        b_end = tf.where(extend, tf.minimum(i + 2, s1), i + 1)
        # Random B: the partner's sentences from a random start until B's target is reached.
        r = p0 + tf.minimum(tf.cast(u[:, 4] * tf.cast(pn, tf.float32), tf.int32), pn - 1)
        target_b = target - (at(a_end) - at(a_start))
        r_end = tf.searchsorted(pre, at(r) + target_b, side="left")
        r_end = tf.minimum(tf.maximum(r_end, r + 1), p0 + pn)
        row = tf.stack([at(a_start), at(a_end), tf.where(is_random, at(r), at(b_start)),
                        tf.where(is_random, at(r_end), at(b_end)), tf.cast(is_random, tf.int32),
                        tf.cast(active, tf.int32)], axis=1)  # [D, 6]
        next_c = tf.where(is_random, a_end, b_end)  # random B puts the unused sentences back
        return tf.where(active, next_c, c_state), k + 1, arrays.write(k, row)

    _, _, arrays = tf.while_loop(
        lambda c, k, arrays: tf.reduce_any(c < s1), body,
        (s0, tf.constant(0), tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                                            element_shape=[None, 6])))
    rows = tf.reshape(arrays.stack(), [-1, 6])
    rows = tf.boolean_mask(rows, rows[:, 5] > 0)  # [K, 6]: a_lo, a_hi, b_lo, b_hi, label, active
    a_lo, a_hi, b_lo, b_hi, label = tf.unstack(rows[:, :5], axis=1)
    af, ab, bf, bb = _truncate(a_hi - a_lo, b_hi - b_lo, max_tokens,
                               tf.random.experimental.stateless_fold_in(seed, 1 << 30))
    flat = tokens.flat_values
    a = _ranges_to_ragged(flat, a_lo + af, a_hi - ab)
    b = _ranges_to_ragged(flat, b_lo + bf, b_hi - bb)
    k = tf.shape(rows)[0]
    cls = tf.RaggedTensor.from_tensor(tf.fill([k, 1], cls_id))
    sep = tf.RaggedTensor.from_tensor(tf.fill([k, 1], sep_id))
    return {"tokens": tf.concat([cls, a, sep, b, sep], axis=1),
            "seg_a": tf.cast(a.row_lengths(), tf.int32) + 2, "label": label}


def packed_sequences(tokens: tf.RaggedTensor, lengths: tf.RaggedTensor,
                     seq_len: int, cls_id: int = CLS_ID, sep_id: int = SEP_ID
                     ) -> dict[str, tf.Tensor]:
    """Whole sentences of a batch of documents packed greedily into "[CLS] ... [SEP]" sequences.

    Args:
      tokens: ragged int32 [D, None], the documents' tokens in stream order.
      lengths: ragged int32 [D, None], their sentence lengths.
      seq_len: output length including [CLS] and [SEP].
      cls_id, sep_id: the ids of [CLS] and [SEP] in the data's vocabulary.

    Returns:
      tokens: ragged int32 [K, None]; seg_a: int32 [K] (the whole length: one segment);
      label: int32 [K] zeros.
    """
    max_tokens = seq_len - 2
    # An extra [SEP] ends every document but the last, counted with its last sentence.
    d = tokens.nrows(out_type=tf.int32)
    not_last = tf.range(d) < d - 1
    sep = tf.ragged.boolean_mask(tf.fill([d, 1], sep_id), tf.expand_dims(not_last, 1))
    sep = sep.with_row_splits_dtype(tokens.row_splits.dtype)
    flat = tf.concat([tokens, sep], axis=1).flat_values
    doc_len = tf.cast(lengths.row_lengths(), tf.int32)
    last_idx = tf.cumsum(doc_len) - 1  # index of each document's last sentence
    bump = tf.scatter_nd(tf.expand_dims(last_idx, 1), tf.cast(not_last, tf.int32),
                         tf.shape(lengths.flat_values))
    sent = split_long_sentences(lengths.with_flat_values(lengths.flat_values + bump),
                                max_tokens).flat_values
    pre, n = _prefix(sent), tf.size(sent)

    def body(c, k, arrays):
        # The last sentence boundary that still fits.
        q = tf.searchsorted(pre, [pre[c] + max_tokens], side="right")[0] - 1
        q = tf.maximum(q, c + 1)
        return q, k + 1, arrays.write(k, tf.stack([pre[c], pre[q]]))

    _, _, arrays = tf.while_loop(
        lambda c, k, arrays: c < n, body,
        (tf.constant(0), tf.constant(0), tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                                                        element_shape=[2])))
    rows = tf.reshape(arrays.stack(), [-1, 2])
    body_tokens = _ranges_to_ragged(flat, rows[:, 0], rows[:, 1])
    k = tf.shape(rows)[0]
    cls = tf.RaggedTensor.from_tensor(tf.fill([k, 1], cls_id))
    end = tf.RaggedTensor.from_tensor(tf.fill([k, 1], sep_id))
    seq = tf.concat([cls, body_tokens, end], axis=1)
    return {"tokens": seq, "seg_a": tf.cast(seq.row_lengths(), tf.int32),
            "label": tf.zeros([k], tf.int32)}
