"""Splits of a fine-tuning task: where they come from and how they are batched.

  * ``Split``: a family's featurised rows (inputs + targets) and what it needs to score them;
  * ``sources``: split role (train, dev, dev_mismatched, test) -> a file, or "tfds:NAME:SPLIT"
    when ``config.data.tfds`` names a prepared TFDS dataset (``train_source``: the training
    one, unchecked); ``examples`` reads either into the reader dicts of bertjax.data.tasks
    (TFDS only there, lazily; nothing is downloaded);
  * ``host_rows`` / ``eval_batches`` / ``predict``: each host's contiguous block of a global
    batch, and evaluation padded to whole global batches with ``example_mask`` 0 rows, so every
    host runs the same steps and each row is counted once.

TensorFlow is not imported here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

from bertjax import config as config_lib
from bertjax import multihost
from bertjax.data import fs
from bertjax.data import tasks as readers

TFDS_PREFIX = "tfds:"  # a split path "tfds:NAME:SPLIT" reads from TFDS, not from a file


@dataclasses.dataclass
class Split:
    """One featurised split.

    ``arrays`` are row-aligned with fixed trailing shapes: always input_ids, input_mask and
    segment_ids int32 [N, L], plus the family's targets. ``meta`` is whatever the family needs
    to score or write predictions; ``num_examples`` counts examples in the user's sense (rows
    may be more, e.g. SQuAD windows), 0 meaning one per row.
    """

    arrays: dict[str, np.ndarray]
    meta: Any = None
    num_examples: int = 0

    @property
    def rows(self) -> int:
        return len(self.arrays["input_ids"])

    @property
    def examples(self) -> int:
        return self.num_examples or self.rows


def tfds_splits(config: Any) -> dict[str, str]:
    """Split role (train, dev, dev_mismatched, test) -> TFDS split name for config.data.tfds.

    Defaults: train / validation / test; glue/mnli: validation_matched, test_matched and
    validation_mismatched. ``config.data.tfds_splits`` overrides, e.g. "dev=validation[:50%]";
    the test split is read (for predictions) only when it names it, e.g. "test=test".
    """
    d = config.data
    name = d.tfds.split(":")[0]
    out = {"train": "train", "dev": "validation", "test": "test"}
    if name == "glue/mnli":
        out.update(dev="validation_matched", test="test_matched",
                   dev_mismatched="validation_mismatched")
    for item in filter(None, (x.strip() for x in d.get("tfds_splits", "").split(","))):
        role, sep, split = item.partition("=")
        if not sep or role.strip() not in ("train", "dev", "dev_mismatched", "test"):
            raise config_lib.ConfigError(
                f"config.data.tfds_splits={d.tfds_splits!r}: expected comma-separated "
                "role=split with role train, dev, dev_mismatched or test (e.g. dev=validation)")
        out[role.strip()] = split.strip()
    return {k: v for k, v in out.items() if v}


def sources(config: Any, eval_only: bool) -> dict[str, str]:
    """Split role -> path (a file, or "tfds:NAME:SPLIT"), checked; train absent in eval_only.

    The labelled evaluation sets are "dev" (the headline) and "dev_mismatched" when given.
    """
    d = config.data
    if d.get("tfds", ""):
        if any(d[k] for k in ("train", "dev", "test")):
            raise config_lib.ConfigError(
                f"config.data.tfds={d.tfds!r} and data files are both set; use one (clear "
                "config.data.train/dev/test, or --config.data.tfds=)")
        out = {role: f"{TFDS_PREFIX}{d.tfds}:{split}"
               for role, split in tfds_splits(config).items()}
        # TFDS test splits of GLUE exist but are unlabelled; they are read only when asked for.
        if "test" in out and "test=" not in d.get("tfds_splits", ""):
            del out["test"]
    else:
        if not eval_only and not d.train:
            raise config_lib.ConfigError("config.data.train is empty; pass the training file "
                                         "(--config.data.train=PATH)")
        if not d.dev:
            raise config_lib.ConfigError("config.data.dev is empty; pass the dev file "
                                         "(--config.data.dev=PATH)")
        out = {k: d[k] for k in ("train", "dev", "dev_mismatched", "test") if d.get(k, "")}
        for key, path in out.items():
            if not fs.is_file(path) and not (key == "train" and eval_only):
                raise config_lib.ConfigError(f"config.data.{key}={path!r} does not exist")
    if eval_only:
        out.pop("train", None)
    return out


def train_source(config: Any) -> str:
    """The training split's path as ``sources`` names it ("tfds:NAME:SPLIT" or the file), ""
    when there is none; unchecked. A family tells the training file from the others by it."""
    d = config.data
    if d.get("tfds", ""):
        split = tfds_splits(config).get("train", "")
        return f"{TFDS_PREFIX}{d.tfds}:{split}" if split else ""
    return d.train


def examples(config: Any, path: str, read_file: Callable[[str], list]) -> list:
    """The reader dicts of one split: from TFDS for "tfds:NAME:SPLIT", else ``read_file(path)``."""
    if path.startswith(TFDS_PREFIX):
        name, _, split = path[len(TFDS_PREFIX):].rpartition(":")
        return readers.tfds_examples(name, split, config.data.get("tfds_data_dir", "") or None)
    return read_file(path)


def host_rows(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """This host's share of a global batch given the global batch's row indices: host i takes
    the i-th contiguous block, matching multihost.global_batch's process-order assembly."""
    n, i = multihost.process_count(), multihost.process_index()
    local = len(rows) // n
    mine = rows[i * local:(i + 1) * local]
    return {k: v[mine] for k, v in arrays.items()}


def eval_batches(data: dict[str, np.ndarray], global_batch: int):
    """Yields this host's rows of each padded global eval batch, with example_mask.

    The set is padded up to a whole number of global batches with copies of row 0 whose mask
    is 0, so every host runs ceil(N / global_batch) steps and each row appears once. Packed
    rows (bertjax/finetuning/packing.py) bring their own example_mask per slot; padding zeroes it.
    """
    n = len(data["input_ids"])
    steps = max(1, math.ceil(n / global_batch))
    padded = {k: np.concatenate([v, np.repeat(v[:1], steps * global_batch - n, axis=0)])
              if n else np.zeros((steps * global_batch,) + v.shape[1:], v.dtype)
              for k, v in data.items()}
    real = (np.arange(steps * global_batch) < n).astype(np.float32)
    if "example_mask" in data:  # packed rows: a mask per example slot [N, M]
        padded["example_mask"] = padded["example_mask"] * real[:, None]
    else:
        padded["example_mask"] = real
    for s in range(steps):
        yield host_rows(padded, np.arange(s * global_batch, (s + 1) * global_batch))


def predict(eval_fn: Callable, params: Any, data: dict[str, np.ndarray], global_batch: int,
            batch_sh: dict) -> tuple[Any, dict[str, float]]:
    """Outputs of every row in order (an array, or a dict of arrays, padding cut) and the
    loss statistics summed over the split."""
    outs, total = [], {}
    for b in eval_batches(data, global_batch):
        r = jax.device_get(eval_fn(params, multihost.global_batch(b, batch_sh)))
        outs.append(jax.tree.map(np.asarray, r.pop("outputs")))
        for k, v in r.items():
            total[k] = total.get(k, 0.0) + float(v)
    n = len(data["input_ids"])
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs), total
