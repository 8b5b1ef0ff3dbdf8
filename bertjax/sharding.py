"""The device mesh and the mapping from logical axis names to mesh axes.

This is the only module that knows the mesh axis names (data, fsdp, tensor). The model names
its parameter and activation axes logically; the rules that map those names onto mesh axes come
from the run config (``config.sharding.rules``), in the style of t5x / MaxText.

A logical axis is only split over a mesh axis when the dimension divides evenly by the mesh
axis size and the mesh axis is not already used by another dimension of the same array; otherwise
that dimension stays replicated. So vocab=30522 on tensor=4 replicates the vocabulary dimension
rather than failing, and a batch of 1 on a data axis of 2 still runs. ``tree_shardings`` logs
each parameter a rule could not shard as asked, once per process (a warning when the dimension
does not divide, info when the mesh axis went to another dimension of the same array).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]

# Default rules: batch over data and fsdp, weights' embed axis over fsdp (ZeRO-3 style), heads,
# mlp and vocab over tensor (Megatron style). Configs may replace them.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("pos", None),
    ("type", None),
    ("norm", None),
    ("classes", None),
    ("layers", None),  # the stacked axis of model.scan_layers: every device holds all layers
)


class MeshError(ValueError):
    """The requested mesh does not fit the devices."""


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves a (data, fsdp, tensor) request with at most one -1 against a device count."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshError(f"mesh={tuple(sizes)} has more than one -1; at most one axis may be "
                        "inferred from the device count")
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"mesh={tuple(sizes)} has a size < 1; use positive sizes or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(f"mesh={tuple(sizes)}: {num_devices} devices are not divisible by "
                            f"the fixed axes' product {known}; change config.mesh")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(f"mesh data×fsdp×tensor={sizes[0]}×{sizes[1]}×{sizes[2]}="
                        f"{math.prod(sizes)} but {num_devices} devices are present; set "
                        "config.mesh so the product equals the device count (or use -1)")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a Mesh with axes (data, fsdp, tensor) with Auto axis types.

    Args:
      data, fsdp, tensor: axis sizes; one may be -1 to take the remaining devices.
      devices: defaults to all global devices.

    Returns:
      The mesh. Devices are laid out by jax's mesh_utils so the tensor axis (the most
      communication-hungry) sits on the closest devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    try:
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # fake CPU devices or odd topologies: a plain reshape is as good
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _mesh_axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    raise KeyError(f"logical axis {name!r} has no rule; add it to config.sharding.rules")


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules) -> P:
    """Maps logical axis names of one array to a mesh PartitionSpec (see module docstring)."""
    return _resolve(names, shape, mesh, rules)[0]


def _resolve(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
             rules: Rules) -> tuple[P, list[tuple[bool, str]]]:
    """``logical_to_spec``, and why each mesh axis a rule named was not used, as (uneven, why):
    uneven when the dimension does not divide by it, else the axis is taken by an earlier
    dimension. A mesh axis of size 1 splits nothing and is not counted."""
    used: set[str] = set()
    out = []
    skipped: list[tuple[bool, str]] = []
    for name, dim in zip(names, shape):
        axes = []
        size = 1
        for axis in _mesh_axes_for(name, rules):
            n = mesh.shape[axis]
            if n == 1:
                continue
            if axis in used:
                skipped.append((False, f"{name}: mesh axis {axis} already splits another "
                                       "dimension"))
            elif dim % (size * n):
                skipped.append((True, f"{name}: dimension {dim} does not divide by mesh axis "
                                      f"{axis}={n}" + (f" after {'×'.join(axes)}={size}"
                                                       if axes else "")))
            else:
                axes.append(axis)
                size *= n
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while out and out[-1] is None:
        out.pop()
    return P(*out), skipped


# (parameter path, reason) pairs already logged by this process: tree_shardings runs several
# times per program (train state, evaluation, restore) and says each once.
_LOGGED_FALLBACKS: set[tuple[str, str]] = set()


def _log_fallback(path: str, shape: Sequence[int], names: Sequence[str | None], spec: P,
                  skipped: list[tuple[bool, str]]) -> None:
    reason = "; ".join(why for _, why in skipped)
    if (path, reason) in _LOGGED_FALLBACKS:
        return
    _LOGGED_FALLBACKS.add((path, reason))
    level = logging.WARNING if any(uneven for uneven, _ in skipped) else logging.INFO
    logging.getLogger(__name__).log(
        level, "sharding: %s %s, logical axes %s, falls back to replication (%s); sharded as "
        "%s", path, tuple(shape), tuple(names), reason, tuple(spec))


# The mesh and rules that activation constraints resolve against while a function is traced.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "bertjax_active_mesh", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within this context, ``constrain`` pins activations to the mesh by the rules."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation by logical names; a no-op outside ``activation_rules``."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(names, x.shape, mesh, rules)
    inner = jax.sharding.get_abstract_mesh()
    if not inner.empty and inner.manual_axes:  # inside a shard_map: its mesh, manual axes marked
        return jax.lax.with_sharding_constraint(x, NamedSharding(inner, spec))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def logical_specs(boxed_tree: Any) -> Any:
    """The tree of logical PartitionSpecs of a tree of flax LogicallyPartitioned boxes."""
    return nn.get_partition_spec(boxed_tree)


def tree_shardings(abstract_tree: Any, logical_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of ShapeDtypeStructs given the matching logical specs.

    A parameter that a rule could not split as asked (see ``_resolve``) is logged once per
    process, naming its path, shape, logical axes and why."""
    def one(path, x, spec):
        names = tuple(spec)
        resolved, skipped = _resolve(names, x.shape, mesh, rules)
        if skipped:
            _log_fallback(_path_str(path), x.shape, names, resolved, skipped)
        return NamedSharding(mesh, resolved)
    return jax.tree_util.tree_map_with_path(one, abstract_tree, logical_tree,
                                            is_leaf=lambda s: isinstance(s, P))


