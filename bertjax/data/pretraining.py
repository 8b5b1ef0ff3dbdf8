"""Per-host tf.data pre-training pipelines and checkpointable numpy iterators: the train loop's API.

    it = make_pretraining_iterator(data_dir, batch_size=32, seq_len=128, max_predictions=20,
                                   host_index=jax.process_index(), host_count=jax.process_count())
    batch = next(it)          # dict of numpy arrays, google-research/bert feature names
    it.save(prefix); it.restore(prefix)   # exact: the stream continues with the same batches

Training (documents prepared by bertjax.prepare): host i of N reads the training shard files
i, i+N, ... (every file by exactly one host) in a per-epoch shuffled order, interleaves them,
shuffles documents, turns them into NSP pairs or packed sequences (pairs.py), shuffles instances,
batches and masks each batch afresh (masking.py), so pairs and masks change every epoch. All
randomness is either a tf.data shuffle (its state is in the iterator checkpoint) or stateless and
seeded by (seed, host, position in the stream), hence restore == uninterrupted.

Evaluation: every host builds the same instance stream from all eval files in order, with fixed
pairs and masks, takes every N-th instance, and pads to the same number of batches on every host
(`example_mask` 0 on padding rows), so hosts stay in lockstep and nothing is dropped.

TFRecords written by google-research/bert's create_pretraining_data.py (already paired and
masked) are read as they are when `data` names those files instead of a prepared directory.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import re
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from bertjax.data import masking, pairs
from bertjax.data import prepare as prepare_lib
from bertjax.data import tokenizer as tok_lib
from bertjax.data.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
_DOC_GROUP = 64  # documents handled together: random-next partners and MLM-only packing


def _mix(seed: int, host: int, tag: str) -> int:
    """A 31-bit seed for one purpose on one host (shuffles and stateless ops differ per host)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{host}/{tag}".encode()).digest()[:4], "big") >> 1


def read_all_records(path: str) -> int:
    """Reads every record of a TFRecord file (CRC-checked); DataError names the file if corrupt.

    Args:
      path: a TFRecord file.

    Returns:
      The number of records.
    """
    try:
        return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise DataError(f"TFRecord file {path} is corrupt or unreadable ({_reason(e)}); expected intact "
                        "records: delete it and rerun prepare (or copy it again)") from None


