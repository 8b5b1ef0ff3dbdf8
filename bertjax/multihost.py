"""Processes and hosts: the only module that knows about process_index / process_count.

Turns each host's local numpy batch into one global jax.Array sharded on the mesh, answers
"am I the chief" for logging and writing, and turns SIGTERM / Ctrl-C into a request the
training loops honour after a step (``StopRequests``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
from typing import Any

import jax
import numpy as np


class ClusterError(RuntimeError):
    """Hosts disagree, or the distributed runtime could not start; the message says which."""


class Stopped(Exception):
    """A training loop stopped on request after saving its step; the command prints the
    message and exits with ``exit_code`` (0 for SIGTERM / a preemption, 130 for Ctrl-C)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    """SIGTERM and a first Ctrl-C (SIGINT) become a request the loop reads after each step:
    it finishes the step, saves it and stops. A second Ctrl-C stops at once
    (KeyboardInterrupt), leaving the last complete checkpoint.

    One process only. With several, JAX's preemption notifier owns SIGTERM (a signal on any
    host makes the checkpoint manager's ``reached_preemption(step)`` true on every host at the
    same step) and a Python handler would take the signal away from it; Ctrl-C reaches one
    host, which cannot save alone, so it keeps Python's default (stop at once) there.
    Use as a context manager: the previous handlers come back on exit.
    """

    def __init__(self, say: Any = None):
        self.signal: str | None = None  # "SIGTERM" or "SIGINT" once requested
        self._say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if process_count() > 1:
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (tests): no handlers
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handler(self, signum: int, frame: Any) -> None:
        del frame
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: now
        if self.signal is None:
            self.signal = name
            if name == "SIGINT":
                self._say("interrupted: finishing this step and saving it; press Ctrl-C "
                          "again to stop at once (the last complete checkpoint stays)")

    @property
    def requested(self) -> bool:
        return self.signal is not None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300,
               heartbeat_timeout_s: int = 60) -> None:
    """Starts JAX's multi-controller runtime when this is one of several processes.

    Explicit arguments win; then BERTJAX_COORDINATOR / BERTJAX_NUM_PROCESSES /
    BERTJAX_PROCESS_ID (set by launch/local.py and the k8s manifest); then auto-detection on
    TPU VMs and under SLURM (jax.distributed's cluster detection). A single process with none of
    these does nothing. CPU processes use gloo collectives.

    Args:
      coordinator: "host:port" of process 0's coordination service.
      num_processes, process_id: the job's size and this process's index.
      timeout_s: how long to wait for every process to join.
      heartbeat_timeout_s: after this long without a heartbeat a process counts as lost and the
        others stop with an error instead of hanging.
    """
    env = os.environ
    coordinator = coordinator or env.get("BERTJAX_COORDINATOR")
    if num_processes is None and env.get("BERTJAX_NUM_PROCESSES"):
        num_processes = int(env["BERTJAX_NUM_PROCESSES"])
    if process_id is None and env.get("BERTJAX_PROCESS_ID"):
        process_id = int(env["BERTJAX_PROCESS_ID"])
    auto = (int(env.get("SLURM_NTASKS", "1")) > 1 or bool(env.get("TPU_WORKER_HOSTNAMES"))
            or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS")))
    if not coordinator and not auto:
        return
    if num_processes is not None and num_processes <= 1 and not auto:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=heartbeat_timeout_s)
    except Exception as e:  # the runtime's own message, in one line
        raise ClusterError(f"jax.distributed.initialize(coordinator={coordinator}, "
                           f"num_processes={num_processes}, process_id={process_id}) failed: "
                           f"{str(e).splitlines()[0]}; check that every process was started "
                           "with the same coordinator and count") from None
    logging.warning("process %d of %d: %d local devices, %d global devices",
                    jax.process_index(), jax.process_count(), jax.local_device_count(),
                    jax.device_count())


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


def _digest(value: Any) -> int:
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def check_hosts_agree(facts: dict[str, Any]) -> None:
    """Stops every host, naming what differs, unless all hosts hold the same facts.

    Args:
      facts: name -> JSON-able value (e.g. {"config.optim.lr": ..., "code": ..., "data": [...]}),
        the same names on every host. Run before anything is compiled.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils
    names = sorted(facts)
    mine = np.array([_digest(len(names))] + [_digest(facts[n]) for n in names], np.int32)
    sizes = multihost_utils.process_allgather(np.array([len(mine)], np.int32))
    if len(set(np.asarray(sizes).reshape(-1).tolist())) != 1:
        raise ClusterError("hosts hold different sets of settings (different code versions?); "
                           "start every host from the same checkout")
    every = np.asarray(multihost_utils.process_allgather(mine))  # [hosts, 1 + facts]
    differ = [names[i - 1] for i in range(1, every.shape[1]) if len(set(every[:, i])) > 1]
    if differ:
        raise ClusterError(f"hosts disagree on {', '.join(differ[:5])}"
                           f"{' ...' if len(differ) > 5 else ''} (this is process "
                           f"{jax.process_index()}: {differ[0]}={facts[differ[0]]!r}); start "
                           "every host with the same flags, code and data")
