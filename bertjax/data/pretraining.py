"""Per-host tf.data pre-training pipelines and checkpointable numpy iterators: the train loop's API.

    it = make_pretraining_iterator(data_dir, batch_size=32, seq_len=128, max_predictions=20,
                                   host_index=jax.process_index(), host_count=jax.process_count())
    batch = next(it)          # dict of numpy arrays, google-research/bert feature names
    it.save(prefix); it.restore(prefix)   # exact: the stream continues with the same batches

Training (documents prepared by bertjax.prepare): host i of N reads the training shard files
i, i+N, ... (every file by exactly one host) in a per-epoch shuffled order, interleaves them,
shuffles documents, turns them into NSP pairs or packed sequences (pairs.py), optionally packs
several short pairs into one row (packing.py, `pairs_per_row`), shuffles instances, batches and
masks each batch afresh (masking.py), so pairs and masks change every epoch. All
randomness is either a tf.data shuffle (its state is in the iterator checkpoint) or stateless and
seeded by (seed, host, position in the stream), hence restore == uninterrupted.

Evaluation: every host builds the same instance stream from all eval files in order, with fixed
pairs and masks, takes every N-th instance, and pads to the same number of batches on every host
(`example_mask` 0 on padding rows), so hosts stay in lockstep and nothing is dropped.

TFRecords written by google-research/bert's create_pretraining_data.py (already paired and
masked) are read as they are when `data` names those files instead of a prepared directory.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from bertjax.data import masking, packing, pairs, records, sources
from bertjax.data import tokenizer as tok_lib
from bertjax.data.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
_DOC_GROUP = 64  # documents handled together: random-next partners and MLM-only packing
_graph = tf.autograph.experimental.do_not_convert  # map functions are plain graph code


def _mix(seed: int, host: int, tag: str) -> int:
    """A 31-bit seed for one purpose on one host (shuffles and stateless ops differ per host)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{host}/{tag}".encode()).digest()[:4], "big") >> 1


def _check_args(batch_size: int, seq_len: int, max_predictions: int, mask_rate: float) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size {batch_size} must be positive (it is the per-host batch)")
    if seq_len < 8:
        raise DataError(f"seq_len {seq_len} is too short (expected at least 8, e.g. 128 or 512)")
    if not 1 <= max_predictions <= seq_len:
        raise DataError(f"max_predictions {max_predictions} must be in [1, seq_len={seq_len}] "
                        "(e.g. 20 for seq 128, 80 for seq 512)")
    if not 0 < mask_rate < 1:
        raise DataError(f"mask_rate {mask_rate} must be in (0, 1), e.g. 0.15")


