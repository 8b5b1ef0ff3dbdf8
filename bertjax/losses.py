"""MLM and NSP losses and accuracies as (sum, count) pairs.

Sums are divided only after aggregation over the whole global batch (and over micro-batches or
evaluation batches): the number of masked tokens varies from batch to batch, so averaging
per-batch means would weight tokens unequally.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mlm(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """Masked-LM cross-entropy at the gathered masked positions.

    Args:
      logits: [B, P, V] float32 logits at the masked positions.
      labels: [B, P] original token ids.
      weights: [B, P] 1.0 for a real prediction, 0.0 for padding of the position list.

    Returns:
      {"loss_sum", "correct", "count"} scalars (float32).
    """
    weights = weights.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)  # [B, P, V]
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]  # [B, P]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(nll * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def nsp(logits: jax.Array, labels: jax.Array,
        weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """Next-sentence cross-entropy; labels 0 = B follows A, 1 = B is random (BERT's convention).

    Args:
      logits: [B, 2] float32, or [B, M, 2] for packed rows (one prediction per pair).
      labels: [B] (or [B, M]) int.
      weights: [B] (or [B, M]) optional weights (0 for padding examples or unused pair slots).
    """
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.reshape(
        -1).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(nll * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}
