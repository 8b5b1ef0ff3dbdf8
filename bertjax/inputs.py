"""Where the pre-training loop gets its host-local batches from.

``config.data.source`` picks one of:
  embedded        the corpus derived from Python's standard-library docstrings, prepared on first
                  use into ``config.data.path`` (default ~/.cache/bertjax/embedded-v<vocab>);
  prepared        a directory written by ``python -m bertjax.prepare``;
  bert_tfrecords  a glob of google-research/bert create_pretraining_data TFRecords;
  synthetic       numpy batches (no TensorFlow): benchmarks and smoke runs.

TensorFlow is imported only here, lazily, and only for the tf.data sources; this module never
hands TensorFlow objects to the JAX side, only numpy dicts and iterators with save/restore.

``check`` (and ``ensure_prepared`` for the embedded corpus) validate the data before anything is
compiled: a damaged prepared directory, a tokenizer that is not the one the shards were made
with, or ids the model's embedding table cannot hold stop the run in one line, not as NaN steps.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any

import numpy as np

from bertjax import multihost
from bertjax import synthetic
from bertjax.data import prepare as prepare_lib  # TensorFlow-free to import
from bertjax.data import records
from bertjax.data.errors import DataError
from bertjax.data.prepare import data_path  # noqa: F401 (where a config's data lives)

SOURCES = ("embedded", "prepared", "bert_tfrecords", "synthetic")


class InputError(ValueError):
    """The data config points at nothing usable; the message says what to fix."""


class SyntheticIterator:
    """Endless synthetic batches with exact save/restore (the numpy generator's state)."""

    def __init__(self, config: Any, batch_size: int, seed_offset: int = 0,
                 num_batches: int | None = None):
        self._args = (batch_size, config.max_seq_length, config.max_predictions,
                      config.model.vocab_size)
        self._seed = [config.seed, seed_offset]
        self.num_batches = num_batches
        self._nan_from = config.data.inject_nan_from
        # Training batches follow config.data.pairs_per_row; evaluation keeps one per row.
        self._packs = 1 if num_batches is not None else config.data.pairs_per_row
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self._seed)
        self._taken = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_batches is not None and self._taken >= self.num_batches:
            raise StopIteration
        self._taken += 1
        # The global batch is drawn and this host keeps its rows, so the global order does not
        # depend on the number of processes (1 x 8 devices == 2 x 4 devices, step for step).
        local, rest = self._args[0], self._args[1:]
        n, i = multihost.process_count(), multihost.process_index()
        full = synthetic.batch(self._rng, local * n, *rest, pairs_per_row=self._packs)
        b = {k: v[i * local:(i + 1) * local] for k, v in full.items()}
        if self.num_batches is not None:
            b["example_mask"] = np.ones(local, np.float32)
        elif self._nan_from and self._taken >= self._nan_from:
            b["masked_lm_weights"] = np.full_like(b["masked_lm_weights"], np.nan)
        return b

    def save(self, path: str) -> str:
        with open(path + ".json", "w") as f:
            json.dump({"rng": self._rng.bit_generator.state, "taken": self._taken}, f)
        return path

    def restore(self, path: str) -> None:
        with open(path + ".json") as f:
            saved = json.load(f)
        self._rng.bit_generator.state = saved["rng"]
        self._taken = saved["taken"]


