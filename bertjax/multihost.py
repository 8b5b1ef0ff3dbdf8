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


def on_cloud_tpu_vm(dev: str = "/dev") -> bool:
    """Whether this machine is a Cloud TPU VM JAX can drive: the libtpu package is installed
    and TPU chips are attached (``/dev/accel*`` on TPU v2-v4, ``/dev/vfio/<n>`` on v5e and
    newer). Reads no metadata and starts nothing."""
    import glob
    import importlib.util
    chips = glob.glob(os.path.join(dev, "accel[0-9]*")) + glob.glob(
        os.path.join(dev, "vfio", "[0-9]*"))
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


def detected_cluster(env: Any = None) -> str | None:
    """Which launcher's environment this process runs in, when it is one of several processes
    JAX can find by itself (jax.distributed's cluster detection): "slurm", "gke-tpu",
    "multislice" or "tpu-vm"; None for none of them. ``env`` defaults to os.environ."""
    env = os.environ if env is None else env
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES"):
        return "gke-tpu"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "multislice"
    return "tpu-vm" if on_cloud_tpu_vm() else None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300,
               heartbeat_timeout_s: int = 60) -> None:
    """Starts JAX's multi-controller runtime when this is one of several processes.

    Explicit arguments win; then BERTJAX_COORDINATOR / BERTJAX_NUM_PROCESSES /
    BERTJAX_PROCESS_ID (set by launch/local.py and the GPU JobSet manifest); then JAX's own
    cluster detection (``detected_cluster``: SLURM, TPU on GKE, multislice, Cloud TPU VMs, where
    the TPU VM metadata gives the coordinator, count and index and the coordinator listens on
    JAX's port for TPU, 8482). ``coordinator="auto"`` (or BERTJAX_COORDINATOR=auto) asks for
    that detection explicitly and fails if JAX finds no cluster. A single process with none of
    these does nothing; so does a lone Cloud TPU VM whose metadata names no slice. CPU
    processes use gloo collectives.

    Args:
      coordinator: "host:port" of process 0's coordination service, or "auto".
      num_processes, process_id: the job's size and this process's index.
      timeout_s: how long to wait for every process to join.
      heartbeat_timeout_s: after this long without a heartbeat a process counts as lost and the
        others stop with an error instead of hanging.

    Raises:
      ClusterError: one line, when the runtime does not start.
    """
    env = os.environ
    coordinator = coordinator or env.get("BERTJAX_COORDINATOR")
    if num_processes is None and env.get("BERTJAX_NUM_PROCESSES"):
        num_processes = int(env["BERTJAX_NUM_PROCESSES"])
    if process_id is None and env.get("BERTJAX_PROCESS_ID"):
        process_id = int(env["BERTJAX_PROCESS_ID"])
    asked = coordinator == "auto"
    if asked:
        coordinator = None
    cluster = detected_cluster(env) if coordinator is None else None
    if not coordinator and not asked and cluster is None:
        return
    if num_processes is not None and num_processes <= 1 and not (asked or cluster):
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=heartbeat_timeout_s)
    except Exception as e:  # the runtime's own message, in one line
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if coordinator is None and "coordinator_address" in reason:  # JAX found no cluster
            if cluster == "tpu-vm" and not asked:
                logging.warning("a Cloud TPU VM whose metadata names no slice: one process")
                return
            raise ClusterError(
                f"no cluster found ({'BERTJAX_COORDINATOR=auto' if asked else cluster}: JAX "
                "read no TPU VM metadata, SLURM or Kubernetes TPU variables); pass "
                "--coordinator_address=HOST:PORT --num_processes=N --process_id=I") from None
        raise ClusterError(f"jax.distributed.initialize(coordinator={coordinator or 'auto'}, "
                           f"num_processes={num_processes}, process_id={process_id}) failed: "
                           f"{reason}; check that every process was started "
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


_TEXT_BYTES = 320  # how much of a value or message one host shows the others


def _gather_texts(texts: list[str]) -> list[list[str]]:
    """Every host's ``texts`` (the same count on every host, each cut to _TEXT_BYTES of UTF-8),
    as [host][i]."""
    from jax.experimental import multihost_utils
    rows = np.zeros((len(texts), _TEXT_BYTES), np.int32)
    for i, text in enumerate(texts):
        data = text.encode()[:_TEXT_BYTES]
        rows[i, :len(data)] = np.frombuffer(data, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(rows)).reshape(-1, len(texts),
                                                                        _TEXT_BYTES)
    return [[bytes(r[r > 0].astype(np.uint8).tolist()).decode(errors="replace") for r in host]
            for host in every]


def _processes(hosts: list[int]) -> str:
    """[0, 1, 2, 5] -> "processes 0-2, 5"; [3] -> "process 3"."""
    spans: list[list[int]] = []
    for h in hosts:
        if spans and h == spans[-1][1] + 1:
            spans[-1][1] = h
        else:
            spans.append([h, h])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans[:6])
    return f"process{'es' if len(hosts) > 1 else ''} {text}{', ...' if len(spans) > 6 else ''}"


