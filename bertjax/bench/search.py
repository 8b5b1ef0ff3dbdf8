"""The plan's search for speed: which knob values make the compiled step fastest on a slice.

``python -m bertjax.plan --config=... --topology=v5e:16x16 --speed`` comes here after the plan
of the config as given (``plan.make_plan``). Every candidate is the real train step compiled for
the target (``plan.compile_step``) and scored by the compiler's own step time
(``plan.step_seconds``: optimal_seconds for a loop-free step, the trip-weighted cycles for one
with loops); a candidate that does not fit the device's memory is never chosen.

The knobs, each a ``--config`` override, taken one at a time from the best so far (coordinate
descent), in the order they matter most:

  * rows per device per micro-batch (``micro_batch_per_device`` with ``accum_steps=0``):
    doubled while it fits and gets faster; a step that runs a few rows per chip spends its
    time on everything but matmuls;
  * the dropout RNG (``rng_impl``): threefry's integer rounds against XLA's RngBitGenerator;
  * the mesh split: the batch over ``data`` (every device updates every weight) or over
    ``fsdp`` (weights and optimizer state split: the update runs on a slice of each);
  * ``model.remat`` with twice the rows, when those rows alone did not fit;
  * ``model.attention_impl``: "xla" (fused attention), only where attention dropout is off.

Scanned against unrolled layers is not searched: an unrolled BERT-large step takes tens of
minutes to compile on a laptop-class CPU (see docs/plan.md); compare them with ``--estimate``.
Compiles are cached by their overrides, and the search stops after ``max_compiles``.

This module imports TensorFlow nowhere and needs no TPU; libtpu is needed only for TPU targets.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from bertjax import config as config_lib
from bertjax.bench import flops as flops_lib
from bertjax.bench import plan as plan_lib


@dataclasses.dataclass
class Candidate:
    """One compiled set of overrides and what the compiler says of it."""

    overrides: dict[str, Any]  # --config keys -> values, on top of the config as given
    result: plan_lib.Compiled | None  # None: refused before compiling (``note`` says why)
    seconds: float | None = None  # the compiler's step time
    mfu: float | None = None
    collective_bytes: int = 0  # per device per step
    note: str = ""

    def fits(self, capacity: int | None) -> bool:
        return self.result is not None and self.result.fits(capacity)

    def flags(self) -> str:
        """The overrides as the command line takes them."""
        return " ".join(f"--config.{k}={v}" for k, v in self.overrides.items()) or "(as given)"


@dataclasses.dataclass
class SpeedSearch:
    target: plan_lib.Target
    candidates: list[Candidate]  # in the order they were compiled
    best: Candidate | None
    seconds: float  # wall-clock of the whole search
    compiles: int  # besides the config as given
    stopped: str = ""  # why it stopped early, if it did


class _Searcher:
    """Compiles candidates (cached by overrides) and keeps the fastest that fits."""

    def __init__(self, config: Any, tgt: plan_lib.Target, max_compiles: int,
                 given: plan_lib.Compiled | None):
        self.config, self.tgt, self.max_compiles = config, tgt, max_compiles
        self.flops = flops_lib.pretraining_flops(config)["total"]
        self.cache: dict[tuple, Candidate] = {}
        self.order: list[Candidate] = []
        self.compiles = 0
        self.best: Candidate | None = None
        if given is not None:
            self._keep(self._score({}, given))

    def _score(self, overrides: dict, result: plan_lib.Compiled) -> Candidate:
        cand = Candidate(dict(overrides), result)
        if result.compiled is not None:
            cand.seconds = plan_lib.step_seconds(result.compiled)
            peak = self.tgt.peak_flops
            if cand.seconds and peak:
                cand.mfu = self.flops / (cand.seconds * peak * len(self.tgt.devices))
            cand.collective_bytes = sum(
                c["bytes"] for c in plan_lib.collectives(result.compiled.as_text()))
        return cand

    def _keep(self, cand: Candidate) -> None:
        self.cache[tuple(sorted(cand.overrides.items()))] = cand
        self.order.append(cand)
        if cand.fits(self.tgt.capacity_bytes) and cand.seconds and (
                self.best is None or self.best.seconds is None
                or cand.seconds < self.best.seconds):
            self.best = cand

    @property
    def exhausted(self) -> bool:
        return self.compiles >= self.max_compiles

    def try_(self, **changes: Any) -> Candidate | None:
        """Compiles the best overrides so far with ``changes`` (dotted keys); None once the
        compile budget is spent."""
        base = dict(self.best.overrides) if self.best else {}
        overrides = {**base, **changes}
        key = tuple(sorted(overrides.items()))
        if key in self.cache:
            return self.cache[key]
        if self.exhausted:
            return None
        config = plan_lib.with_changes(self.config, **overrides)
        try:
            result = plan_lib.compile_step(config, self.tgt.devices)
        except config_lib.ConfigError as e:
            cand = Candidate(overrides, None, note=str(e))
            self.cache[key] = cand
            self.order.append(cand)
            return cand
        self.compiles += 1
        cand = self._score(overrides, result)
        self._keep(cand)
        return cand

    def faster(self, cand: Candidate | None) -> bool:
        return (cand is not None and cand is self.best)


def _rows_per_device(config: Any, n_devices: int) -> int:
    """A step's rows on each batch-parallel device (global batch over the batch split)."""
    shape = config_lib.validate(plan_lib.with_changes(config), n_devices)
    split = config_lib.batch_split(config, shape)
    return config.global_batch_size // split


