"""Parameters from a checkpoint into a model of the same sizes, whatever its layer layout.

An encoder is stored either per layer (``bert/layer_0`` ... ``layer_{n-1}``) or, with
``model.scan_layers``, stacked on a leading axis (``bert/layers/stack/layer``). ``restore``
reads a checkpoint's parameters in the layout they were saved in, each shard straight into the
current mesh, and converts to the layout of the model being built, so a phase-2 run, a
fine-tuning or an export may use the other layout than the run that wrote the checkpoint.

This module never imports TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import rundir


def saved_params(state_dir: Any) -> Any:
    """The tree of parameter metadata (shapes) in a checkpoint's ``state`` item.

    Read by the item's own handler: a checkpointer would also look for step metadata inside
    the item (``state/_CHECKPOINT_METADATA``, which a step keeps one level up) and warn that
    it is missing."""
    import orbax.checkpoint as ocp
    from etils import epath

    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.metadata(epath.Path(rundir.absolute(state_dir)))["params"]
    finally:
        handler.close()


def check_shapes(saved: Any, params: Any, where: str) -> None:
    """Refuses a checkpoint whose parameters differ in name or shape, naming the first one.

    Args:
      saved: ``saved_params`` of the checkpoint.
      params: the parameters (arrays or shapes) to be read from it.
      where: the checkpoint, for the message.
    """
    saved_flat = {jax.tree_util.keystr(k): v.shape
                  for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        got = saved_flat.get(name)
        if got is None or tuple(got) != tuple(x.shape):
            raise config_lib.ConfigError(
                f"config.init_from={where}: parameter {name} is "
                f"{'missing' if got is None else tuple(got)} there but {tuple(x.shape)} in this "
                "model; use a checkpoint of the same model sizes and vocab_size (or set "
                "config.model to match it)")


def _num_layers(bert: dict) -> int:
    return sum(k.startswith("layer_") for k in bert)


def _respec(sharding: NamedSharding, stacked: bool) -> NamedSharding:
    """One layer's sharding -> the stacked one (layers axis replicated), or back."""
    spec = tuple(sharding.spec)
    return NamedSharding(sharding.mesh, PartitionSpec(*((None,) + spec if stacked else spec[1:])))


def _saved_layout(bert_abs: dict, bert_sh: dict, saved_bert: dict):
    """(shapes, shardings, convert) for reading the encoder in the layout it was saved in;
    convert is None when that is the model's own layout."""
    scanned_there, scanned_here = "layers" in saved_bert, "layers" in bert_abs
    if scanned_there == scanned_here:
        return bert_abs, bert_sh, None
    rest = {k: v for k, v in bert_sh.items() if k != "layers" and not k.startswith("layer_")}
    if scanned_there:  # saved stacked, this model per layer
        n = _num_layers(bert_abs)
        load_abs = jax.eval_shape(functools.partial(model_lib.stack_layers, num_layers=n),
                                  bert_abs)
        stacked = jax.tree.map(lambda s: _respec(s, True), bert_sh["layer_0"])
        return load_abs, {**rest, "layers": {"stack": {"layer": stacked}}}, \
            model_lib.unstack_layers
    load_abs = jax.eval_shape(model_lib.unstack_layers, bert_abs)
    one = jax.tree.map(lambda s: _respec(s, False), bert_sh["layers"]["stack"]["layer"])
    n = _num_layers(load_abs)
    return load_abs, {**rest, **{f"layer_{i}": one for i in range(n)}}, \
        functools.partial(model_lib.stack_layers, num_layers=n)


def restore(state_dir: Any, params: Any, shardings: Any, where: str) -> Any:
    """Reads the checkpoint's values of ``params``' entries into ``shardings``.

    Args:
      state_dir: a checkpoint step's ``state`` directory.
      params: the parameters to fill (a whole model's, or a subtree such as {"bert": ...});
        only their names and shapes are used.
      shardings: their shardings on the current mesh.
      where: the checkpoint, for messages.

    Returns:
      The restored parameters, in ``params``' layout and ``shardings``.

    Raises:
      config_lib.ConfigError: a parameter is missing there or has another shape.
    """
    import orbax.checkpoint as ocp

    state_dir = rundir.absolute(state_dir)
    saved = saved_params(state_dir)
    load, load_sh, convert = dict(params), dict(shardings), None
    if "bert" in params and isinstance(saved.get("bert"), dict):
        load["bert"], load_sh["bert"], convert = _saved_layout(params["bert"], shardings["bert"],
                                                               saved["bert"])
    check_shapes(saved, load, where)
    target = {"params": ckpt_lib.abstract_like(load, load_sh)}
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))["params"]
    if convert is not None:
        restored["bert"] = jax.jit(convert, out_shardings=shardings["bert"])(restored["bert"])
    return restored