def any_host_problem(problem: str | None) -> str | None:
    """What every host learns of the hosts' own problems: each process calls this at the same
    point with the one-line problem it found (a missing file on its disk, say) or None.

    Returns:
      None when no host has one; else the same line on every host, naming the first process
      with a problem and its line (and how many others had one). With one process, ``problem``.
    """
    if jax.process_count() == 1:
        return problem
    from jax.experimental import multihost_utils
    flags = np.asarray(multihost_utils.process_allgather(
        np.array([problem is not None], np.int32))).reshape(-1)
    if not flags.any():
        return None
    texts = [host[0] for host in _gather_texts([problem or ""])]
    failing = [h for h in range(len(flags)) if flags[h]]
    first = failing[0]
    more = f" ({_processes(failing[1:])} too)" if len(failing) > 1 else ""
    return f"process {first} of {len(flags)}: {texts[first]}{more}"


def check_hosts_agree(facts: dict[str, Any]) -> None:
    """Stops every host, naming what differs and each host's value, unless all hosts hold the
    same facts.

    Every host sends a digest of each fact's name and value; a fact one host has and another
    lacks (a setting only one code version knows, data present on one host only) counts as a
    difference too. For the first few differences every host then sends its value as text,
    so each host's message shows what each process holds.

    Args:
      facts: name -> JSON-able value (e.g. {"config.optim.lr": ..., "code version": ...,
        "data": ...}). Run before anything is compiled.

    Raises:
      ClusterError: one line, the same on every host.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils
    names = sorted(facts)
    mine = np.array([[_digest(n), _digest(facts[n])] for n in names], np.int32).reshape(-1, 2)
    counts = np.asarray(multihost_utils.process_allgather(
        np.array([len(names)], np.int32))).reshape(-1)
    padded = np.full((int(counts.max()), 2), -1, np.int32)
    padded[:len(mine)] = mine
    every = np.asarray(multihost_utils.process_allgather(padded)).reshape(
        len(counts), -1, 2)  # [hosts, facts, (name, value)]
    values: dict[int, list[int | None]] = {}  # name digest -> each host's value digest
    for h, count in enumerate(counts):
        for name, value in every[h, :count].tolist():
            values.setdefault(name, [None] * len(counts))[h] = value
    differ = sorted(name for name, per_host in values.items() if len(set(per_host)) > 1)
    if not differ:
        return
    by_digest = {_digest(n): n for n in names}
    shown = differ[:3]
    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, default=str)

    texts = _gather_texts([t for d in shown for t in (
        (by_digest[d], text(facts[by_digest[d]])) if d in by_digest
        else ("", ""))])  # [host][name 0, value 0, name 1, ...]
    parts = []
    for i, d in enumerate(shown):
        name = next(host[2 * i] for host in texts if host[2 * i])
        groups: dict[int | None, list[int]] = {}
        for h, value in enumerate(values[d]):
            groups.setdefault(value, []).append(h)
        held = [f"{texts[hs[0]][2 * i + 1] if value is not None else '(not set)'} on "
                f"{_processes(hs)}" for value, hs in groups.items()]
        parts.append(f"{name} ({'; '.join(held)})")
    more = f", and {len(differ) - len(shown)} more" if len(differ) > len(shown) else ""
    raise ClusterError(f"hosts disagree on {', '.join(parts)}{more}; start every host with the "
                       "same flags, code and data")