def search_speed(config: Any, tgt: plan_lib.Target, max_compiles: int = 8,
                 given: plan_lib.Compiled | None = None) -> SpeedSearch:
    """The fastest knob values for ``config`` on ``tgt`` by the compiler's step time.

    Args:
      config: a validated run config (its accum_steps resolved for ``tgt``).
      given: the compile of ``config`` as given, when the plan has it already.
      max_compiles: at most this many compiles besides ``given``.
    """
    t0 = time.perf_counter()
    s = _Searcher(config, tgt, max_compiles, given)
    if given is None:
        s.try_()
    cap = tgt.capacity_bytes
    stopped = ""

    # 1. rows per device a micro-batch: doubled while it fits and gets faster
    rows = _rows_per_device(config, len(tgt.devices))
    current = rows // config.accum_steps
    too_big = None
    per_device = current * 2
    while per_device <= rows and not s.exhausted:
        cand = s.try_(accum_steps=0, micro_batch_per_device=per_device)
        if cand is None:
            break
        if not cand.fits(cap):
            too_big = per_device
            break
        if not s.faster(cand):
            break
        per_device *= 2

    # 2. the dropout RNG
    m = config.model
    if (m.hidden_dropout > 0 or m.attention_dropout > 0) and not s.exhausted:
        other = "rbg" if config.rng_impl == "threefry2x32" else "threefry2x32"
        s.try_(rng_impl=other)

    # 3. the mesh split: the batch over fsdp instead of data (or back)
    if not s.exhausted and config.mesh.tensor == 1:
        shape = config_lib.validate(plan_lib.with_changes(config), len(tgt.devices))
        if shape[1] == 1:
            s.try_(**{"mesh.data": 1, "mesh.fsdp": -1})
        else:
            s.try_(**{"mesh.data": -1, "mesh.fsdp": 1})

    # 4. recompute activations to afford the rows that did not fit
    if too_big is not None and m.remat == "none":
        for policy in ("dots", "full"):
            cand = s.try_(**{"model.remat": policy, "accum_steps": 0,
                             "micro_batch_per_device": too_big})
            if cand is None or cand.fits(cap):
                break

    # 5. fused attention, where no attention dropout needs the explicit softmax
    if m.attention_dropout == 0 and m.attention_impl in ("auto", "explicit"):
        s.try_(**{"model.attention_impl": "xla" if m.attention_impl == "explicit"
                  else "explicit"})

    if s.exhausted:
        stopped = f"stopped after {s.compiles} compiles (--max_tries)"
    return SpeedSearch(tgt, s.order, s.best, time.perf_counter() - t0, s.compiles, stopped)


def _pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if x is not None else "—"


def format_search(result: SpeedSearch, top: int = 5) -> str:
    """The search as the plan command prints it: the fastest candidates that fit, each with
    its memory, the compiler's step time, implied MFU, collectives and overrides."""
    cap = result.target.capacity_bytes
    fitting = sorted((c for c in result.candidates if c.fits(cap) and c.seconds),
                     key=lambda c: c.seconds)
    lines = [f"speed search: {result.compiles} compiles in {result.seconds:.0f} s"
             + (f" ({result.stopped})" if result.stopped else "")
             + "; fastest that fit, by the compiler's step time:",
             f"  {'step':>9} {'MFU':>6} {'GiB':>6} {'collectives':>12}  overrides"]
    for c in fitting[:top]:
        lines.append(f"  {plan_lib.duration(c.seconds):>9} {_pct(c.mfu):>6} "
                     f"{plan_lib.gib(c.result.total_bytes()):>6} "
                     f"{plan_lib.si(c.collective_bytes) + 'B':>12}  {c.flags()}")
    refused = [c for c in result.candidates if not c.fits(cap)]
    for c in refused:
        why = c.note or (f"does not fit ({plan_lib.gib(c.result.total_bytes())} GiB)"
                         if c.result is not None else "refused")
        lines.append(f"  {'':>9} {'':>6} {'':>6} {'':>12}  {c.flags()}: {why[:160]}")
    if result.best is not None:
        lines.append(f"fastest: {result.best.flags()}")
    else:
        lines.append("fastest: none of the candidates fits")
    return "\n".join(lines)
