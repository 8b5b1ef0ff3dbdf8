"""Checkpoints through orbax-checkpoint: asynchronous, sharded, atomic; exact resume.

A checkpoint step directory holds three items:
  state   the TrainState (params, optimizer state, step, RNG), every leaf a mesh-sharded array,
          written by every host for its own shards;
  data    one file set per host with that host's tf.data iterator state (written by each host
          at the moment of the save, synchronously, so it matches the state exactly);
  config  the run config as JSON (written by the primary host).

Resume order (``Checkpointer.restore``): the newest complete step (bertjax.rundir.steps: its
``state`` item holds orbax's metadata; orbax only renames a step directory into place once every
host finished writing it, so a step killed during its save is never picked) -> the state
restored *into the shardings of the current mesh* (the saved mesh does not matter, so a 2x2x2
checkpoint restores onto 8x1x1 or onto 4 devices) -> each host's data iterator from its own
file (if the process count changed, the data order restarts and a warning says so).

What is not a good step is set aside, never deleted: orbax counts every directory named like a
step, so a stray one (an empty ``checkpoints/70``, a half-copied ``checkpoints/55``) would keep
its place among the ``keep`` newest while a good step is deleted, and saving that step number
later would fail ("already exists"). ``Checkpointer`` therefore renames such a directory to
``<step>.stray`` before orbax looks (one warning line naming each and the newest complete step),
and a complete step that cannot be restored (or whose saved config is not JSON) is skipped with
a warning line naming it and the error, then renamed to ``<step>.damaged`` once an older step
restored (one more line). When no step restores, one ``error:`` line (ConfigError) says so and
nothing is moved.

This module never imports TensorFlow: the data iterator is driven through its save/restore
methods.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from bertjax import config as config_lib
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

    Raises:
      config_lib.ConfigError: a stray step directory cannot be set aside (one line).
    """

    def __init__(self, directory: str, every: int, keep: int = 3,
                 keep_period: int | None = None, async_save: bool = True):
        self.directory = rundir.absolute(directory)
        moved = self._set_aside_strays()  # before orbax lists the steps
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=keep, keep_period=keep_period,
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config"))
        if moved:
            latest = self.latest_step()
            names = ", ".join(f"{old} -> {new}" for old, new in moved)
            _warn(f"{self.directory}: {len(moved)} step "
                  + ("directory is not a complete checkpoint" if len(moved) == 1 else
                     "directories are not complete checkpoints")
                  + f" (no state/_METADATA), set aside: {names}; "
                  + ("no complete step is left" if latest is None else
                     f"the newest complete step is {latest}"))

    def _set_aside_strays(self) -> list[tuple[str, str]]:
        """Renames the stray step directories (rundir.stray_steps) to ``<step>.stray`` on the
        first host while the others wait; [(old name, new name)] there, [] elsewhere."""
        moved = []
        if multihost.process_index() == 0:
            strays = [int(p.name) for p in rundir.stray_steps(self.directory)]
            moved = self._rename(strays, "stray",
                                 "is not a complete checkpoint (no state/_METADATA)")
        multihost.barrier(f"bertjax strays set aside: {self.directory}")
        return moved

    def _rename(self, steps: list[int], why: str, what: str) -> list[tuple[str, str]]:
        """Renames these step directories to ``<step>.<why>`` (``-2``, ``-3``... when taken);
        [(old name, new name)]."""
        root = epath.Path(self.directory)
        moved = []
        for step in steps:
            path = root / str(step)
            target, n = root / f"{step}.{why}", 1
            while target.exists():
                n += 1
                target = root / f"{step}.{why}-{n}"
            try:
                path.rename(target)
            except Exception as e:  # OSError locally, the filesystem's own for gs://
                raise config_lib.ConfigError(
                    f"{path} {what} and cannot be renamed to {target.name} "
                    f"({getattr(e, 'strerror', None) or type(e).__name__}); move it out of "
                    f"{root} and start again") from None
            moved.append((str(step), target.name))
        return moved

    def steps(self) -> list[int]:
        """The complete steps (rundir.steps), ascending."""
        return rundir.steps(self.directory)

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        found = self.steps()
        return found[-1] if found else None

    def saved_config(self, step: int | None = None) -> dict | None:
        """The config stored with a step (default: the newest complete step whose config is
        JSON; ``restore`` sets the others aside, with a warning), upgraded (rundir.upgrade), or
        None if there is none.

        Raises:
          config_lib.ConfigError: ``step``'s config is not JSON (one line naming the file).
        """
        if step is not None:
            return rundir.read_config(epath.Path(self.directory) / str(step))
        for candidate in reversed(self.steps()):
            try:
                return rundir.read_config(epath.Path(self.directory) / str(candidate))
            except config_lib.ConfigError:
                continue
        return None

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

        Without ``step``: the newest complete step that restores; a warning line names each
        one that did not and its error, and those are then renamed to ``<step>.damaged`` (one
        more line).

        Returns:
          (state, step).

        Raises:
          config_lib.ConfigError: no step restores (one line naming the first error); nothing
            is renamed then.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            raise config_lib.ConfigError(f"{self.directory} holds no complete checkpoint to "
                                         "restore")
        failed: list[tuple[int, str]] = []
        quiet_failed_restore()
        for i, candidate in enumerate(candidates):
            try:
                restored = self._restore_step(candidate, abstract_state, iterator)
            except Exception as e:  # a damaged step: fall back to the one before it
                failed.append((candidate, _error_line(e)))
                if len(failed) < len(candidates):
                    _warn(f"checkpoint step {candidate} in {self.directory} is unreadable "
                          f"({failed[-1][1]}); skipping it and trying step {candidates[i + 1]}")
                else:
                    first, why = failed[0]
                    older = f" (and {len(failed) - 1} older)" if len(failed) > 1 else ""
                    raise config_lib.ConfigError(
                        f"{self.directory}: no checkpoint step restores: step {first}{older} "
                        f"fails with {why}; if the run's config changed, pass the old one (or "
                        "use another workdir); if the files are damaged, move the checkpoints "
                        "directory aside to start over") from e
                continue
            if failed:  # every host failed the same steps: the restore is collective
                moved = []
                if multihost.process_index() == 0:
                    moved = self._rename([s for s, _ in failed], "damaged", "is unreadable")
                multihost.barrier(f"bertjax damaged steps set aside: {self.directory}")
                self.manager.reload()  # orbax cached the step list when it was opened
                if moved:
                    _warn(f"{self.directory}: unreadable step{'s' if len(moved) > 1 else ''} set "
                          f"aside: {', '.join(f'{old} -> {new}' for old, new in moved)}; using "
                          f"step {candidate}")
            return restored, candidate
        raise AssertionError("unreachable")

    def _restore_step(self, step: int, abstract_state: Any, iterator: Any | None) -> Any:
        """One step's state (and the iterator in place); raises whatever the step's files do."""
        step_dir = epath.Path(self.directory) / str(step)
        try:
            rundir.read_config(step_dir)
        except config_lib.ConfigError:  # a config that is not JSON marks the step damaged too
            raise ValueError("its saved config (config/metadata) is not a JSON object") from None
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None and (step_dir / "data").exists():
            items["data"] = DataRestore(iterator)
        elif iterator is not None:
            logging.warning("checkpoint %s has no data-iterator state; the data order "
                            "restarts", step)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        """Blocks until an asynchronous save has been committed."""
        self.manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def quiet_failed_restore() -> None:
    """Keeps the aftermath of a failed orbax restore off the terminal, from now on in this
    process (call it before a restore that may fail: the aftermath can come first). When one
    array cannot be read, orbax closes its event loop while tensorstore still completes the
    other reads, and each completion reports "Event loop is closed" as an unraisable exception
    (a traceback apiece), and asyncio logs each failed read's task. The failure itself is
    reported in one line; other unraisable exceptions and log records pass through."""
    global _QUIET
    if _QUIET:
        return
    _QUIET = True
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(
        lambda record: not str(record.msg).startswith("Task exception was never retrieved"))


_QUIET = False


def _error_line(e: BaseException) -> str:
    """``Type: first line`` of an exception, at most 200 characters of it."""
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _warn(message: str) -> None:
    """One ``warning:`` line on stdout, from the first host only."""
    if multihost.process_index() == 0:
        print(f"warning: {message}", flush=True)


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``state`` carrying the target ``shardings`` (for restore)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
