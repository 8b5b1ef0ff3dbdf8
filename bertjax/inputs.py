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

import hashlib
import importlib
import json
import logging
import os
from typing import Any

import numpy as np

from bertjax import multihost
from bertjax import progress
from bertjax import synthetic
from bertjax.data import fs  # local paths and gs:// alike
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
        fs.path(path + ".json").write_text(
            json.dumps({"rng": self._rng.bit_generator.state, "taken": self._taken}))
        return path

    def restore(self, path: str) -> None:
        saved = json.loads(fs.path(path + ".json").read_text())
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
    if (d.source in ("prepared", "embedded") and fs.path(path).exists()
            and not fs.path(path).is_dir()):
        raise InputError(f"config.data.path={path!r} is a file (expected the directory python -m "
                         "bertjax.prepare wrote, which holds metadata.json); pass that directory"
                         + (" or use config.data.source=bert_tfrecords for TFRecord files"
                            if d.source == "prepared" else ""))
    if d.source == "prepared" and not fs.path(os.path.join(d.path, "metadata.json")).exists():
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
        if d.source == "prepared" or (d.source == "embedded" and fs.path(
                os.path.join(path, prepare_lib.METADATA)).exists()):
            prepare_lib.check_prepared(path, config.model.vocab_size)
        elif d.source == "bert_tfrecords":
            records.expand_files(d.path)
    except DataError as e:
        raise InputError(str(e)) from None


def check_tokenizer(config: Any, found: tuple[str, str] | None, init_from: str) -> None:
    """Refuses data whose ids are not those of the model ``init_from`` continues (one line,
    before anything is compiled): prepared data must come from the same tokenizer (for an
    import: its WordPiece vocabulary and casing, ``python -m bertjax.prepare --vocab``), and an
    embedded corpus not prepared yet would be prepared with a new sentencepiece model.

    Args:
      config: the run config (its data).
      found: the tokenizer of ``init_from`` (bertjax.rundir.Run.tokenizer), None if unknown.
      init_from: the run continued, for the message.
    """
    d = config.data
    if found is None or d.source not in ("prepared", "embedded"):
        return
    path = data_path(config)
    given = (f"--vocab={init_from}" if found[0] == prepare_lib.WORDPIECE
             else f"--tokenizer={found[1]}")
    fix = (f"prepare the corpus with the model's tokenizer: python -m bertjax.prepare "
           f"--input=YOUR_TEXT --output=DIR {given}, then pass "
           "--config.data.source=prepared --config.data.path=DIR")
    if not fs.path(os.path.join(path, prepare_lib.METADATA)).exists():
        if found[0] == prepare_lib.WORDPIECE:
            raise InputError(f"config.init_from={init_from} reads WordPiece ids, but {path} holds "
                             "no prepared data (the embedded corpus would be prepared with a new "
                             f"sentencepiece model); {fix.replace('YOUR_TEXT', 'embedded')}")
        return
    try:
        differs = prepare_lib.tokenizer_difference(prepare_lib.load_metadata(path), *found)
    except (DataError, OSError) as e:
        raise InputError(str(e)) from None
    if differs:
        raise InputError(f"config.data.path={path} does not hold config.init_from={init_from}'s "
                         f"token ids ({differs}); {fix}")


# sentencepiece's trainer sums its statistics per thread, so the model it learns depends on the
# thread count: a fixed count makes the embedded corpus the same bytes on every host, whatever
# its cores (2: the machines the README's figures were measured on prepared it with 2).
EMBEDDED_PROCESSES = 2


def _prepare_embedded(config: Any, path: str, bar: bool) -> None:
    print(f"preparing the embedded corpus into {path} (once) ...", flush=True)
    prepare_lib.prepare(prepare_lib.PrepareConfig(
        input="embedded", output=path, vocab_size=config.model.vocab_size,
        num_shards=8, max_documents=config.data.max_documents or None,
        processes=EMBEDDED_PROCESSES), progress=progress.bar if bar else None)


def ensure_prepared(config: Any) -> None:
    """Prepares the embedded corpus on first use, then checks it as ``check`` checks prepared
    data, on every host.

    Process 0 prepares first; a host that then still finds no corpus at the path (its own disk:
    TPU VMs, pods without shared storage) prepares its own copy. The preparation is
    deterministic (same text, same sentencepiece threads, deterministic records), so every
    copy holds the same bytes; ``data_fingerprint`` lets the hosts' agreement check that.
    A host whose copy is damaged stops every host, naming it.
    """
    if config.data.source != "embedded":
        return
    path = data_path(config)
    metadata = os.path.join(path, prepare_lib.METADATA)
    bar = config.get("progress_bar", True)
    if multihost.is_chief() and not fs.path(metadata).exists():
        _prepare_embedded(config, path, bar)
    multihost.barrier("embedded corpus prepared by process 0")
    if not multihost.is_chief() and not fs.path(metadata).exists():
        _prepare_embedded(config, path, bar=False)  # this host's own copy
    multihost.barrier("embedded corpus prepared on every host")
    problem = None
    try:  # what check() does for prepared data, now that the corpus exists
        prepare_lib.check_prepared(path, config.model.vocab_size)
    except DataError as e:
        problem = str(e)
    problem = multihost.any_host_problem(problem)
    if problem:
        raise InputError(problem)


def data_fingerprint(config: Any) -> str | None:
    """What the hosts of one run must agree on about its data, as one line: for prepared data
    (and the embedded corpus) the sha256 of its metadata.json, which records the tokenizer's
    and every shard's sha256 (or that there is none at the path); for google-research/bert
    TFRecords the files the glob matches with their sizes; None for synthetic data."""
    d = config.data
    path = data_path(config)
    if d.source in ("prepared", "embedded"):
        metadata = fs.path(os.path.join(path, prepare_lib.METADATA))
        if not metadata.exists():
            return f"no prepared data at {path} (no {prepare_lib.METADATA})"
        digest = hashlib.sha256(metadata.read_bytes()).hexdigest()
        return f"prepared data whose {prepare_lib.METADATA} has sha256 {digest[:16]}"
    if d.source == "bert_tfrecords":
        try:
            files = sorted(records.expand_files(d.path))
        except DataError as e:
            return str(e)
        listing = [(os.path.basename(f), fs.size(f)) for f in files]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return f"{len(files)} TFRecord files, names and sizes {digest[:16]}"
    return None


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
