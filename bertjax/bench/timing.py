"""What the bench times and how: the System type, bertjax's train step and the matmul reference
as Systems, and the interleaved rounds that time them.

A System is one participant: a callable that runs one synchronised step, with the FLOPs,
tokens and sequences that step does. Timed steps of every participant are interleaved round by
round (``time_rounds``), so a drift of the machine hits all of them equally and ratios in one
invocation stay meaningful. transformers' peers are Systems too (compare.py).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bertjax import multihost
from bertjax import sharding
from bertjax import synthetic
from bertjax import train
from bertjax.bench import flops as flops_lib


@dataclasses.dataclass
class System:
    """One participant of the timed rounds: a train step of some implementation, or the matmul.

    Attributes:
      name: label in the tables and the JSON.
      step: runs one step and returns once its results are ready (synchronised).
      flops_per_step: model FLOPs of one step (``flops.model_flops``) or of the matmuls.
      tokens_per_step, sequences_per_step: 0 for the matmul.
      compile_s: AOT lower+compile time, or the first call's time where there is no AOT
        (torch.compile), or None.
      note: what differs from bertjax's counting or setup, printed under the table.
      times: seconds of each timed step, filled by ``time_rounds``.
    """

    name: str
    step: Callable[[], None]
    flops_per_step: float
    tokens_per_step: int = 0
    sequences_per_step: int = 0
    compile_s: float | None = None
    note: str = ""
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def matmul_system(size: int, dtype: str, device: jax.Device, target_s: float = 0.05) -> System:
    """A jitted ``size``³ matmul on one device as a timed participant (the measured peak).

    One "step" runs enough back-to-back matmuls to last about ``target_s``, so per-call
    dispatch overhead does not lower the measured rate of a fast accelerator.
    """
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    # Random operands: all-zero inputs draw less power and run faster on GPUs.
    a = jax.device_put(jax.random.normal(k1, (size, size), dtype), device)
    b = jax.device_put(jax.random.normal(k2, (size, size), dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    reps = max(1, math.ceil(target_s / max(time.perf_counter() - t0, 1e-6)))

    def step() -> None:
        for _ in range(reps):
            out = matmul(a, b)
        out.block_until_ready()

    return System(name="matmul", step=step, flops_per_step=2.0 * size**3 * reps,
                  note=f"{size}x{size}x{size} {dtype} matmul, {reps} per step")


class _JaxStepper:
    """Holds the (donated, hence replaced every step) train state between timed steps."""

    def __init__(self, compiled: Callable, state: train.TrainState, batches: list[dict]):
        self.compiled, self.state, self.batches = compiled, state, batches
        self.count = 0
        self.metrics: dict = {}

    def __call__(self) -> None:
        batch = self.batches[self.count % len(self.batches)]
        self.state, self.metrics = self.compiled(self.state, batch)
        jax.block_until_ready((self.state, self.metrics))
        self.count += 1


def bertjax_system(config: Any, mesh_shape: tuple[int, int, int]) -> tuple[System, dict]:
    """Builds, compiles (AOT) and wraps the real bertjax train step.

    Returns:
      (the System, {"lower_s", "compile_s" (XLA's part), "compiled", "devices", "flops",
      "stepper", "num_params", "host_batches"}).
    """
    mesh = sharding.make_mesh(*mesh_shape)
    state, fns = train.build(config, mesh)
    rng = np.random.default_rng([config.seed, multihost.process_index()])
    local = multihost.local_batch_size(config.global_batch_size)
    # Two batches, placed once: the step sees changing data without host->device time.
    host = [synthetic.batch(rng, local, config.max_seq_length, config.max_predictions,
                            config.model.vocab_size,
                            pairs_per_row=config.data.pairs_per_row) for _ in range(2)]
    batch_like = {k: np.zeros((config.global_batch_size,) + v.shape[1:], v.dtype)
                  for k, v in host[0].items()}
    shardings = train.batch_shardings(fns, batch_like)
    batches = [multihost.global_batch(h, shardings) for h in host]
    step_fn = train.jit_train_step(fns, batch_like)
    t0 = time.perf_counter()
    lowered = step_fn.lower(state, batches[0])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    b, l = config.global_batch_size, config.max_seq_length
    flops = flops_lib.pretraining_flops(config)
    stepper = _JaxStepper(compiled, state, batches)
    system = System(name="bertjax", step=stepper, flops_per_step=flops["total"],
                    tokens_per_step=b * l, sequences_per_step=b, compile_s=t2 - t0,
                    note="sparse MLM head at max_predictions positions")
    info = {"lower_s": t1 - t0, "compile_s": t2 - t1, "compiled": compiled,
            "devices": list(mesh.devices.flat), "flops": flops, "stepper": stepper,
            "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "host_batches": host}
    return system, info


def warm_up(system: System, n: int) -> None:
    """Runs ``n`` untimed steps (compilation, autotuning, allocator growth happen here)."""
    for _ in range(n):
        system.step()


def time_rounds(systems: list[System], steps: int,
                on_round: Callable[[], None] | None = None) -> None:
    """Times ``steps`` rounds; each round times one step of every system, in a rotated order
    so that no system always runs right after the same neighbour. ``on_round`` is called after
    each round (a progress bar), outside the timed spans."""
    for s in systems:
        s.times = []
    for r in range(steps):
        k = r % len(systems)
        for s in systems[k:] + systems[:k]:
            t0 = time.perf_counter()
            s.step()
            s.times.append(time.perf_counter() - t0)
        if on_round is not None:
            on_round()
