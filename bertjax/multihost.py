"""Processes and hosts: the only module that knows about process_index / process_count.

Turns each host's local numpy batch into one global jax.Array sharded on the mesh, and answers
"am I the chief" for logging and writing.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_chief() -> bool:
    """True on the one process that writes logs, summaries and plots."""
    return jax.process_index() == 0


def local_batch_size(global_batch_size: int) -> int:
    """This host's share of a global batch (hosts contribute equal parts)."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"config.global_batch_size={global_batch_size} is not divisible by "
                         f"the {n} processes; use a multiple of {n}")
    return global_batch_size // n


def global_batch(local: dict[str, np.ndarray], shardings: dict[str, Any]) -> dict[str, jax.Array]:
    """Assembles host-local numpy arrays into global arrays (dimension 0 is the batch).

    Args:
      local: this host's rows, the same keys and shapes on every host.
      shardings: NamedSharding per key (see train.batch_shardings).

    Returns:
      Global jax.Arrays whose batch dimension is the concatenation of the hosts' rows in
      process order.
    """
    n = jax.process_count()
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * n,) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(shardings[key], value, global_shape)
    return out


def barrier(name: str) -> None:
    """Waits until every process reaches this point (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