def _reason(error: tf.errors.OpError) -> str:
    """The first line of a TensorFlow error without its graph-function and op decorations."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error.message)).strip().splitlines()[0]
    return re.sub(r"\s*\[Op:.*$", "", text)[:160]


def host_files(files: Sequence[str], host_index: int, host_count: int) -> list[str]:
    """The files host `host_index` of `host_count` reads: every host_count-th, disjoint and covering.

    Args:
      files: all files, in the same order on every host.
      host_index, host_count: this host and the number of hosts.

    Returns:
      This host's files.
    """
    if not 0 <= host_index < host_count:
        raise DataError(f"host_index {host_index} is out of range for host_count {host_count} "
                        "(expected 0 <= host_index < host_count)")
    if len(files) < host_count:
        raise DataError(f"only {len(files)} data files for {host_count} hosts (expected at least one "
                        "file per host); prepare again with --num_shards at least the host count, "
                        "ideally a multiple of it")
    return list(files[host_index::host_count])


class _Source:
    """Resolved input: documents (prepared dir + metadata) or google-research/bert instance files."""

    def __init__(self, data: str | Sequence[str], split: str):
        self.meta: dict | None = None
        self.data_dir: str | None = None
        if isinstance(data, str) and os.path.isdir(data):
            self.data_dir = data
            self.meta = prepare_lib.load_metadata(data)
            shards = self.meta["splits"][split]["shards"]
            self.files = [os.path.join(data, s["file"]) for s in shards]
            self.docs = [s["documents"] for s in shards]
            for path, s in zip(self.files, shards):
                if not os.path.exists(path) or os.path.getsize(path) != s["bytes"]:
                    raise DataError(f"{path} is missing or its size differs from metadata.json (the "
                                    "copy is incomplete or the file is corrupt); copy it again or "
                                    "rerun prepare")
            self.format = "documents"
            return
        files = sorted(f for p in ([data] if isinstance(data, str) else data)
                       for f in (glob.glob(p) or [p]))
        missing = [f for f in files if not os.path.isfile(f)]
        if not files or missing:
            raise DataError(f"data {data!r} names no readable file ({missing[:1] or 'empty list'}); "
                            "pass a prepared directory (with metadata.json) or TFRecord files")
        first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
        keys = set(tf.train.Example.FromString(first.numpy()).features.feature) if first is not None \
            else set()
        if {"tokens", "sentence_lengths"} <= keys:
            raise DataError(f"{files[0]} holds bertjax documents; pass its directory (which has "
                            "metadata.json) instead of the files")
        if not {"input_ids", "masked_lm_positions", "next_sentence_labels"} <= keys:
            raise DataError(f"{files[0]} has features {sorted(keys)}, expected google-research/bert's "
                            "(input_ids, input_mask, segment_ids, masked_lm_*, next_sentence_labels) "
                            "or a directory prepared by python -m bertjax.prepare")
        example = tf.train.Example.FromString(first.numpy()).features.feature
        self.bert_shapes = (len(example["input_ids"].int64_list.value),
                            len(example["masked_lm_positions"].int64_list.value))
        self.files, self.docs, self.format = files, None, "bert"

    def vocab_size(self) -> int | None:
        return self.meta["vocab_size"] if self.meta else None


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


def _parse_documents(serialized: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """A batch of serialized documents -> (tokens, sentence_lengths), ragged int32 [D, None]."""
    feats = tf.io.parse_example(serialized, {
        "tokens": tf.io.RaggedFeature(tf.int64), "sentence_lengths": tf.io.RaggedFeature(tf.int64)})
    return (tf.cast(feats["tokens"], tf.int32), tf.cast(feats["sentence_lengths"], tf.int32))


def _document_instances(files: list[str], *, seq_len: int, nsp: bool, short_seq_prob: float,
                        seed: int, host: int, training: bool, doc_buffer: int) -> tf.data.Dataset:
    """Documents -> unbatched instances {tokens [None], seg_a [], label []} (int32)."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=_mix(seed, host, "files"), reshuffle_each_iteration=True)
        ds = ds.repeat()
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 4),
                           num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.shuffle(doc_buffer, seed=_mix(seed, host, "docs"), reshuffle_each_iteration=True)
    else:
        ds = ds.flat_map(tf.data.TFRecordDataset)  # files and documents in order
    group_seed = _mix(seed, host, "group")

    def make(i, serialized):
        tokens, lengths = _parse_documents(serialized)
        if nsp:
            out = pairs.nsp_instances(tokens, lengths, tf.stack([tf.cast(group_seed, tf.int64), i]),
                                      seq_len, short_seq_prob)
        else:
            out = pairs.packed_sequences(tokens, lengths, seq_len)
        return _dense(out, seq_len)

    return ds.batch(_DOC_GROUP).enumerate().map(make, num_parallel_calls=AUTOTUNE).unbatch()


def _dense(instances: dict[str, Any], seq_len: int) -> dict[str, tf.Tensor]:
    # Padded here rather than in padded_batch: tf.data cannot pad-batch unbatched ragged rows.
    return {**instances, "tokens": instances["tokens"].to_tensor(shape=[None, seq_len])}


def _features(i: tf.Tensor, batch: dict[str, tf.Tensor], *, seq_len: int, max_predictions: int,
              vocab_size: int, mask_rate: float, word_starts: tf.Tensor | None,
              mask_seed: int) -> dict[str, tf.Tensor]:
    """A padded batch of instances -> the model's features, freshly masked."""
    ids = tf.ensure_shape(batch["tokens"], [None, seq_len])  # [B, L]
    input_mask = tf.cast(ids != tok_lib.PAD_ID, tf.int32)
    pos = tf.range(seq_len)[None, :]
    segment_ids = tf.cast(pos >= batch["seg_a"][:, None], tf.int32) * input_mask
    masked = masking.mask_batch(ids, tf.stack([tf.cast(mask_seed, tf.int64), i]),
                                vocab_size=vocab_size, max_predictions=max_predictions,
                                mask_rate=mask_rate, word_starts=word_starts)
    out = {"input_ids": masked["input_ids"], "input_mask": input_mask, "segment_ids": segment_ids,
           "masked_lm_positions": masked["masked_lm_positions"],
           "masked_lm_ids": masked["masked_lm_ids"],
           "masked_lm_weights": masked["masked_lm_weights"],
           "next_sentence_labels": batch["label"]}
    if "example_mask" in batch:
        out["example_mask"] = batch["example_mask"]
    return out


