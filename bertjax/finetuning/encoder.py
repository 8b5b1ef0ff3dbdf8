"""The encoder a fine-tuning or an embedding starts from: its sizes and the mesh it runs on.

  * sizes: those of ``config.init_from`` (bertjax.rundir reads an import's model_config.json or
    the run config a pre-training or fine-tuning saved with its checkpoints), with this run's
    dropout and numerics; ``with_model`` writes them into the config saved with the fine-tuned
    checkpoint, so it describes the model completely;
  * mesh: the shared checks (bertjax.config.check_mesh) with this job's process count.

The state is born sharded and the encoder's weights are read by the kit (bertjax.train:
``create_train_state`` with ``task_inputs``, ``restore_params(..., subtree="bert")``); the
pre-training heads of the source are not read, the task head stays fresh.

TensorFlow is not imported here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import rundir
from bertjax import sharding

MODEL_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings", "type_vocab_size", "hidden_act", "dtype", "param_dtype",
              "attention_impl", "hidden_dropout", "attention_dropout")


def model_config_for(config: Any) -> model_lib.BertConfig:
    """The encoder's sizes: those of ``init_from`` (any run kind, or one step of a run), with
    this config's dropout and numerics; ``config.model`` when training from scratch."""
    if not config.init_from:
        return config_lib.model_config(config)
    cfg = rundir.resolve(config.init_from).model_config()
    m = config.model
    return dataclasses.replace(cfg, hidden_dropout=m.hidden_dropout,
                               attention_dropout=m.attention_dropout, dtype=m.dtype,
                               attention_impl=m.attention_impl)


def check_mesh(config: Any, cfg: model_lib.BertConfig) -> Mesh:
    """The mesh, with batch divisibility and model fit checked, each failure one line."""
    shape = config_lib.check_mesh(config, cfg, jax.device_count(), multihost.process_count())
    return sharding.make_mesh(*shape)


def with_model(config: Any, cfg: model_lib.BertConfig) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose ``model`` holds the encoder's exact sizes (preset "custom"),
    for the config saved with the fine-tuned checkpoint (eval_only and the scratch baseline)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.model.preset = "custom"
    for key in MODEL_KEYS:
        out.model[key] = getattr(cfg, key)
    return out
