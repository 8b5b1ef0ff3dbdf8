"""Original TensorFlow BERT checkpoints (google-research/bert) -> HF-named numpy tensors.

The google-research/bert variable names are derived from ``mapping.param_mapping`` (the one
mapping table), so the HF and TF import paths cannot drift apart. TensorFlow is imported only
inside ``load_tf_checkpoint``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from bertjax import model as model_lib
from bertjax.interop.mapping import param_mapping

# Variables a google-research/bert checkpoint carries besides the weights: optimizer slots and
# bookkeeping. Skipped, and listed as ignored.
_TF_SLOT_SUFFIXES = ("/adam_m", "/adam_v", "/Adam", "/Adam_1", "/Momentum", "/lamb_m", "/lamb_v")
_TF_BOOKKEEPING = ("global_step", "good_steps", "loss_scale", "current_loss_scale")


def tf_name_table(cfg: model_lib.BertConfig) -> dict[str, tuple[str, bool]]:
    """google-research/bert variable name -> (HF name, transpose), derived from ``param_mapping``.

    TF Dense kernels are [in, out], the transpose of a torch Linear weight; embedding tables and
    ``cls/seq_relationship/output_weights`` ([2, D], a plain matmul with transpose_b) are stored
    as torch stores them. LayerNorm's weight/bias are gamma/beta. The MLM decoder has no TF
    variable of its own (it is the word-embedding table there too).
    """
    special = {"cls.predictions.bias": "cls/predictions/output_bias",
               "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
               "cls.seq_relationship.bias": "cls/seq_relationship/output_bias"}
    table = {}
    for row in param_mapping(cfg):
        hf = row.hf_name
        if hf.startswith("cls.predictions.decoder."):
            continue
        if hf in special:
            table[special[hf]] = (hf, False)
            continue
        base, leaf = hf.rsplit(".", 1)
        base = re.sub(r"\.layer\.(\d+)", r".layer_\1", base).replace(".", "/")
        if base.endswith("LayerNorm"):
            table[f"{base}/{'gamma' if leaf == 'weight' else 'beta'}"] = (hf, False)
        elif base.endswith("embeddings"):
            table[base] = (hf, False)
        else:
            table[f"{base}/{'kernel' if leaf == 'weight' else 'bias'}"] = (hf, row.transform.transpose)
    return table


def tf_to_hf_tensors(tensors: Mapping[str, np.ndarray], cfg: model_lib.BertConfig
                     ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renames google-research/bert variables to HF names (transposing Dense kernels).

    Args:
      tensors: {TF variable name: numpy array} as read from the checkpoint.
      cfg: the model config (from bert_config.json).

    Returns:
      (hf_tensors, ignored): variables that are neither weights nor optimizer state keep their
      TF name in hf_tensors, so ``params_from_hf`` reports them as unused; ignored lists the
      optimizer slots and bookkeeping variables that were skipped.

    Raises:
      ValueError: a tensor's shape differs from the one ``cfg`` implies (naming the tensor).
    """
    table = tf_name_table(cfg)
    shapes = {r.hf_name: r.transform.hf_shape for r in param_mapping(cfg)}
    out, ignored = {}, []
    for name in sorted(tensors):
        x = np.asarray(tensors[name])
        if name.endswith(_TF_SLOT_SUFFIXES) or name in _TF_BOOKKEEPING:
            ignored.append(name)
        elif name in table:
            hf, transpose = table[name]
            want = shapes[hf][::-1] if transpose else shapes[hf]
            if tuple(x.shape) != tuple(want):
                raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(x.shape)}, "
                                 f"expected {tuple(want)} with this config (check bert_config.json)")
            out[hf] = np.ascontiguousarray(x.T) if transpose else x
        else:
            out[name] = x
    return out, ignored


def load_tf_checkpoint(directory: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads a google-research/bert directory: bert_config.json and a TF checkpoint.

    TensorFlow is imported here and nowhere else in the conversion path.

    Args:
      directory: holds bert_config.json (or config.json) and one checkpoint (``*.index`` +
        ``*.data-*``; the ``checkpoint`` file picks one when there are several).

    Returns:
      (config dict, {TF variable name: numpy array}).

    Raises:
      FileNotFoundError: the config or the checkpoint is missing (one line naming them).
      ValueError: TensorFlow cannot read the checkpoint (a .data-* file missing or truncated).
    """
    for name in ("bert_config.json", "config.json"):
        config_path = os.path.join(directory, name)
        if os.path.isfile(config_path):
            break
    else:
        raise FileNotFoundError(f"{directory} has no bert_config.json; a google-research/bert "
                                "checkpoint directory holds bert_config.json and model.ckpt.*")
    with open(config_path) as f:
        config = json.load(f)
    indexes = sorted(n[: -len(".index")] for n in os.listdir(directory) if n.endswith(".index"))
    if not indexes:
        raise FileNotFoundError(f"{directory} has no TF checkpoint (*.index and *.data-*); "
                                "expected e.g. bert_model.ckpt.index")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = importlib.import_module("tensorflow")  # only this path needs TensorFlow

    tf.config.set_visible_devices([], "GPU")  # reading a checkpoint needs no accelerator

    prefix = tf.train.latest_checkpoint(directory) if len(indexes) > 1 else None
    if prefix is None and len(indexes) > 1:
        raise FileNotFoundError(f"{directory} holds {len(indexes)} checkpoints {indexes} and no "
                                "'checkpoint' file naming one; keep only the one to import")
    prefix = prefix or os.path.join(directory, indexes[0])
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
        return config, {n: np.asarray(reader.get_tensor(n)) for n in names}
    except (tf.errors.OpError, ValueError) as e:  # a missing or truncated .data-* / .index
        text = (getattr(e, "message", "") or str(e)).strip()
        reason = text.splitlines()[0][:200] if text else type(e).__name__
        raise ValueError(f"{prefix}.*: TensorFlow cannot read this checkpoint ({reason}); its "
                         ".index and .data-* files must all be there and complete: copy them "
                         "again") from None