def check(config: Any) -> None:
    """Validates the data config before anything is compiled or written, reading no records:
    for prepared data (and an embedded corpus prepared earlier) metadata.json, every shard's
    presence and size, the tokenizer's sha256 and piece count against the metadata and the
    model's vocab_size; for google-research/bert TFRecords, that the glob names non-empty files.
    """
    d = config.data
    if d.source not in SOURCES:
        raise InputError(f"config.data.source={d.source!r}; expected one of {SOURCES}")
    if d.source in ("prepared", "bert_tfrecords") and not d.path:
        raise InputError(f"config.data.source={d.source!r} needs config.data.path (a directory "
                         "from python -m bertjax.prepare, or a TFRecord glob)")
    path = data_path(config)
    if d.source in ("prepared", "embedded") and os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"config.data.path={path!r} is a file (expected the directory python -m "
                         "bertjax.prepare wrote, which holds metadata.json); pass that directory"
                         + (" or use config.data.source=bert_tfrecords for TFRecord files"
                            if d.source == "prepared" else ""))
    if d.source == "prepared" and not os.path.exists(os.path.join(d.path, "metadata.json")):
        raise InputError(f"config.data.path={d.path!r} holds no complete preparation (no "
                         "metadata.json); run python -m bertjax.prepare --output there first")
    if not 0.0 < d.mask_rate < 1.0:
        raise InputError(f"config.data.mask_rate={d.mask_rate}; expected 0 < rate < 1")
    packs = d.pairs_per_row
    if packs < 1:
        raise InputError(f"config.data.pairs_per_row={packs}; expected 1 (one NSP pair per row) "
                         "or more (pack up to that many short pairs into a row)")
    if packs > 1 and (not config.nsp or d.source == "bert_tfrecords"):
        what = "MLM-only rows (already packed across documents)" if not config.nsp else \
            "google-research/bert TFRecords (paired and padded already)"
        raise InputError(f"config.data.pairs_per_row={packs} packs NSP pairs, which {what} do not "
                         "have; set --config.data.pairs_per_row=1")
    try:  # the files last: stats and one sha256, after the config's own values
        if d.source == "prepared" or (d.source == "embedded" and os.path.exists(
                os.path.join(path, prepare_lib.METADATA))):
            prepare_lib.check_prepared(path, config.model.vocab_size)
        elif d.source == "bert_tfrecords":
            records.expand_files(d.path)
    except DataError as e:
        raise InputError(str(e)) from None


def ensure_prepared(config: Any) -> None:
    """Prepares the embedded corpus on first use (process 0 works, the others wait), then
    checks it as ``check`` checks prepared data."""
    if config.data.source != "embedded":
        return
    path = data_path(config)
    if multihost.is_chief() and not os.path.exists(os.path.join(path, "metadata.json")):
        print(f"preparing the embedded corpus into {path} (once) ...", flush=True)
        prepare_lib.prepare(prepare_lib.PrepareConfig(
            input="embedded", output=path, vocab_size=config.model.vocab_size,
            num_shards=8, max_documents=config.data.max_documents or None))
    multihost.barrier("embedded corpus prepared")
    try:  # what check() does for prepared data, now that the corpus exists
        prepare_lib.check_prepared(path, config.model.vocab_size)
    except DataError as e:
        raise InputError(str(e)) from None


def _tf_kwargs(config: Any) -> dict:
    d = config.data
    return dict(seq_len=config.max_seq_length, max_predictions=config.max_predictions,
                host_index=multihost.process_index(), host_count=multihost.process_count(),
                seed=config.seed, nsp=config.nsp, whole_word=d.whole_word,
                mask_rate=d.mask_rate, model_vocab_size=config.model.vocab_size)


def _hide_accelerators_from_tf() -> None:
    tf = importlib.import_module("tensorflow")  # the data side only, lazily
    tf.config.set_visible_devices([], "GPU")


def train_iterator(config: Any) -> Any:
    """This host's endless training iterator (local batch = global / process count)."""
    local = multihost.local_batch_size(config.global_batch_size)
    if config.data.source == "synthetic":
        return SyntheticIterator(config, local)
    _hide_accelerators_from_tf()
    from bertjax.data import pretraining
    return pretraining.make_pretraining_iterator(
        data_path(config), batch_size=local, short_seq_prob=config.data.short_seq_prob,
        shuffle_buffer=config.data.shuffle_buffer,
        pairs_per_row=config.data.pairs_per_row, **_tf_kwargs(config))


def eval_iterator(config: Any) -> Any:
    """This host's finite, fixed evaluation iterator (same number of batches on every host)."""
    local = multihost.local_batch_size(config.eval_batch_size)
    if config.data.source == "synthetic":
        return SyntheticIterator(config, local, seed_offset=1, num_batches=4)
    _hide_accelerators_from_tf()
    from bertjax.data import pretraining
    it = pretraining.make_eval_iterator(data_path(config), batch_size=local,
                                        short_seq_prob=config.data.short_seq_prob,
                                        **_tf_kwargs(config))
    logging.info("eval set: %s batches of %s per host", it.num_batches, local)
    return it
