"""Dynamic MLM masking of a whole batch at once, in TensorFlow, with no per-example Python.

Token masking and whole-word masking are one algorithm: tokens are grouped into words (every
maskable token is its own word unless whole-word masking is on), words get random scores, and the
words are taken in score order while the running total of their tokens stays within the budget
round(rate * maskable tokens), capped at max_predictions. That is google-research/bert's
create_masked_lm_predictions, except that a word that does not fit ends the selection instead of
being skipped (the cumulative sum makes it a vectorised cut); with token masking the two agree.

Maskable tokens are regular pieces: [PAD], [UNK], [CLS], [SEP] and [MASK] never are (nor a
WordPiece vocabulary's reserved [unusedN] slots). Which ids those are comes from the data's
tokenizer (``regular``, ``mask_id``): sentencepiece puts the specials at 0..4, BERT's WordPiece
vocabularies elsewhere ([MASK]=103). Chosen tokens become [MASK] 80% of the time, a random regular
piece 10%, unchanged 10%.
"""

from __future__ import annotations

import tensorflow as tf

from bertjax.data.tokenizer import MASK_ID, NUM_SPECIAL


def mask_batch(input_ids: tf.Tensor, seed: tf.Tensor, *, vocab_size: int, max_predictions: int,
               mask_rate: float = 0.15,
               word_starts: tf.Tensor | None = None, mask_id: int = MASK_ID,
               regular: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Chooses and corrupts the masked positions of a batch.

    Args:
      input_ids: int32 [B, L], unmasked sequences (padding is not regular).
      seed: int64 [2], stateless seed of this batch.
      vocab_size: without ``regular``, random replacements are drawn from [5, vocab_size).
      max_predictions: P, prediction slots per sequence.
      mask_rate: fraction of maskable tokens to predict.
      word_starts: bool [V] (whole-word masking): True where a piece id begins a word; None
        masks single tokens.
      mask_id: the [MASK] token's id.
      regular: bool [V]: True for the pieces that may be masked and drawn as random replacements;
        None: the sentencepiece layout, ids >= 5 up to vocab_size.

    Returns:
      input_ids int32 [B, L] (corrupted), masked_lm_positions int32 [B, P] (ascending, unused
      slots 0), masked_lm_ids int32 [B, P] (original ids, unused 0), masked_lm_weights float32
      [B, P] (1 for used slots).
    """
    shape = tf.shape(input_ids)
    b, length = shape[0], shape[1]
    if regular is None:
        maskable = input_ids >= NUM_SPECIAL  # [B, L]
    else:
        maskable = tf.gather(regular, input_ids)  # [B, L]
    n_maskable = tf.reduce_sum(tf.cast(maskable, tf.int32), axis=1)  # [B]
    budget = tf.cast(tf.round(tf.cast(n_maskable, tf.float32) * mask_rate), tf.int32)
    budget = tf.minimum(tf.minimum(tf.maximum(budget, 1), max_predictions), n_maskable)  # [B]

    if word_starts is None:
        starts = maskable
    else:
        # A piece starts a word if the vocabulary says so, or if what precedes it is not maskable.
        prev_maskable = tf.pad(maskable[:, :-1], [[0, 0], [1, 0]])
        starts = maskable & (tf.gather(word_starts, input_ids) | ~prev_maskable)
    word = tf.maximum(tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1, 0)  # [B, L] word index
    rows = tf.repeat(tf.range(b)[:, None], length, axis=1)  # [B, L]
    word_size = tf.math.unsorted_segment_sum(
        tf.cast(maskable, tf.int32), rows * length + word, b * length)
    word_size = tf.reshape(word_size, [b, length])  # [B, W=L]; 0 for word slots that do not exist

    seeds = tf.random.experimental.stateless_split(seed, 3)
    score = tf.random.stateless_uniform([b, length], seeds[0])  # [B, W]
    score = tf.where(word_size > 0, score, 2.0)  # absent words sort last
    # At most P words fit the budget (each has >= 1 token), so the P lowest scores suffice: a
    # top-k of P instead of a full sort of L. Taking words by rising score while the token count
    # fits is the same as taking every word scoring at most the last one that fits.
    neg_top, top_words = tf.math.top_k(-score, k=max_predictions)  # [B, P] ascending scores
    cum = tf.cumsum(tf.gather(word_size, top_words, batch_dims=1), axis=1)
    fits = (cum <= budget[:, None]) & (neg_top > -2.0)
    n_fit = tf.reduce_sum(tf.cast(fits, tf.int32), axis=1)  # [B]
    threshold = tf.where(n_fit > 0, -tf.gather(neg_top, tf.maximum(n_fit - 1, 0), batch_dims=1),
                         -1.0)
    take_word = score <= threshold[:, None]  # [B, W]
    chosen = maskable & tf.gather(take_word, word, batch_dims=1)  # [B, L]

    # Chosen positions first, ascending: the P smallest keys.
    pos = tf.range(length)[None, :]
    key = tf.where(chosen, pos, length + pos)
    positions = -tf.math.top_k(-key, k=max_predictions, sorted=True).values  # [B, P]
    count = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1)
    used = tf.range(max_predictions)[None, :] < count[:, None]  # [B, P]
    positions = tf.where(used, positions, 0)
    labels = tf.where(used, tf.gather(input_ids, positions, batch_dims=1), 0)

    u = tf.random.stateless_uniform([b, length], seeds[1])
    if regular is None:
        random_ids = tf.random.stateless_uniform([b, length], seeds[2], minval=NUM_SPECIAL,
                                                 maxval=vocab_size, dtype=tf.int32)
    else:  # a uniform draw among the regular ids, wherever the vocabulary puts them
        regular_ids = tf.cast(tf.where(regular)[:, 0], tf.int32)  # [R]
        pick = tf.random.stateless_uniform([b, length], seeds[2], minval=0,
                                           maxval=tf.size(regular_ids), dtype=tf.int32)
        random_ids = tf.gather(regular_ids, pick)
    corrupted = tf.where(u < 0.8, mask_id, tf.where(u < 0.9, random_ids, input_ids))
    return {
        "input_ids": tf.where(chosen, corrupted, input_ids),
        "masked_lm_positions": positions,
        "masked_lm_ids": labels,
        "masked_lm_weights": tf.cast(used, tf.float32),
    }