def _path_str(path: Sequence[Any]) -> str:
    """params/bert/layer_0/attention/query/kernel for a tree path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def like_params_shardings(tree: Any, params_treedef: Any, params_shardings: Any,
                          mesh: Mesh) -> Any:
    """Shardings for an optimizer state: param-shaped subtrees follow the params, the rest
    (step counts, scalars) is replicated."""
    replicated = NamedSharding(mesh, P())

    def one(node):
        if jax.tree.structure(node) == params_treedef:
            return params_shardings
        return replicated

    return jax.tree.map(one, tree, is_leaf=lambda n: jax.tree.structure(n) == params_treedef)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int, batch_size: int) -> NamedSharding:
    """Sharding of a batch array: dimension 0 by the act_batch rule, the rest replicated."""
    spec = logical_to_spec(("act_batch",) + (None,) * (ndim - 1), (batch_size,) + (1,) * (ndim - 1),
                           mesh, rules)
    return NamedSharding(mesh, spec)


def batch_parallelism(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split by the act_batch rule."""
    return math.prod(mesh.shape[a] for a in _mesh_axes_for("act_batch", rules))


def batch_axes(mesh: Mesh, rules: Rules, batch_size: int) -> tuple[str, ...]:
    """The mesh axes a batch dimension of ``batch_size`` rows is split over by the act_batch
    rule (those that divide it, as ``logical_to_spec`` resolves them): the axes a
    data-parallel reduction crosses."""
    spec = logical_to_spec(("act_batch",), (batch_size,), mesh, rules)
    if not spec or spec[0] is None:
        return ()
    return (spec[0],) if isinstance(spec[0], str) else tuple(spec[0])


def without_mesh_axes(rules: Rules, axes: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """``rules`` with the mesh axes ``axes`` taken out of every mapping: the rules inside a
    function that is manual over those axes (shard_map), where only the others may be named."""
    out = []
    for logical, mesh_axes in rules:
        kept = tuple(a for a in ((mesh_axes,) if isinstance(mesh_axes, str) else
                                 (mesh_axes or ())) if a not in axes)
        out.append((logical, None if not kept else kept[0] if len(kept) == 1 else kept))
    return tuple(out)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
