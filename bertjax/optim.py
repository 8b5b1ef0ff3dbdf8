"""The optimizer: global-norm clipping -> LAMB (or AdamW) with BERT's exclusions -> schedule.

BERT excludes LayerNorm parameters and all biases from weight decay. In LAMB the same leaves
are also excluded from the layer-wise trust ratio (their update is the plain Adam direction, a
trust ratio of 1). optax.lamb's mask only covers the decay, so the chain is spelled out here.

Gradient accumulation is not an optimizer wrapper: the train step scans over micro-batches and
hands the optimizer the gradient of the whole global batch (see bertjax/train.py).
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def _names(path: tuple[Any, ...]) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def is_excluded(path: tuple[Any, ...]) -> bool:
    """True for biases and LayerNorm parameters (by their tree path)."""
    keys = _names(path)
    return keys[-1] == "bias" or keys[-1] == "mlm_bias" or any("norm" in k.lower() for k in keys)


def decay_mask(params: Any) -> Any:
    """Tree of bools: True where weight decay and the trust ratio apply."""
    return jax.tree_util.tree_map_with_path(lambda p, _: not is_excluded(p), params)


def is_embedding_table(path: tuple[Any, ...]) -> bool:
    """True for the word, position and token-type embedding tables (by their tree path)."""
    keys = _names(path)
    return len(keys) >= 2 and keys[-1] == "embedding" and keys[-2].endswith("_embeddings")


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int,
                           end_lr: float = 0.0, power: float = 1.0) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then polynomial decay to ``end_lr``
    over the remaining steps (power 1.0 is BERT's linear decay)."""
    warmup = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    decay = optax.polynomial_schedule(lr, end_lr, power, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return decay
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(config: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer from ``config.optim`` and ``config.total_steps``.

    Args:
      config: run config with optim.{name, lr, end_lr, warmup_steps, power, b1, b2, eps,
        weight_decay, clip_norm, embedding_lr (optional)} and total_steps.

    Returns:
      (the optax transformation, the learning-rate schedule for logging).
    """
    o = config.optim
    schedule = learning_rate_schedule(o.lr, config.total_steps, o.warmup_steps, o.end_lr,
                                      o.power)
    parts = []
    if o.clip_norm and o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask))
    # embedding_lr > 0: the embedding tables take Adam's direction (and their decay) at their
    # own peak rate on the same schedule, outside LAMB's trust ratio, which would otherwise make
    # each of their steps a fixed fraction of their norm, so that they grow geometrically.
    table_lr = o.embedding_lr

    def mask(keep):  # a mask function over the parameter tree, from a predicate on paths
        return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: keep(p), params)

    if o.name == "lamb":
        ratio = mask(lambda p: not is_excluded(p) and not (table_lr and is_embedding_table(p)))
        # Stateless, so the masked wrapper keeps no state; excluded leaves pass through (ratio 1).
        parts.append(optax.masked(optax.scale_by_trust_ratio(), ratio))
    elif o.name != "adamw":
        raise ValueError(f"config.optim.name={o.name!r}; expected 'lamb' or 'adamw'")
    if table_lr:
        parts.append(optax.masked(optax.scale(table_lr / o.lr), mask(is_embedding_table)))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule
