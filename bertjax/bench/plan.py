"""Plan a run before launching it: the real train step compiled for a pod slice's devices.

``python -m bertjax.plan --config=... --topology=v5e:16x16`` (bertjax/plan.py) comes here. The
state and the step are the pre-training loop's own (``train.build`` with ``abstract=True``,
``train.batch_shardings``, ``train.jit_train_step``, ``train.compiled_memory``): only shapes and
shardings exist, nothing is allocated, and the compiler is the target's.

  * target     a TPU slice that libtpu describes on this CPU machine
               (``jax.experimental.topologies.get_topology_desc``; jax[tpu] installed, no TPU
               needed), or this host's CPU devices (``cpu`` / ``cpu:N``);
  * memory     per device: parameters, optimizer state and batch from their shardings;
               arguments, outputs, temporaries and program from the compiler; their total
               against what the compiler says the chip has (a TPU compile that cannot fit
               fails with RESOURCE_EXHAUSTED, which is read as the verdict);
  * knobs      when it does not fit: accum_steps, model.remat and mesh.fsdp, each tried by
               compiling, and the first value of each that fits;
  * time       model FLOPs (bench/flops.py) and the TPU compiler's own estimates, made
               usable: ``optimal_seconds`` corrected (``estimate_seconds``), the program's
               per-instruction cycles with its loops' trips (``cycle_profile``), and, on
               request, the step timed from loop-free compiles (``micro_estimate``);
  * collectives  every all-reduce / all-gather / reduce-scatter / all-to-all /
               collective-permute in the compiled HLO: count and bytes per device, with the
               trip counts of the loops they sit in.

This module imports TensorFlow nowhere and needs no TPU; libtpu is needed only for TPU targets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
import time
from typing import Any, Iterator

import jax
import numpy as np

from bertjax import config as config_lib
from bertjax import sharding
from bertjax import synthetic
from bertjax import train
from bertjax.bench import flops as flops_lib

GIB = 2**30
INSTALL_HINT = ("pip install 'bertjax[tpu]' (or pip install -c constraints.txt -r "
                "requirements-tpu.txt)")

# HBM bandwidth per chip in GB/s, from the Cloud TPU system-architecture pages
# (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e), keyed by jax's device_kind; the bf16 peaks
# beside them are in bench/flops.py.
TPU_HBM_GBPS: dict[str, float] = {
    "TPU v4": 1200.0,
    "TPU v5 lite": 819.0,  # v5e
    "TPU v5": 2765.0,  # v5p
    "TPU v6 lite": 1640.0,  # v6e (Trillium)
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


class PlanError(ValueError):
    """A target or config the plan cannot use; one line: what, what was expected, the fix."""


@dataclasses.dataclass
class Target:
    """The devices a plan compiles for, and what one of them holds and computes."""

    name: str
    devices: list
    kind: str  # jax's device_kind
    platform: str  # "tpu" or "cpu"
    chips: int
    capacity_bytes: int | None  # memory one device may use
    capacity_source: str
    peak_flops: float | None  # dense bf16 FLOP/s of one device (a chip / devices per chip)
    hbm_bytes_per_s: float | None

    @property
    def hosts(self) -> int:
        return len({d.process_index for d in self.devices})


# --------------------------------------------------------------------------- targets

@contextlib.contextmanager
def _quiet_stderr() -> Iterator[list[str]]:
    """libtpu's C++ start-up lines (it looks for a TPU VM's environment) go to a buffer that
    is handed back, not to the console."""
    out: list[str] = []
    try:
        fd = os.dup(2)
    except OSError:  # no stderr to redirect
        yield out
        return
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            tmp.seek(0)
            out.extend(tmp.read().splitlines())


def tpu_available() -> bool:
    """Whether libtpu is installed (TPU targets need it; no TPU does)."""
    from jax._src import xla_bridge
    return xla_bridge.get_tpu_library_path() is not None


_TOPOLOGY = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+)*)$")


def target(name: str) -> Target:
    """The devices named by ``--topology``: ``v5e:4x4`` style TPU slices, or ``cpu`` /
    ``cpu:N`` (the first N of this host's devices).

    Raises:
      PlanError: an unknown name, too few CPU devices, or libtpu missing.
    """
    if name == "cpu" or name.startswith("cpu:"):
        devices = jax.devices("cpu")
        if name != "cpu":
            n = name.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise PlanError(f"--topology={name}; expected cpu or cpu:N with N >= 1")
            if int(n) > len(devices):
                raise PlanError(f"--topology={name} but this process has {len(devices)} CPU "
                                f"devices; use cpu:{len(devices)} or fewer")
            devices = devices[:int(n)]
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Target(name, devices, devices[0].device_kind, "cpu", 1,
                      ram // len(devices), "this host's RAM shared by its devices", None, None)
    m = _TOPOLOGY.match(name)
    if not m:
        raise PlanError(f"--topology={name!r}; expected GENERATION:SHAPE such as v5e:4x4, "
                        "v5p:2x2x2, v6e:16x16, v4:2x2x2, or cpu / cpu:N")
    if not tpu_available():
        raise PlanError(f"--topology={name} needs libtpu (no TPU is needed); install it with "
                        f"{INSTALL_HINT}")
    from jax.experimental import topologies
    # libtpu takes /tmp/libtpu_lockfile so that one process owns a host's TPU chips; a plan only
    # compiles, so it must not refuse to start beside a run or another plan (or a test worker)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with _quiet_stderr() as noise:
        try:
            devices = list(topologies.get_topology_desc(topology_name=name,
                                                        platform="tpu").devices)
        except Exception as e:  # libtpu's own message names what it accepts
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PlanError(f"--topology={name}: libtpu cannot describe it ({text}); use a "
                            "name such as v5e:4x4, v5p:2x2x2, v6e:8x8 or v4:2x2x2") from None
    del noise
    chips = math.prod(int(x) for x in m.group(2).split("x"))
    kind = devices[0].device_kind
    per_chip = max(len(devices) // chips, 1)  # v2-v4 and TPU7x: one device per TensorCore
    peak = flops_lib.table_peak_flops(kind)
    bw = TPU_HBM_GBPS.get(kind)
    capacity, source = _tpu_capacity(devices[0])
    return Target(name, devices, kind, "tpu", chips, capacity, source,
                  peak / per_chip if peak else None, bw * 1e9 / per_chip if bw else None)


_AVAILABLE = re.compile(r"available HBM \(([\d.]+)([KMGT])\)")
_REQUIRED = re.compile(r"memory required for [^(]*\(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(match: re.Match | None) -> int | None:
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def _tpu_capacity(device: Any) -> tuple[int | None, str]:
    """HBM one TPU device may use, as its compiler states it: a program that cannot fit is
    compiled and the 'available HBM' of the refusal read (stated to 0.01 GiB)."""
    import jax.numpy as jnp
    x = jax.ShapeDtypeStruct((1 << 16,), jnp.float32,
                             sharding=jax.sharding.SingleDeviceSharding(device))
    huge = jax.jit(lambda v: jnp.broadcast_to(v, (1 << 20, 1 << 16)).cumsum(0)[-1])
    try:
        with _quiet_stderr():
            huge.lower(x).compile()
    except Exception as e:
        found = _bytes(_AVAILABLE.search(str(e)))
        if found:
            return found, "the TPU compiler's available HBM"
    return None, "unknown"


# --------------------------------------------------------------------------- compile

@dataclasses.dataclass
class Compiled:
    """One compile of the train step for a target (``compiled`` is None when it did not fit)."""

    config: Any
    mesh_shape: dict
    compile_s: float
    compiled: Any = None
    memory: dict | None = None  # train.compiled_memory, bytes per device
    sizes: dict | None = None  # parameters / optimizer state / batch, bytes per device
    oom: str | None = None  # the compiler's refusal (RESOURCE_EXHAUSTED), one line
    required_bytes: int | None = None  # the temporaries a refusal says the program needs

    def total_bytes(self) -> int | None:
        """Bytes one device holds while the step runs: arguments, outputs that do not reuse
        a donated argument, temporaries and the program itself."""
        if self.memory is None:  # refused: the temporaries it named, plus the arguments
            if self.required_bytes is None:
                return None
            return self.required_bytes + sum((self.sizes or {}).values())
        m = self.memory
        return m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]

    def fits(self, capacity: int | None) -> bool:
        total = self.total_bytes()
        return self.oom is None and (capacity is None or total is None or total <= capacity)


def _hosts(devices: list) -> int:
    """How many processes (hosts) the devices belong to."""
    return len({d.process_index for d in devices})


def batch_like(config: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch's shapes and dtypes: the pre-training input pipeline's layout
    (synthetic.batch has the same keys, shapes and dtypes as the TF pipeline)."""
    rows = synthetic.batch(np.random.default_rng(0), 2, config.max_seq_length,
                           config.max_predictions, config.model.vocab_size,
                           pairs_per_row=config.data.pairs_per_row)
    return {k: jax.ShapeDtypeStruct((config.global_batch_size,) + v.shape[1:], v.dtype)
            for k, v in rows.items()}


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded shapes (the largest shard of each leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def compile_step(config: Any, devices: list) -> Compiled:
    """Validates ``config`` for ``devices`` and compiles its pre-training step there, as the
    pre-training loop does (``train.build``, ``train.jit_train_step``), from shapes alone.

    Raises:
      ConfigError: the config does not fit the devices (mesh, batch divisibility, ...).
    """
    shape = config_lib.validate(config, len(devices), _hosts(devices))
    mesh = sharding.make_mesh(*shape, devices=devices)
    state, fns = train.build(config, mesh, abstract=True)
    like = batch_like(config)
    batch_sh = train.batch_shardings(fns, like)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k])
             for k, v in like.items()}
    sizes = {"parameters": device_bytes(state.params),
             "optimizer state": device_bytes(state.opt_state), "batch": device_bytes(batch)}
    t0 = time.perf_counter()
    try:
        with _quiet_stderr():
            compiled = train.jit_train_step(fns, like).lower(state, batch).compile()
    except Exception as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        line = next((s for s in str(e).splitlines() if "RESOURCE_EXHAUSTED" in s), str(e))
        return Compiled(config, dict(mesh.shape), time.perf_counter() - t0, sizes=sizes,
                        oom=line.strip(), required_bytes=_bytes(_REQUIRED.search(str(e))))
    return Compiled(config, dict(mesh.shape), time.perf_counter() - t0, compiled,
                    train.compiled_memory(compiled), sizes)


# --------------------------------------------------------------------------- knobs

@dataclasses.dataclass
class Trial:
    knob: str  # the --config flag it sets
    value: Any
    result: Compiled | None  # None: the config was refused before compiling
    note: str = ""


def with_changes(config: Any, **changes: Any) -> Any:
    """A copy of ``config`` with dotted keys set: ``with_changes(c, **{"model.remat": "full"})``."""
    c = config.copy_and_resolve_references()
    for key, value in changes.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _candidates(config: Any, first: Compiled, capacity: int | None,
                n_devices: int) -> dict[str, list[tuple[str, Any]]]:
    """Per knob, the values to try in order (each alone, from the config as given)."""
    out: dict[str, list[tuple[str, Any]]] = {}
    # accum_steps: micro-batches shrink the activations; start from the factor the
    # temporaries say is needed, then double
    total = first.total_bytes()
    temp = first.memory["temp"] if first.memory else first.required_bytes
    fixed = total - temp if total is not None and temp is not None else 0
    factor = 2
    if capacity and temp and capacity > fixed:
        factor = max(2, 2 ** math.ceil(math.log2(max(temp / (capacity - fixed), 1.0))))
    a = config.accum_steps
    mesh = config_lib.validate(config, n_devices)
    split = mesh[0] * mesh[1]  # act_batch over data and fsdp (the default rules)
    # when the state alone is over the capacity, only splitting it (fsdp) can help
    state_too_big = bool(capacity and fixed >= capacity)
    values = []
    k = a * factor
    while (not state_too_big and config.global_batch_size % (split * k) == 0
           and len(values) < 4):
        values.append(("accum_steps", k))
        k *= 2
    out["accum_steps"] = values
    remat = {"none": ["dots", "full"], "dots": ["full"]}.get(config.model.remat, [])
    out["model.remat"] = [] if state_too_big else [("model.remat", r) for r in remat]
    data, fsdp = mesh[0], mesh[1]
    values, f = [], 2
    while data % f == 0 and len(values) < 4:
        values.append(("mesh.fsdp", fsdp * f))
        f *= 2
    out["mesh.fsdp"] = values
    return out


def search_knobs(config: Any, tgt: Target, first: Compiled, max_tries: int = 8) -> list[Trial]:
    """Compiles the step with one knob changed at a time until each knob's first value that
    fits (or ``max_tries`` compiles in all); the trials in the order they ran."""
    trials: list[Trial] = []
    pending = _candidates(config, first, tgt.capacity_bytes, len(tgt.devices))
    for knob, values in pending.items():
        for key, value in values:
            if len(trials) >= max_tries:
                return trials
            changes = {key: value}
            if key == "mesh.fsdp":
                changes["mesh.data"] = -1
            c = with_changes(config, **changes)
            try:
                result = compile_step(c, tgt.devices)
            except config_lib.ConfigError as e:
                trials.append(Trial(key, value, None, str(e)))
                continue
            trials.append(Trial(key, value, result))
            if result.fits(tgt.capacity_bytes):
                break
    return trials


# --------------------------------------------------------------------------- time

# custom-calls the TPU compiler's cost analysis counts at -1 s each (``estimate_seconds``)
NEGATIVE_CUSTOM_CALLS = ("ConcatBitcast", "X64Combine")


def estimate_seconds(compiled: Any) -> dict[str, Any]:
    """What the TPU compiler's cost analysis says of one step, made usable.

    ``optimal_seconds`` (XLA's sum of per-op best-case times) comes back negative with libtpu
    0.0.42: every ``ConcatBitcast`` and ``X64Combine`` custom-call in the compiled program is
    costed at -1 s (the raw figure is, on every compile seen here, a small positive time minus
    exactly their count; X64Combine comes with ``rng_impl="rbg"``), so their count is added
    back. XLA's cost analysis counts a loop body once, not
    once per trip, so a step with loops (accum_steps > 1, model.scan_layers) is undercounted;
    ``loops`` says so and the caller must not read it as a step time.

    Returns:
      {"raw", "custom_calls", "seconds" (None when unusable), "flops", "bytes", "loops",
      "cycles" (``cycle_profile``: the step with its loops' trips)}.
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "optimal_seconds" not in cost:
        return {"raw": None, "custom_calls": 0, "seconds": None, "flops": None, "bytes": None,
                "loops": [], "cycles": None}
    text = compiled.as_text()
    n = sum(text.count(f'custom_call_target="{t}"') for t in NEGATIVE_CUSTOM_CALLS)
    seconds = float(cost["optimal_seconds"]) + n
    seconds = seconds if seconds > 0 else None
    return {"raw": float(cost["optimal_seconds"]), "custom_calls": n, "seconds": seconds,
            "flops": cost.get("flops"), "bytes": cost.get("bytes accessed"),
            "loops": loop_trips(text), "cycles": cycle_profile(text, seconds)}


def step_seconds(compiled: Any) -> float | None:
    """The compiler's time for one step of a compiled program: ``optimal_seconds`` (corrected)
    when it has no loops, else its trip-weighted cycles (``cycle_profile``); None where the
    backend gives no estimate (CPU, GPU)."""
    est = estimate_seconds(compiled)
    if est["seconds"] and not est["loops"]:
        return est["seconds"]
    return est["cycles"]["seconds"] if est["cycles"] else None


def _compiled_seconds(compiled: Any, clock_hz: float | None) -> float | None:
    """A loop-free program's time: its instructions' estimated cycles at ``clock_hz`` (the
    clock of the step program, see ``micro_estimate``), or its corrected optimal_seconds when
    no clock is given."""
    est = estimate_seconds(compiled)
    if clock_hz is None:
        return est["seconds"]
    cycles = (est["cycles"] or {}).get("cycles")
    return cycles / clock_hz if cycles else None


def update_seconds(config: Any, tgt: Target, clock_hz: float | None = None) -> float | None:
    """The compiler's estimate for the optimizer update alone (``train.apply_gradients`` on the
    state's shardings, gradients shaped and sharded like the parameters): what a step does
    once however many micro-batches it accumulates (``clock_hz``: see ``_compiled_seconds``)."""
    import jax.numpy as jnp
    shape = config_lib.validate(config, len(tgt.devices), tgt.hosts)
    mesh = sharding.make_mesh(*shape, devices=tgt.devices)
    state, fns = train.build(config, mesh, abstract=True)
    repl = sharding.replicated(mesh)
    loss = jax.ShapeDtypeStruct((), jnp.float32, sharding=repl)
    update = jax.jit(lambda s, g, l: train.apply_gradients(s, g, l, fns),
                     in_shardings=(fns.state_shardings, fns.state_shardings.params, repl),
                     out_shardings=(fns.state_shardings, repl), donate_argnums=(0,))
    with _quiet_stderr():
        compiled = update.lower(state, state.params, loss).compile()
    return _compiled_seconds(compiled, clock_hz)


def micro_estimate(config: Any, tgt: Target,
                   clock_hz: float | None = None) -> dict[str, Any] | None:
    """The compiler's estimate for a step with loops, from loop-free compiles.

    XLA costs a loop body once, so a step with accum_steps > 1 or scan_layers is not timed by
    its own cost analysis. Layers are identical, so the loop-free micro-step (accum_steps=1,
    the micro-batch as the batch, layers unrolled: one micro-batch and the optimizer update) of
    N layers costs t(1) + (N - 1) * (t(2) - t(1)) by the estimates of 1- and 2-layer compiles
    (cheap, where N unrolled layers are not). The update alone (``update_seconds``) happens
    once a step, so a step of k micro-batches costs k * (micro - update) + update.

    Each t is the compile's instructions' estimated cycles at ``clock_hz``, the clock the step
    program's own estimate implies (``cycle_profile``), so both estimates count the same
    cycles and differ only in what unrolled layers compile to. Without it, each compile's
    corrected optimal_seconds, which tracks "bytes accessed": at tens of rows a device that
    figure is several times the cycles' (bert_base, 64 rows a v5e chip: 49 GB, 60 ms at HBM
    bandwidth, for a 2-layer program whose instructions add up to 13 ms).

    Returns:
      {"seconds" (the step), "micro" (one micro-step), "update", "per_layer", "micro_batch",
      "counted" (flops and bytes of the 2-layer compile), "compile_s", "clock_hz"}, or None
      when a compile did not fit or gave no estimate.
    """
    layers = config_lib.model_config(config).num_layers
    k = config.accum_steps
    micro_batch = config.global_batch_size // k
    full = with_changes(config, **{"accum_steps": 1, "global_batch_size": micro_batch,
                                   "model.scan_layers": False})
    seconds, t0 = {}, time.perf_counter()
    for n in (1, 2):
        result = compile_step(with_changes(full, **{"model.num_layers": n}), tgt.devices)
        if result.compiled is None:
            return None
        est = estimate_seconds(result.compiled)
        seconds[n] = _compiled_seconds(result.compiled, clock_hz)
        if seconds[n] is None or est["loops"]:
            return None
    counted = {"flops": est["flops"], "bytes": est["bytes"]}
    update = update_seconds(full, tgt, clock_hz)
    if update is None:
        return None
    per_layer = seconds[2] - seconds[1]
    micro = seconds[1] + (layers - 1) * per_layer
    return {"seconds": k * (micro - update) + update, "micro": micro, "update": update,
            "per_layer": per_layer, "micro_batch": micro_batch, "counted": counted,
            "compile_s": time.perf_counter() - t0, "clock_hz": clock_hz}


# --------------------------------------------------------------------------- collectives

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b([a-z0-9]+)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) ([a-z][a-z\-]*)\((.*)$")
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONDITION = re.compile(r"condition=%?([\w.\-]+)")
_CONSTANT = re.compile(r"^\s*%?([\w.\-]+) = s32\[\][^ ]* constant\((\d+)\)")
_LESS_THAN = re.compile(r"^\s*ROOT .* compare\(%?[\w.\-]+, %?([\w.\-]+)\), direction=LT")
_CALLS = re.compile(r"(?:body|condition|to_apply|calls|branch_computations)=\{?%?([\w.\-]+)")


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _DTYPE_BYTES:
            total += math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype]
    return total


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None and line.startswith(" "):
            comps[current].append(line)
    return comps, entry


def _trips(line: str, comps: dict[str, list[str]]) -> int | None:
    """The trip count of one while instruction: the backend's known_trip_count, else its
    condition's ``counter < constant`` (JAX's loops count up from 0), else None."""
    m = _KNOWN_TRIPS.search(line)
    if m:
        return int(m.group(1))
    cond = _CONDITION.search(line)
    body = comps.get(cond.group(1), []) if cond else []
    constants = dict(c.groups() for c in map(_CONSTANT.match, body) if c)
    for text in body:
        lt = _LESS_THAN.match(text)
        if lt and lt.group(1) in constants:
            return int(constants[lt.group(1)])
    return None


def loop_trips(hlo: str) -> list[int | None]:
    """The trip counts of the while loops in a compiled program (None: not known)."""
    comps, _ = _computations(hlo)
    return [_trips(line, comps) for lines in comps.values() for line in lines
            if " while(" in line]


def _multipliers(comps: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How many times each computation runs per step: while bodies by their trip count (1
    when unknown), everything else called from a computation as often as it."""
    times = {entry: 1}
    order = [entry]
    while order:
        name = order.pop()
        for line in comps.get(name, []):
            trips = (_trips(line, comps) or 1) if " while(" in line else 1
            for callee in _CALLS.findall(line):
                if callee in comps and callee not in times:
                    times[callee] = times[name] * trips
                    order.append(callee)
    return times