def _records(files: list[str], seed: int, host: int, training: bool) -> tf.data.Dataset:
    """Serialized records: endless and shuffled per epoch when training, else in file order."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if not training:
        return ds.flat_map(tf.data.TFRecordDataset)
    ds = ds.shuffle(len(files), seed=_mix(seed, host, "files"), reshuffle_each_iteration=True)
    return ds.repeat().interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 4),
                                  num_parallel_calls=AUTOTUNE, deterministic=True)


def document_instances(files: list[str], *, seq_len: int, nsp: bool, short_seq_prob: float,
                       seed: int, host: int, training: bool, doc_buffer: int,
                       pairs_per_row: int = 1,
                       special_ids: dict[str, int] | None = None) -> tf.data.Dataset:
    """Prepared document files -> the unmasked, unbatched instance stream both iterators batch.

    Args:
      files: document TFRecord files (a prepared directory's shards).
      seq_len: instance length L.
      nsp: NSP pairs (pairs.nsp_instances) if True, else whole sentences packed into MLM-only
        sequences (pairs.packed_sequences).
      short_seq_prob: probability of a shorter target length for an NSP pair.
      seed, host: seed the stateless randomness and the shuffles of this host's stream.
      training: endless and shuffled (files, then `doc_buffer` documents) if True, else one
        pass in file order.
      doc_buffer: document shuffle buffer (training only).
      pairs_per_row: > 1 packs up to this many NSP pairs into one row (packing.py).
      special_ids: the data's special tokens by name (Source.special_ids); None: sentencepiece's.

    Returns:
      Instances {tokens [L], seg_a [], label []} (int32, padded with [PAD]), or, with
      pairs_per_row > 1, packed rows (packing.pack_pairs' features, one row each).
    """
    ds = _records(files, seed, host, training)
    if training:
        ds = ds.shuffle(doc_buffer, seed=_mix(seed, host, "docs"), reshuffle_each_iteration=True)
    group_seed = _mix(seed, host, "group")
    ids = special_ids or tok_lib.SPECIAL_TOKENS
    cls_id, sep_id, pad_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]

    @_graph
    def make(i, serialized):
        tokens, lengths = sources.parse_documents(serialized)
        if nsp:
            out = pairs.nsp_instances(tokens, lengths, tf.stack([tf.cast(group_seed, tf.int64), i]),
                                      seq_len, short_seq_prob, cls_id, sep_id)
            if pairs_per_row > 1:
                return packing.pack_pairs(out["tokens"], out["seg_a"], out["label"], seq_len,
                                          pairs_per_row, pad_id)
        else:
            out = pairs.packed_sequences(tokens, lengths, seq_len, cls_id, sep_id)
        # Padded here, not by padded_batch: tf.data cannot pad-batch unbatched ragged rows.
        return {**out, "tokens": out["tokens"].to_tensor(default_value=pad_id,
                                                         shape=[None, seq_len])}

    return ds.batch(_DOC_GROUP).enumerate().map(make, num_parallel_calls=AUTOTUNE).unbatch()


def _masker(seq_len: int, max_predictions: int, vocab_size: int, mask_rate: float,
            word_starts: np.ndarray | None, mask_seed: int,
            special_ids: dict[str, int] | None = None,
            regular: np.ndarray | None = None) -> Callable[..., dict[str, tf.Tensor]]:
    """map function: (batch index, padded batch of instances) -> the model's features, masked.
    ``special_ids`` and ``regular`` come from the data's tokenizer (Source); None: sentencepiece's
    fixed layout."""
    starts = None if word_starts is None else tf.constant(word_starts)
    regular_ids = None if regular is None else tf.constant(regular)
    ids_of = special_ids or tok_lib.SPECIAL_TOKENS
    pad_id, mask_id = ids_of["[PAD]"], ids_of["[MASK]"]

    @_graph
    def features(i: tf.Tensor, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ids = tf.ensure_shape(batch["tokens"], [None, seq_len])  # [B, L]
        input_mask = tf.cast(ids != pad_id, tf.int32)
        masked = masking.mask_batch(ids, tf.stack([tf.cast(mask_seed, tf.int64), i]),
                                    vocab_size=vocab_size, max_predictions=max_predictions,
                                    mask_rate=mask_rate, word_starts=starts, mask_id=mask_id,
                                    regular=regular_ids)
        out = {"input_ids": masked.pop("input_ids"), "input_mask": input_mask}
        if "pack_ids" in batch:  # packed rows: M pairs per row, each with its own NSP slot
            out.update(segment_ids=batch["type_ids"], position_ids=batch["position_ids"],
                       pack_ids=batch["pack_ids"], **masked,
                       next_sentence_positions=batch["nsp_positions"],
                       next_sentence_labels=batch["nsp_labels"],
                       next_sentence_weights=batch["nsp_weights"])
        else:
            pos = tf.range(seq_len)[None, :]
            segment_ids = tf.cast(pos >= batch["seg_a"][:, None], tf.int32) * input_mask
            out.update(segment_ids=segment_ids, **masked,
                       next_sentence_labels=batch["label"])
        if "example_mask" in batch:
            out["example_mask"] = batch["example_mask"]
        return out

    return features


class DataIterator:
    """Iterator of host-local numpy batches whose position can be saved and restored exactly.

    Attributes:
      files: the files this iterator reads (for diagnostics).
      num_batches: batches per pass for a finite (eval) iterator, None for an endless one.
    """

    def __init__(self, dataset: tf.data.Dataset, files: Sequence[str],
                 num_batches: int | None = None, threads: int | None = None):
        """Wraps a dataset of dicts; `threads` gives it a private tf.data thread pool."""
        if threads is not None:
            options = tf.data.Options()
            options.threading.private_threadpool_size = threads
            options.threading.max_intra_op_parallelism = 1
            dataset = dataset.with_options(options)
        self._dataset = dataset.prefetch(AUTOTUNE)
        self.files = list(files)
        self.num_batches = num_batches
        self.reset()

    def reset(self) -> None:
        """Starts again from the first batch (eval: the same batches again)."""
        self._iterator = iter(self._dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._iterator)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            for path in self.files:  # find the culprit only on failure: reading all is slow
                records.read_all_records(path)
            if isinstance(e, tf.errors.DataLossError):
                raise DataError(f"reading {len(self.files)} files failed ({records.reason(e)}); "
                                "check them with python -m bertjax.prepare --verify --output DIR"
                                ) from None
            raise  # the files are intact: not a data problem
        return {k: v.numpy() for k, v in batch.items()}

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
        """Feature name -> (shape, numpy dtype) of every batch."""
        return {k: (tuple(s.shape.as_list()), s.dtype.as_numpy_dtype)
                for k, s in self._dataset.element_spec.items()}

    def save(self, path: str) -> str:
        """Writes the iterator state (shuffle buffers included) under the prefix `path`.

        Call it between two `next` calls from the thread that iterates (not from a background
        thread while batches are being taken), so the state is the one of a batch boundary.

        Args:
          path: checkpoint prefix, e.g. f"{ckpt_dir}/data_host{host_index}" (the directory must
            exist).

        Returns:
          The prefix written.
        """
        return self._checkpoint.write(path)

    def restore(self, path: str) -> None:
        """Continues from a state written by `save` of an iterator built with the same arguments."""
        if not tf.io.gfile.exists(f"{path}.index"):
            raise DataError(f"no data-iterator state at {path} (expected {path}.index written by "
                            "DataIterator.save); check the checkpoint directory and host index")
        self._checkpoint.read(path).assert_consumed()


def make_pretraining_iterator(
        data: str | Sequence[str], *, batch_size: int, seq_len: int, max_predictions: int,
        host_index: int = 0, host_count: int = 1, seed: int = 0, nsp: bool = True,
        whole_word: bool = False, mask_rate: float = 0.15, short_seq_prob: float = 0.1,
        shuffle_buffer: int = 2048, doc_buffer: int = 256, model_vocab_size: int | None = None,
        threads: int | None = None, pairs_per_row: int = 1) -> DataIterator:
    """Endless, shuffled, dynamically masked training batches for this host.

    Args:
      data: a directory written by `python -m bertjax.prepare`, or google-research/bert TFRecord
        files (a glob or a list; used as they are, with their fixed masks).
      batch_size: examples per batch on this host.
      seq_len: L; max_predictions: P (masked positions per sequence).
      host_index, host_count: this host among all hosts (jax.process_index/process_count).
      seed: the run's data seed; batches are a function of (seed, host_index, position).
      nsp: NSP pairs (True) or RoBERTa-style packed full sentences with label 0 (False).
      whole_word: mask all pieces of each chosen word.
      mask_rate: fraction of regular tokens to predict (capped at P).
      short_seq_prob: probability of a shorter random target length (NSP mode).
      shuffle_buffer, doc_buffer: instance and document shuffle buffers (memory vs. mixing).
      model_vocab_size: if given, checked against the tokenizer's size.
      threads: tf.data threads for this pipeline (None: a shared pool over all cores).
      pairs_per_row: M; above 1, up to M NSP pairs share a row (packing.py) instead of one pair
        and padding per row. Needs nsp=True and a prepared directory.

    Returns:
      A DataIterator of dicts: input_ids, input_mask, segment_ids [B, L] int32;
      masked_lm_positions, masked_lm_ids [B, P] int32; masked_lm_weights [B, P] float32;
      next_sentence_labels [B] int32. With pairs_per_row = M > 1 also position_ids, pack_ids
      [B, L] int32, and per pair next_sentence_positions, next_sentence_labels [B, M] int32 and
      next_sentence_weights [B, M] float32.
    """
    _check_args(batch_size, seq_len, max_predictions, mask_rate)
    if pairs_per_row < 1:
        raise DataError(f"pairs_per_row {pairs_per_row} must be at least 1 (1: one NSP pair per "
                        "row, no packing; e.g. 3 packs up to three short pairs into a row)")
    if pairs_per_row > 1 and not nsp:
        raise DataError(f"pairs_per_row {pairs_per_row} packs NSP pairs, but nsp is off; MLM-only "
                        "sequences are already packed across documents, so use pairs_per_row=1")
    source = sources.Source(data, "train")
    source.check(seq_len, max_predictions, whole_word, model_vocab_size)
    files = sources.host_files(source.files, host_index, host_count)
    instance_seed = _mix(seed, host_index, "instances")
    if source.format == "bert":
        if pairs_per_row > 1:
            raise DataError(f"pairs_per_row {pairs_per_row}: google-research/bert TFRecords are "
                            "already paired and padded and cannot be packed; use pairs_per_row=1")
        ds = _records(files, seed, host_index, training=True).shuffle(shuffle_buffer, instance_seed)
        ds = ds.batch(batch_size, drop_remainder=True).map(
            _graph(lambda s: sources.parse_bert_records(s, seq_len, max_predictions)),
            num_parallel_calls=AUTOTUNE)
        return DataIterator(ds, files, threads=threads)
    if sum(source.docs[host_index::host_count]) == 0:
        raise DataError(f"host {host_index} of {host_count} got {len(files)} training files with "
                        "no documents (expected at least one); prepare again with fewer "
                        "--num_shards or more text")
    ds = document_instances(files, seq_len=seq_len, nsp=nsp, short_seq_prob=short_seq_prob,
                            seed=seed, host=host_index, training=True, doc_buffer=doc_buffer,
                            pairs_per_row=pairs_per_row, special_ids=source.special_ids)
    ds = ds.shuffle(shuffle_buffer, seed=instance_seed).batch(batch_size, drop_remainder=True)
    features = _masker(seq_len, max_predictions, source.vocab_size, mask_rate,
                       source.word_starts() if whole_word else None,
                       _mix(seed, host_index, "mask"), source.special_ids,
                       source.regular_mask())
    ds = ds.enumerate().map(features, num_parallel_calls=AUTOTUNE)
    return DataIterator(ds, files, threads=threads)


def make_eval_iterator(
        data: str | Sequence[str], *, batch_size: int, seq_len: int, max_predictions: int,
        host_index: int = 0, host_count: int = 1, seed: int = 0, nsp: bool = True,
        whole_word: bool = False, mask_rate: float = 0.15, short_seq_prob: float = 0.1,
        model_vocab_size: int | None = None) -> DataIterator:
    """One deterministic pass over the held-out set, the same number of batches on every host.

    Every host reads all eval files in order (pairs and masks fixed by `seed`) and keeps every
    host_count-th instance; the last batches are padded with rows whose `example_mask` is 0.
    Counting the instances costs one extra pass when the iterator is built; call `reset()` to
    evaluate again instead of building a new one.

    Args:
      data: a prepared directory (its eval split), or google-research/bert TFRecord files.
      (the rest as in make_pretraining_iterator)

    Returns:
      A finite DataIterator with `num_batches` batches; features as for training plus
      example_mask [B] float32.
    """
    _check_args(batch_size, seq_len, max_predictions, mask_rate)
    sources.check_host(host_index, host_count)
    source = sources.Source(data, "eval")
    source.check(seq_len, max_predictions, whole_word, model_vocab_size)
    if source.format == "bert":
        instances = tf.data.TFRecordDataset(source.files).map(lambda s: {"record": s})
        empty = {"record": sources.zero_bert_record(seq_len, max_predictions)}

        @_graph
        def features(i, batch):
            return {**sources.parse_bert_records(batch["record"], seq_len, max_predictions),
                    "example_mask": batch["example_mask"]}
    else:
        if sum(source.docs) == 0:
            raise DataError(f"{source.data_dir} has no eval documents (expected some); prepare "
                            "again with a larger --eval_fraction, or evaluate on other data")
        # host=0: every host builds the same stream, then keeps its share of it.
        instances = document_instances(source.files, seq_len=seq_len, nsp=nsp,
                                       short_seq_prob=short_seq_prob, seed=seed, host=0,
                                       training=False, doc_buffer=0,
                                       special_ids=source.special_ids)
        empty = {"tokens": tf.fill([seq_len], source.special_ids["[PAD]"]), "seg_a": 0,
                 "label": 0}
        features = _masker(seq_len, max_predictions, source.vocab_size, mask_rate,
                           source.word_starts() if whole_word else None,
                           _mix(seed, host_index, "eval-mask"), source.special_ids,
                           source.regular_mask())
    num_batches = math.ceil(math.ceil(records.count(instances) / host_count) / batch_size)
    padding = tf.data.Dataset.from_tensors({**empty, "example_mask": 0.0}).repeat()
    ds = instances.shard(host_count, host_index).map(lambda x: {**x, "example_mask": 1.0})
    ds = ds.concatenate(padding).take(num_batches * batch_size).batch(batch_size)
    ds = ds.enumerate().map(features, num_parallel_calls=AUTOTUNE)
    return DataIterator(ds, source.files, num_batches)