def _parse_bert_records(serialized: tf.Tensor, seq_len: int, max_predictions: int):
    """google-research/bert instance records (int64 lists, float weights) -> int32/float32 batch."""
    spec = {name: tf.io.FixedLenFeature([seq_len], tf.int64)
            for name in ("input_ids", "input_mask", "segment_ids")}
    spec.update({name: tf.io.FixedLenFeature([max_predictions], tf.int64)
                 for name in ("masked_lm_positions", "masked_lm_ids")})
    spec["masked_lm_weights"] = tf.io.FixedLenFeature([max_predictions], tf.float32)
    spec["next_sentence_labels"] = tf.io.FixedLenFeature([1], tf.int64)
    feats = tf.io.parse_example(serialized, spec)
    out = {k: tf.cast(v, tf.int32) for k, v in feats.items() if k != "masked_lm_weights"}
    out["masked_lm_weights"] = feats["masked_lm_weights"]
    out["next_sentence_labels"] = out["next_sentence_labels"][:, 0]
    return out


class DataIterator:
    """Iterator of host-local numpy batches whose position can be saved and restored exactly.

    Attributes:
      files: the files this iterator reads (for diagnostics).
      num_batches: batches per pass for a finite (eval) iterator, None for an endless one.
    """

    def __init__(self, dataset: tf.data.Dataset, files: Sequence[str], num_batches: int | None = None):
        self._dataset = dataset
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
                read_all_records(path)
            if isinstance(e, tf.errors.DataLossError):
                raise DataError(f"reading {len(self.files)} files failed ({_reason(e)}); check them "
                                "with python -m bertjax.prepare --verify --output DIR") from None
            raise  # the files are intact: not a data problem
        return {k: v.numpy() for k, v in batch.items()}

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
        """Feature name -> (shape, numpy dtype) of every batch."""
        return {k: (tuple(s.shape.as_list()), s.dtype.as_numpy_dtype)
                for k, s in self._dataset.element_spec.items()}

    def save(self, path: str) -> str:
        """Writes the iterator state (shuffle buffers included) under the prefix `path`.

        Args:
          path: checkpoint prefix, e.g. f"{ckpt_dir}/data_host{host_index}"; its directory must exist.

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


def _word_starts(source: _Source, whole_word: bool) -> tf.Tensor | None:
    if not whole_word:
        return None
    if source.format != "documents":
        raise DataError("whole_word masking needs documents prepared by python -m bertjax.prepare; "
                        "google-research/bert files are already masked")
    tok = tok_lib.Tokenizer.load(os.path.join(source.data_dir, source.meta["tokenizer"]))
    return tf.constant(tok.word_start_mask())


def _check_model_vocab(source: _Source, model_vocab_size: int | None) -> None:
    if model_vocab_size is not None and source.vocab_size() is not None \
            and source.vocab_size() > model_vocab_size:
        raise DataError(f"the data's tokenizer has {source.vocab_size()} pieces but the model "
                        f"vocab_size is {model_vocab_size} (expected model >= tokenizer); set the "
                        f"model vocab_size to at least {source.vocab_size()} or prepare again with "
                        f"--vocab_size {model_vocab_size}")


def make_pretraining_iterator(
        data: str | Sequence[str], *, batch_size: int, seq_len: int, max_predictions: int,
        host_index: int = 0, host_count: int = 1, seed: int = 0, nsp: bool = True,
        whole_word: bool = False, mask_rate: float = 0.15, short_seq_prob: float = 0.1,
        shuffle_buffer: int = 2048, doc_buffer: int = 256, model_vocab_size: int | None = None,
        threads: int | None = None) -> DataIterator:
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

    Returns:
      A DataIterator of dicts: input_ids, input_mask, segment_ids [B, L] int32;
      masked_lm_positions, masked_lm_ids [B, P] int32; masked_lm_weights [B, P] float32;
      next_sentence_labels [B] int32.
    """
    _check_args(batch_size, seq_len, max_predictions, mask_rate)
    source = _Source(data, "train")
    _check_model_vocab(source, model_vocab_size)
    files = host_files(source.files, host_index, host_count)
    if source.format == "bert":
        return _bert_iterator(source, files, batch_size, seq_len, max_predictions, seed, host_index)
    docs = sum(source.docs[host_index::host_count])
    if docs == 0:
        raise DataError(f"host {host_index} of {host_count} got {len(files)} training files with no "
                        "documents (expected at least one); prepare again with fewer --num_shards "
                        "or more text")
    word_starts = _word_starts(source, whole_word)
    ds = _document_instances(files, seq_len=seq_len, nsp=nsp, short_seq_prob=short_seq_prob,
                             seed=seed, host=host_index, training=True, doc_buffer=doc_buffer)
    ds = ds.shuffle(shuffle_buffer, seed=_mix(seed, host_index, "instances"))
    ds = ds.batch(batch_size, drop_remainder=True).enumerate()
    mask_seed = _mix(seed, host_index, "mask")
    ds = ds.map(lambda i, b: _features(
        i, b, seq_len=seq_len, max_predictions=max_predictions, vocab_size=source.vocab_size(),
        mask_rate=mask_rate, word_starts=word_starts, mask_seed=mask_seed),
        num_parallel_calls=AUTOTUNE)
    return DataIterator(_with_threads(ds.prefetch(AUTOTUNE), threads), files)