_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_FUSION_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_LAYOUT_OPS = ("copy", "transpose", "reshape", "broadcast", "bitcast", "slice", "pad",
               "concatenate", "dynamic-slice", "dynamic-update-slice", "convert")


def cycle_profile(hlo: str, seconds: float | None) -> dict[str, Any] | None:
    """The TPU compiler's per-instruction ``estimated_cycles`` (in each instruction's
    backend_config), with loops' trip counts applied: the step's estimate and what it is
    spent on.

    ``optimal_seconds`` (corrected, ``estimate_seconds``) equals the cycles of the program
    counted with each loop body once, at the chip's clock: their ratio gives the clock, and
    the trip-weighted cycles at that clock the step. Collectives carry no estimated_cycles, so
    neither figure includes communication.

    Returns:
      {"seconds", "clock_hz", "cycles" (trip-weighted), "shares" {kind: fraction of cycles},
      "collectives_costed"}, or
      None when the program has no estimates (CPU, GPU) or ``seconds`` is unknown.
    """
    comps, entry = _computations(hlo)
    times = _multipliers(comps, entry)
    matmul = {n for n, lines in comps.items()
              if any(" convolution(" in l or " dot(" in l for l in lines)}
    shares: dict[str, float] = {}
    once = weighted = 0
    collectives_costed = False
    for name, lines in comps.items():
        for line in lines:
            m = _CYCLES.search(line)
            ins = _INSTRUCTION.match(line)
            if not m or not ins:
                continue
            op = ins.group(2)
            if op.removesuffix("-start").removesuffix("-done") in COLLECTIVES:
                collectives_costed = True
                kind = "collectives"
            elif op == "fusion":
                called = _FUSION_CALLS.search(line)
                kind = ("matmul fusions" if called and called.group(1) in matmul else
                        "other fusions")
            elif op in ("convolution", "dot"):
                kind = "matmul fusions"
            elif op in _LAYOUT_OPS:
                kind = "copies and layout"
            else:
                kind = "other"
            cycles = int(m.group(1))
            once += cycles
            weighted += cycles * times.get(name, 1)
            shares[kind] = shares.get(kind, 0) + cycles * times.get(name, 1)
    if not once or not seconds:
        return None
    clock = once / seconds
    return {"seconds": weighted / clock, "clock_hz": clock, "cycles": weighted,
            "shares": {k: v / weighted for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
            "collectives_costed": collectives_costed}


def collectives(hlo: str) -> list[dict[str, Any]]:
    """The collectives of a compiled program: per kind, how many instructions, how many run
    per step (loops' trip counts applied) and the bytes they produce per device per step.

    Asynchronous pairs count once (the ``-done`` half, whose shape is the result)."""
    comps, entry = _computations(hlo)
    times = _multipliers(comps, entry)
    found: dict[str, dict[str, Any]] = {}
    for name, lines in comps.items():
        for line in lines:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            shape, op = m.group(1), m.group(2)
            kind = op.removesuffix("-done")
            if kind not in COLLECTIVES or op.endswith("-start"):
                continue
            row = found.setdefault(kind, {"kind": kind, "ops": 0, "per_step": 0, "bytes": 0})
            n = times.get(name, 1)
            row["ops"] += 1
            row["per_step"] += n
            row["bytes"] += n * _shape_bytes(shape)
    return sorted(found.values(), key=lambda r: -r["bytes"])


# --------------------------------------------------------------------------- the plan

@dataclasses.dataclass
class Plan:
    target: Target
    first: Compiled
    trials: list[Trial]
    model_flops: dict[str, float]
    time: dict[str, Any]
    collectives: list[dict[str, Any]]
    micro: dict[str, Any] | None = None  # micro_estimate, for steps with loops

    def seconds(self) -> float | None:
        """The compiler's estimate of one step: optimal_seconds for a loop-free step, else the
        trip-weighted cycles (``cycle_profile``), else ``micro_estimate``'s."""
        if self.time.get("seconds") and not self.time.get("loops"):
            return self.time["seconds"]
        if self.time.get("cycles"):
            return self.time["cycles"]["seconds"]
        return self.micro["seconds"] if self.micro else None

    @property
    def fits(self) -> bool:
        return self.first.fits(self.target.capacity_bytes)

    def mfu(self) -> float | None:
        """Model FLOPs over the chips' peak in the compiler's step time (``seconds``)."""
        return self.mfu_at(self.seconds())

    def mfu_at(self, seconds: float | None) -> float | None:
        """Model FLOPs over the chips' peak in ``seconds`` a step."""
        peak = self.target.peak_flops
        if not seconds or seconds <= 0 or not peak:
            return None
        return self.model_flops["total"] / (seconds * peak * len(self.target.devices))


def make_plan(config: Any, tgt: Target, search: bool = True, max_tries: int = 8,
              first: Compiled | None = None, estimate: bool = False) -> Plan:
    """Compiles the step for ``tgt`` (unless ``first`` is that compile already); when it does
    not fit (and ``search``), tries the knobs; when the step has loops and a time estimate
    (and ``estimate``), adds ``micro_estimate`` as a second estimate of the step time."""
    first = compile_step(config, tgt.devices) if first is None else first
    trials = []
    if search and not first.fits(tgt.capacity_bytes):
        trials = search_knobs(config, tgt, first, max_tries)
    time_ = estimate_seconds(first.compiled) if first.compiled is not None else {}
    colls = collectives(first.compiled.as_text()) if first.compiled is not None else []
    micro = None  # a cross-check of cycle_profile's step time; costs three compiles
    if estimate and time_.get("seconds") and time_["loops"]:
        clock = (time_.get("cycles") or {}).get("clock_hz")
        micro = micro_estimate(config, tgt, clock)
    return Plan(tgt, first, trials, flops_lib.pretraining_flops(config), time_, colls, micro)


def gib(x: float | None) -> str:
    """Bytes as GiB with two decimals ("?" when unknown): the plan's and the search's tables."""
    return "?" if x is None else f"{x / GIB:.2f}"


def duration(seconds: float) -> str:
    """A step time in ms below a second, else in s."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def si(x: float) -> str:
    """A number with an SI prefix and a trailing space for the unit ("19.91 G")."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def verdict(plan: Plan) -> str:
    """The one line that says whether the step fits, and what to turn when it does not."""
    cap, first = plan.target.capacity_bytes, plan.first
    if first.fits(cap):
        if cap is None:
            return "verdict: compiled; no memory capacity known for this device to compare with"
        return f"verdict: fits with {gib(cap - first.total_bytes())} GiB spare per device"
    need = first.total_bytes()
    over = (f"needs {gib(need)} GiB of {gib(cap)}" if need is not None and cap else
            "the compiler refused it")
    fixes = [f"--config.{t.knob}={t.value}" + (" --config.mesh.data=-1"
                                              if t.knob == "mesh.fsdp" else "")
             + f" ({gib(t.result.total_bytes())} GiB)"
             for t in plan.trials if t.result is not None and t.result.fits(cap)]
    if fixes:
        return f"verdict: does not fit ({over}); fits with " + " or ".join(fixes)
    tried = ", ".join(f"{t.knob}={t.value}" for t in plan.trials) or "nothing"
    return (f"verdict: does not fit ({over}); no single knob tried fits (tried {tried}): "
            "combine them, shorten sequences, or use a larger slice")


def format_plan(plan: Plan, config_name: str = "") -> str:
    """The plan as the command prints it."""
    t, first = plan.target, plan.first
    mesh = " ".join(f"{k}={v}" for k, v in first.mesh_shape.items())
    lines = [f"plan: {config_name} on {t.name}: {len(t.devices)} x {t.kind} "
             f"({t.chips} chips, {t.hosts} hosts), mesh {mesh}, accum_steps "
             f"{first.config.accum_steps}, remat {first.config.model.remat}, "
             f"{first.config.model.preset} {first.config.model.dtype}",
             f"compiled in {first.compile_s:.1f} s"
             + (" (refused: out of memory)" if first.oom else ""),
             "memory per device (GiB):"]
    for name, b in (first.sizes or {}).items():
        lines.append(f"  {name:<22}{gib(b):>9}   (from the shardings)")
    if first.memory is not None:
        m = first.memory
        for name, b in (("arguments", m["argument"]), ("outputs not aliased",
                                                       m["output"] - m["alias"]),
                        ("temporaries", m["temp"]), ("program", m["generated_code"])):
            lines.append(f"  {name:<22}{gib(b):>9}   (compiler)")
    lines.append(f"  {'total':<22}{gib(first.total_bytes()):>9}   of {gib(t.capacity_bytes)} "
                 f"({t.capacity_source})")
    if first.oom:
        lines.append(f"  compiler: {first.oom[:300]}")
    lines.append("  " + train.memory_line(first.memory))
    lines.append(verdict(plan))
    for tr in plan.trials:
        r = tr.result
        state = (tr.note if r is None else "fits" if r.fits(t.capacity_bytes) else
                 "does not fit")
        size = ("" if r is None else
                f", {gib(r.total_bytes())} GiB, compiled in {r.compile_s:.1f} s")
        lines.append(f"  tried {tr.knob}={tr.value}: {state}{size}")
    f = plan.model_flops
    lines.append(f"model FLOPs per step: {si(f['total'])}FLOP ({si(f['total'] / len(t.devices))}"
                 "FLOP per device)")
    tm = plan.time
    if tm.get("raw") is None:
        lines.append("compiler's time estimate: none (this backend's cost analysis has none)")
    elif tm.get("seconds") is None:
        lines.append(f"compiler's time estimate: unusable (optimal_seconds {tm['raw']:.4g})")
    else:
        head = (f"compiler's time estimate: {tm['seconds'] * 1e3:.2f} ms (optimal_seconds "
                f"{tm['raw']:.4g} + {tm['custom_calls']} ConcatBitcast/X64Combine custom-calls costed "
                "at -1 s each)")
        cy = tm.get("cycles")
        if tm["loops"]:
            lines.append(head + f"; the step has loops (trip counts {tm['loops']}) whose bodies "
                         "it counts once: not a step time")
            if cy:
                mfu = plan.mfu()
                lines.append(f"  estimated_cycles with the loops' trips: {cy['seconds']:.3f} s a "
                             f"step at the {cy['clock_hz'] / 1e9:.2f} GHz that optimal_seconds "
                             "implies" + (f", implied MFU {100 * mfu:.1f}% of {t.kind}'s bf16 "
                                          "peak" if mfu else ""))
            mi = plan.micro
            if mi:
                lines.append(
                    f"  from loop-free compiles"
                    + (f" (their cycles at {mi['clock_hz'] / 1e9:.2f} GHz)" if mi.get("clock_hz")
                       else "")
                    + f": one micro-batch of {mi['micro_batch']} with the update {mi['micro'] * 1e3:.2f} ms ({mi['per_layer'] * 1e3:.2f} ms a "
                    f"layer, from 1- and 2-layer compiles), the optimizer update alone "
                    f"{mi['update'] * 1e3:.2f} ms; a step of {first.config.accum_steps}: "
                    f"{mi['seconds']:.3f} s"
                    + (f", implied MFU {100 * plan.mfu_at(mi['seconds']):.1f}%"
                       if plan.mfu_at(mi["seconds"]) else "")
                    + f" (compiled in {mi['compile_s']:.0f} s)")
        else:
            mfu = plan.mfu()
            lines.append(head + (f"; implied MFU {100 * mfu:.1f}% of {t.kind}'s bf16 peak"
                                 if mfu is not None else "; no datasheet peak for an MFU"))
        if cy:
            lines.append("  spent on (cycles, loops' trips applied): " + ", ".join(
                f"{k} {100 * v:.0f}%" for k, v in cy["shares"].items() if v >= 0.005)
                + ("" if cy["collectives_costed"] else "; collectives carry no estimate"))
        counted = (tm if not tm["loops"] else
                   {**plan.micro["counted"], "what": "the 2-layer micro-step"} if plan.micro
                   else {})
        if t.peak_flops and t.hbm_bytes_per_s and counted.get("flops") and counted.get("bytes"):
            lines.append(f"  counted per device in {counted.get('what', 'the step')}: "
                         f"{si(counted['flops'])}FLOP, {si(counted['bytes'])}B accessed: "
                         f"{counted['flops'] / t.peak_flops * 1e3:.2f} ms at peak FLOP/s, "
                         f"{counted['bytes'] / t.hbm_bytes_per_s * 1e3:.2f} ms at HBM "
                         "bandwidth")
    if first.compiled is not None:
        if plan.collectives:
            lines.append("collectives per step (bytes produced per device):")
            for c in plan.collectives:
                lines.append(f"  {c['kind']:<20}{c['per_step']:>6} x ({c['ops']} in the "
                             f"program)  {si(c['bytes'])}B")
        else:
            lines.append("collectives: none")
    return "\n".join(lines)


MARKDOWN_HEADER = ("| run | slice | mesh (data×fsdp×tensor), accum | per device: params + opt. "
                   "state / total of HBM (GiB) | fits? | compiler's step estimate; where its "
                   "cycles go | collectives "
                   "per step (bytes per device) | compile |\n|---|---|---|---|---|---|---|---|")


def markdown_row(plan: Plan, config_name: str = "") -> str:
    """One row of docs/plan.md's table (MARKDOWN_HEADER)."""
    t, first = plan.target, plan.first
    m = first.mesh_shape
    sizes = first.sizes or {}
    state = sizes.get("parameters", 0) + sizes.get("optimizer state", 0)
    fit = ("yes" if plan.fits else "no") + (
        f" ({gib(t.capacity_bytes - first.total_bytes())} spare)" if plan.fits and
        t.capacity_bytes and first.total_bytes() is not None else "")
    if not plan.fits:
        fixes = [f"{tr.knob}={tr.value}" for tr in plan.trials
                 if tr.result is not None and tr.result.fits(t.capacity_bytes)]
        fit += f"; fits with {' or '.join(fixes)}" if fixes else ""
    def timed(secs: float) -> str:
        mfu = plan.mfu_at(secs)
        return duration(secs) + (f" (MFU {100 * mfu:.0f}%)" if mfu is not None else "")

    tm, cy = plan.time, plan.time.get("cycles")
    parts = []
    if tm.get("seconds") and not tm.get("loops"):
        parts.append(timed(tm["seconds"]))
    elif cy:
        parts.append(f"program's cycles: {timed(cy['seconds'])}")
    if plan.micro:
        parts.append(f"loop-free compiles: {timed(plan.micro['seconds'])}")
    if cy:
        parts.append(", ".join(f"{k} {100 * v:.0f}%" for k, v in list(cy["shares"].items())[:2]))
    est = "; ".join(parts) or "—"
    colls = ", ".join(f"{c['kind']} {c['per_step']}× {si(c['bytes'])}B"
                      for c in plan.collectives[:2]) or "none"
    label = config_name.replace("--config=configs/", "").replace("--config.", "")
    return (f"| `{label}` | {t.name} | {m['data']}×{m['fsdp']}×{m['tensor']}, "
            f"{first.config.accum_steps} | {gib(state)} / {gib(first.total_bytes())} of "
            f"{gib(t.capacity_bytes)} | {fit} | {est} | {colls} | {first.compile_s:.0f} s |")
