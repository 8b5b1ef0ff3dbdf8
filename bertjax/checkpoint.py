"""Checkpoints through orbax-checkpoint: asynchronous, sharded, atomic; exact resume.

A checkpoint step directory holds three items:
  state   the TrainState (params, optimizer state, step, RNG), every leaf a mesh-sharded array,
          written by every host for its own shards;
  data    one file set per host with that host's tf.data iterator state (written by each host
          at the moment of the save, synchronously, so it matches the state exactly);
  config  the run config as JSON (written by the primary host).

Resume order (``Checkpointer.restore``): the latest step orbax reports as committed (orbax only
renames a step directory into place once every host finished writing it, so a step killed during
its save is never picked) -> the state restored *into the shardings of the current mesh* (the
saved mesh does not matter, so a 2x2x2 checkpoint restores onto 8x1x1 or onto 4 devices) ->
each host's data iterator from its own file (if the process count changed, the data order
restarts and a warning says so).

This module never imports TensorFlow: the data iterator is driven through its save/restore
methods.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from bertjax import multihost, rundir

# Keys that define a run: a workdir whose saved config differs in these is refused on resume.
# Everything else (mesh, total_steps, cadences, accumulation) may change between restarts.
RUN_IDENTITY_KEYS = ("model", "optim", "global_batch_size", "max_seq_length", "max_predictions",
                     "seed", "rng_impl", "nsp", "data")


@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    iterator: Any


@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    iterator: Any


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves each host's input-pipeline iterator into the checkpoint's ``data`` item."""

    def save(self, directory: epath.Path, args: DataSave) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        index, count = multihost.process_index(), multihost.process_count()
        args.iterator.save(os.fspath(directory / f"host_{index}"))
        if index == 0:
            (directory / "hosts.json").write_text(json.dumps({"process_count": count}))

    def restore(self, directory: epath.Path, args: DataRestore) -> Any:
        index, count = multihost.process_index(), multihost.process_count()
        meta = directory / "hosts.json"
        saved = json.loads(meta.read_text())["process_count"] if meta.exists() else None
        if saved != count:
            logging.warning("data iterator saved by %s processes, restoring with %s: the data "
                            "order restarts from the beginning on every host", saved, count)
            return args.iterator
        args.iterator.restore(os.fspath(directory / f"host_{index}"))
        return args.iterator

    def metadata(self, directory: epath.Path) -> None:
        return None


ocp.args.register_with_handler(DataIteratorHandler, for_save=True)(DataSave)
ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)(DataRestore)


class WorkdirConfigError(ValueError):
    """The workdir holds a run whose config differs from the requested one."""


def config_differences(saved: dict, current: dict, keys=RUN_IDENTITY_KEYS) -> list[str]:
    """Lists 'key: saved -> current' for run-identity keys that differ (dotted paths).

    ``saved`` is upgraded (rundir.upgrade: keys it predates hold the values its run used), as
    ``saved_config`` returns it."""
    diffs = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        elif _normal(a) != _normal(b):
            diffs.append(f"{prefix[:-1]}: {a!r} -> {b!r}")

    for key in keys:
        walk(saved.get(key, "<absent>"), current.get(key, "<absent>"), f"{key}.")
    return diffs


def _normal(x):
    if isinstance(x, (list, tuple)):
        return [_normal(v) for v in x]
    return x


def config_to_json(config: Any) -> dict:
    """A JSON-able dict of a ConfigDict (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=list))


class Checkpointer:
    """A CheckpointManager for one run directory.

    Args:
      directory: where step directories go (local path or gs://).
      every: save every this many steps.
      keep: keep the last this many.
      keep_period: also keep every step divisible by this (None: no).
      async_save: write in a background thread while training continues.
    """

    def __init__(self, directory: str, every: int, keep: int = 3,
                 keep_period: int | None = None, async_save: bool = True):
        self.directory = rundir.absolute(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=keep, keep_period=keep_period,
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def saved_config(self, step: int | None = None) -> dict | None:
        """The config stored with a step (default: the latest), upgraded (rundir.upgrade), or
        None if there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return rundir.read_config(epath.Path(self.directory) / str(step))

    def save(self, step: int, state: Any, config: Any, iterator: Any | None = None,
             force: bool = False) -> bool:
        """Saves at ``step`` if the interval says so (or ``force``); returns whether it did."""
        if not force and not self.manager.should_save(step):
            return False
        items = {"state": ocp.args.StandardSave(state),
                 "config": ocp.args.JsonSave(config_to_json(config))}
        if iterator is not None:
            items["data"] = DataSave(iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, iterator: Any | None = None,
                step: int | None = None) -> tuple[Any, int]:
        """Restores ``state`` into the shardings of ``abstract_state`` (a tree of
        ShapeDtypeStruct with .sharding) and the host's iterator in place.

        Returns:
          (state, step).
        """
        candidates = [step] if step is not None else sorted(self.manager.all_steps(),
                                                            reverse=True)
        for i, candidate in enumerate(candidates):
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            step_dir = epath.Path(self.directory) / str(candidate)
            if iterator is not None and (step_dir / "data").exists():
                items["data"] = DataRestore(iterator)
            elif iterator is not None:
                logging.warning("checkpoint %s has no data-iterator state; the data order "
                                "restarts", candidate)
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
            except Exception as e:  # a damaged step: fall back to the one before it
                if i == len(candidates) - 1:
                    raise
                reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                message = (f"checkpoint step {candidate} in {self.directory} is unreadable "
                           f"({type(e).__name__}: {reason}); skipping it and trying step "
                           f"{candidates[i + 1]}")
                logging.warning(message)
                print(f"warning: {message}", flush=True)
                continue
            return restored["state"], candidate
        raise FileNotFoundError(f"no checkpoint in {self.directory}")

    def wait(self) -> None:
        """Blocks until an asynchronous save has been committed."""
        self.manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``state`` carrying the target ``shardings`` (for restore)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