def _with_threads(ds: tf.data.Dataset, threads: int | None) -> tf.data.Dataset:
    if threads is None:
        return ds
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _bert_iterator(source: _Source, files: list[str], batch_size: int, seq_len: int,
                   max_predictions: int, seed: int, host: int) -> DataIterator:
    _check_bert_shapes(source, seq_len, max_predictions)
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.shuffle(len(files), seed=_mix(seed, host, "files"), reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 4),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.shuffle(10_000, seed=_mix(seed, host, "instances")).batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda s: _parse_bert_records(s, seq_len, max_predictions), num_parallel_calls=AUTOTUNE)
    return DataIterator(ds.prefetch(AUTOTUNE), files)


def _check_bert_shapes(source: _Source, seq_len: int, max_predictions: int) -> None:
    if source.bert_shapes != (seq_len, max_predictions):
        raise DataError(f"{source.files[0]} was made with max_seq_length={source.bert_shapes[0]}, "
                        f"max_predictions_per_seq={source.bert_shapes[1]}; expected seq_len={seq_len},"
                        f" max_predictions={max_predictions}: pass those values or other files")


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
    if not 0 <= host_index < host_count:
        raise DataError(f"host_index {host_index} is out of range for host_count {host_count}")
    source = _Source(data, "eval")
    _check_model_vocab(source, model_vocab_size)
    if source.format == "bert":
        _check_bert_shapes(source, seq_len, max_predictions)
        instances = tf.data.TFRecordDataset(source.files)
    else:
        if sum(source.docs) == 0:
            raise DataError(f"{source.data_dir} has no eval documents (expected some); prepare again "
                            "with a larger --eval_fraction, or evaluate on other data")
        instances = _document_instances(source.files, seq_len=seq_len, nsp=nsp,
                                        short_seq_prob=short_seq_prob, seed=seed, host=0,
                                        training=False, doc_buffer=0)
    total = int(instances.reduce(np.int64(0), lambda n, _: n + 1))
    num_batches = math.ceil(math.ceil(total / host_count) / batch_size)
    mine = instances.shard(host_count, host_index)
    if source.format == "bert":
        pad = tf.data.Dataset.from_tensors(_zero_bert_record(seq_len, max_predictions)).repeat()
        ds = mine.map(lambda s: (s, 1.0)).concatenate(pad.map(lambda s: (s, 0.0)))
        ds = ds.take(num_batches * batch_size).batch(batch_size)
        ds = ds.map(lambda s, m: {**_parse_bert_records(s, seq_len, max_predictions),
                                  "example_mask": m})
        return DataIterator(ds.prefetch(AUTOTUNE), source.files, num_batches)
    empty = {"tokens": tf.zeros([seq_len], tf.int32), "seg_a": 0, "label": 0, "example_mask": 0.0}
    ds = mine.map(lambda x: {**x, "example_mask": 1.0})
    ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat()).take(num_batches * batch_size)
    ds = ds.batch(batch_size).enumerate()
    word_starts = _word_starts(source, whole_word)
    mask_seed = _mix(seed, 0, "eval-mask")
    ds = ds.map(lambda i, b: _features(
        i, b, seq_len=seq_len, max_predictions=max_predictions, vocab_size=source.vocab_size(),
        mask_rate=mask_rate, word_starts=word_starts, mask_seed=mask_seed + host_index),
        num_parallel_calls=AUTOTUNE)
    return DataIterator(ds.prefetch(AUTOTUNE), source.files, num_batches)


def _zero_bert_record(seq_len: int, max_predictions: int) -> bytes:
    """A serialized all-zero instance: the padding rows of the last eval batches."""
    def ints(n):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[0] * n))
    feature = {k: ints(seq_len) for k in ("input_ids", "input_mask", "segment_ids")}
    feature.update({k: ints(max_predictions) for k in ("masked_lm_positions", "masked_lm_ids")})
    feature["masked_lm_weights"] = tf.train.Feature(
        float_list=tf.train.FloatList(value=[0.0] * max_predictions))
    feature["next_sentence_labels"] = ints(1)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
