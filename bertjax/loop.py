"""The pre-training loop: build, compile ahead of time, step without blocking the device, log.

Phases of ``run``: validate -> mesh -> sharded state -> data -> AOT compile (memory analysis
logged before step 0) -> steps, reading step t-1's metrics only after step t is dispatched.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import jax
import numpy as np

from bertjax import config as config_lib
from bertjax import multihost
from bertjax import sharding
from bertjax import synthetic
from bertjax import train


def synthetic_batches(config: Any) -> Iterator[dict[str, np.ndarray]]:
    """This host's share of synthetic batches (numpy; seeded by config.seed and the host)."""
    rng = np.random.default_rng([config.seed, multihost.process_index()])
    local = multihost.local_batch_size(config.global_batch_size)
    while True:
        yield synthetic.batch(rng, local, config.max_seq_length, config.max_predictions,
                              config.model.vocab_size)


def log_memory(compiled: Any) -> None:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        return
    if mem is None:
        return
    gib = 1 / 2**30
    logging.info("compiled step memory per device: arguments %.3f GiB, outputs %.3f GiB, "
                 "temporaries %.3f GiB", mem.argument_size_in_bytes * gib,
                 mem.output_size_in_bytes * gib, mem.temp_size_in_bytes * gib)


def run(config: Any, workdir: str | None = None) -> dict[str, float]:
    """Pre-trains per ``config``; returns the last step's metrics."""
    shape = config_lib.validate(config, jax.device_count())
    mesh = sharding.make_mesh(*shape)
    state, fns = train.build(config, mesh)
    batches = synthetic_batches(config)
    first = next(batches)
    global_like = {k: np.zeros((config.global_batch_size,) + v.shape[1:], v.dtype)
                   for k, v in first.items()}
    shardings = train.batch_shardings(fns, global_like)
    step_fn = train.jit_train_step(fns, global_like)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, multihost.global_batch(first, shardings)).compile()
    logging.info("train step compiled in %.1f s", time.perf_counter() - t0)
    log_memory(compiled)

    pending, last = None, {}
    batch = first
    tokens = config.global_batch_size * config.max_seq_length
    t_start = time.perf_counter()
    for step in range(config.total_steps):
        state, metrics = compiled(state, multihost.global_batch(batch, shardings))
        if pending is not None:  # step t is dispatched; now it is safe to read t-1
            last = {k: float(v) for k, v in jax.device_get(pending[1]).items()}
            if multihost.is_chief() and (pending[0] % config.log_every == 0
                                         or pending[0] == config.total_steps - 2):
                rate = tokens * (pending[0] + 1) / (time.perf_counter() - t_start)
                print(f"step {pending[0] + 1:6d}/{config.total_steps}  loss {last['loss']:.4f}"
                      f"  mlm_acc {last['mlm_accuracy']:.3f}  nsp_acc {last['nsp_accuracy']:.3f}"
                      f"  lr {last['learning_rate']:.2e}  {rate:,.0f} tok/s", flush=True)
        pending = (step, metrics)
        batch = next(batches)
    last = {k: float(v) for k, v in jax.device_get(pending[1]).items()}
    if multihost.is_chief():
        print(f"step {config.total_steps:6d}/{config.total_steps}  loss {last['loss']:.4f}"
              f"  mlm_acc {last['mlm_accuracy']:.3f}", flush=True)
    return last
