"""The encoder a fine-tuning starts from: its sizes, its state born sharded, its weights.

  * sizes: those of ``config.init_from`` (an import's model_config.json, or the run config a
    pre-training saved with its checkpoints), with the fine-tuning's dropout and numerics;
    ``record_model`` writes them into the config saved with the fine-tuned checkpoint;
  * state: any task model (BertModel named ``bert`` plus a head) is created on the mesh by the
    same logical rules as pre-training (eval_shape -> logical specs -> jit with out_shardings),
    so full parameters never gather on one device;
  * weights: the ``bert`` subtree of a workdir's latest checkpoint restored into the shardings
    of the current mesh; the pre-training heads are not read, the task head stays fresh.

TensorFlow is not imported here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import params_io
from bertjax import sharding
from bertjax import train
from bertjax.tasks import features


def create_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                 rules: tuple, seed: int, seq_len: int) -> tuple[train.TrainState, Any]:
    """The train state born sharded (eval_shape -> logical specs -> jit with out_shardings)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    boxed = jax.eval_shape(lambda r: model.init({"params": r}, ids, ids, ids)["params"],
                           jax.random.PRNGKey(0))
    params_abs = nn.meta.unbox(boxed)
    params_sh = sharding.tree_shardings(params_abs, sharding.logical_specs(boxed), mesh, rules)
    opt_sh = sharding.like_params_shardings(jax.eval_shape(tx.init, params_abs),
                                            jax.tree.structure(params_abs), params_sh, mesh)
    repl = sharding.replicated(mesh)
    shardings = train.TrainState(step=repl, params=params_sh, opt_state=opt_sh, rng=repl,
                                 bad_streak=repl)

    def init(key):
        init_key, run_key = jax.random.split(key)
        params = nn.meta.unbox(model.init({"params": init_key}, ids, ids, ids)["params"])
        return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=tx.init(params), rng=run_key,
                                bad_streak=jnp.zeros((), jnp.int32))

    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed)), shardings


def restore_encoder(path: str, state: train.TrainState, shardings: Any) -> train.TrainState:
    """Replaces the encoder ("bert") parameters with those of a bertjax workdir's latest step;
    the pre-training heads there (MLM, NSP) are not read, the classifier head stays fresh."""
    root = os.path.join(path, "checkpoints") if os.path.isdir(
        os.path.join(path, "checkpoints")) else path
    steps = sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []
    step_dir = path if os.path.isdir(os.path.join(path, "state")) else (
        os.path.join(root, str(steps[-1])) if steps else "")
    if not step_dir:
        raise config_lib.ConfigError(f"config.init_from={path!r} holds no bertjax checkpoint; "
                                     "give a pre-training workdir (or one of its "
                                     "checkpoints/N) or an import")
    # Either encoder layout (per layer or scan_layers) is read into this model's.
    restored = params_io.restore(os.path.abspath(os.path.join(step_dir, "state")),
                                 {"bert": state.params["bert"]},
                                 {"bert": shardings.params["bert"]}, step_dir)
    logging.info("encoder initialised from %s", step_dir)
    return state.replace(params={**state.params, "bert": restored["bert"]})


def model_config_for(config: Any) -> model_lib.BertConfig:
    """The encoder's sizes: those of ``init_from`` (pre-training run or import), with this
    config's dropout and numerics; ``config.model`` when training from scratch."""
    if not config.init_from:
        return config_lib.model_config(config)
    from bertjax import convert_io  # model_config.json of imports

    try:
        if os.path.exists(os.path.join(config.init_from, convert_io.MODEL_CONFIG)):
            cfg = convert_io.workdir_model_config(config.init_from, None)
        else:
            saved = features.latest_saved_config(config.init_from)
            if saved is None:
                raise config_lib.ConfigError(
                    f"config.init_from={config.init_from!r} holds no checkpoint with a saved "
                    "config; give a pre-training workdir (or one of its checkpoints/N) or an "
                    "import")
            # Over today's defaults: runs saved before a model key existed lack it.
            full = config_lib.base_config()
            full.model.update(saved.get("model", {}))
            cfg = config_lib.model_config(full)
    except convert_io.ConvertError as e:
        raise config_lib.ConfigError(f"config.init_from: {e}") from None
    m = config.model
    return dataclasses.replace(cfg, hidden_dropout=m.hidden_dropout,
                               attention_dropout=m.attention_dropout, dtype=m.dtype,
                               attention_impl=m.attention_impl)


def check_mesh(config: Any, cfg: model_lib.BertConfig) -> Mesh:
    """The mesh, with batch divisibility and model fit checked, each failure one line."""
    try:
        shape = sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                    jax.device_count())
    except sharding.MeshError as e:
        raise config_lib.ConfigError(str(e)) from None
    mesh = sharding.make_mesh(*shape)
    split = sharding.batch_parallelism(mesh, tuple(tuple(r) for r in config.sharding.rules))
    for key in ("global_batch_size", "eval_batch_size"):
        if config[key] < 1 or config[key] % split or config[key] % jax.process_count():
            raise config_lib.ConfigError(
                f"config.{key}={config[key]} is not a positive multiple of the batch-parallel "
                f"devices ({split}) and processes ({jax.process_count()}); use a multiple of "
                f"{math.lcm(split, jax.process_count())}")
    if cfg.num_heads % shape[2]:
        raise config_lib.ConfigError(f"model heads={cfg.num_heads} are not divisible by "
                                     f"config.mesh.tensor={shape[2]}")
    if config.max_seq_length > cfg.max_position_embeddings or config.max_seq_length < 8:
        raise config_lib.ConfigError(
            f"config.max_seq_length={config.max_seq_length}; expected 8.."
            f"{cfg.max_position_embeddings} (the model's positions)")
    return mesh


def record_model(config: Any, cfg: model_lib.BertConfig) -> None:
    """Writes the encoder's exact sizes into ``config.model`` so the config saved with the
    fine-tuned checkpoint describes it completely (eval_only and the scratch baseline)."""
    m = config.model
    with config.unlocked():
        m.preset = "custom"
        for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
                    "max_position_embeddings", "type_vocab_size", "hidden_act", "dtype",
                    "param_dtype", "attention_impl", "hidden_dropout", "attention_dropout"):
            m[key] = getattr(cfg, key)
