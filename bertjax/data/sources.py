"""What the pre-training pipeline reads: prepared document shards or google-research/bert records.

`Source` resolves the `data` argument of the iterators: a directory written by bertjax.prepare
(its metadata.json lists the shards) or TFRecord files made by google-research/bert's
create_pretraining_data.py (already paired and masked; features stored as int64 lists and float
weights). This module also assigns files to hosts. Reading a whole file to find corruption is
records.py's.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from bertjax.data import fs
from bertjax.data import prepare as prepare_lib
from bertjax.data import records
from bertjax.data import tokenizer as tok_lib
from bertjax.data.errors import DataError

BERT_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
             "masked_lm_weights", "next_sentence_labels")


def host_files(files: Sequence[str], host_index: int, host_count: int) -> list[str]:
    """The files host `host_index` of `host_count` reads: every host_count-th one.

    Hosts' shares are disjoint and together cover every file.

    Args:
      files: all files, in the same order on every host.
      host_index, host_count: this host and the number of hosts.

    Returns:
      This host's files.
    """
    check_host(host_index, host_count)
    if len(files) < host_count:
        raise DataError(f"only {len(files)} data files for {host_count} hosts (expected at least "
                        "one file per host); prepare again with --num_shards at least the host "
                        "count, ideally a multiple of it")
    return list(files[host_index::host_count])


def check_host(host_index: int, host_count: int) -> None:
    """DataError unless 0 <= host_index < host_count."""
    if not 0 <= host_index < host_count:
        raise DataError(f"host_index {host_index} is out of range for host_count {host_count} "
                        "(expected 0 <= host_index < host_count)")


class Source:
    """The resolved `data` argument.

    Attributes:
      format: "documents" (prepared directory) or "bert" (google-research/bert records).
      files: the split's files in a fixed order; docs: documents per file (documents only).
      meta, data_dir: metadata.json and its directory (documents only).
      bert_shapes: (seq_len, max_predictions) the records were made with (bert only).
    """

    def __init__(self, data: str | Sequence[str], split: str):
        """Resolves and checks `data`; `split` is "train" or "eval" (prepared directories)."""
        self.meta: dict | None = None
        self.data_dir: str | None = None
        self.docs: list[int] | None = None
        self.bert_shapes: tuple[int, int] | None = None
        if isinstance(data, str) and fs.path(data).is_dir():
            self._init_documents(data, split)
        else:
            self._init_bert(data)

    def _init_documents(self, data_dir: str, split: str) -> None:
        self.format, self.data_dir = "documents", data_dir
        self.meta = prepare_lib.load_metadata(data_dir)
        self.files = prepare_lib.shard_files(data_dir, self.meta, split)
        self.docs = [s["documents"] for s in self.meta["splits"][split]["shards"]]

    def _init_bert(self, data: str | Sequence[str]) -> None:
        self.format = "bert"
        self.files = records.expand_files(data)
        first = next(iter(tf.data.TFRecordDataset(self.files[0]).take(1)), None)
        feature = tf.train.Example.FromString(first.numpy()).features.feature if first is not None \
            else {}
        if {"tokens", "sentence_lengths"} <= set(feature):
            raise DataError(f"{self.files[0]} holds bertjax documents; pass its directory (which "
                            "has metadata.json) instead of the files")
        if not set(BERT_KEYS) <= set(feature):
            raise DataError(f"{self.files[0]} has features {sorted(feature)}, expected "
                            f"google-research/bert's {BERT_KEYS} or a directory prepared by python "
                            "-m bertjax.prepare")
        self.bert_shapes = (len(feature["input_ids"].int64_list.value),
                            len(feature["masked_lm_positions"].int64_list.value))

    @property
    def vocab_size(self) -> int | None:
        """Tokenizer size of prepared data (None for google-research/bert records)."""
        return self.meta["vocab_size"] if self.meta else None

    def check(self, seq_len: int, max_predictions: int, whole_word: bool,
              model_vocab_size: int | None) -> None:
        """DataError if the pipeline arguments do not fit this data."""
        if self.bert_shapes and self.bert_shapes != (seq_len, max_predictions):
            raise DataError(f"{self.files[0]} was made with max_seq_length={self.bert_shapes[0]}, "
                            f"max_predictions_per_seq={self.bert_shapes[1]}; expected "
                            f"seq_len={seq_len}, max_predictions={max_predictions}: pass those "
                            "values or other files")
        if whole_word and self.format == "bert":
            raise DataError("whole_word masking needs documents prepared by python -m "
                            "bertjax.prepare; google-research/bert files are already masked")
        if model_vocab_size is not None and self.vocab_size and self.vocab_size > model_vocab_size:
            raise DataError(f"the data's tokenizer has {self.vocab_size} pieces but the model "
                            f"vocab_size is {model_vocab_size} (expected model >= tokenizer); set "
                            f"the model vocab_size to at least {self.vocab_size} or prepare again "
                            f"with --vocab_size {model_vocab_size}")

    def word_starts(self) -> np.ndarray:
        """bool [vocab]: pieces that begin a word, from the prepared data's tokenizer (a
        sentencepiece word mark, or not a WordPiece "##" continuation)."""
        return self._tokenizer().word_start_mask()

    @property
    def special_ids(self) -> dict[str, int]:
        """The special tokens' ids by name as the data's tokenizer places them (metadata.json's
        ``special_ids``; sentencepiece's 0..4 for google-research/bert records)."""
        return dict((self.meta or {}).get("special_ids") or tok_lib.SPECIAL_TOKENS)

    def regular_mask(self) -> np.ndarray | None:
        """bool [vocab]: the ids masking may choose and draw (WordPiece data: all but the special
        tokens and reserved slots); None for sentencepiece's fixed layout (ids >= 5)."""
        if not self.meta or self.meta.get("tokenizer_type") != prepare_lib.WORDPIECE:
            return None
        return self._tokenizer().regular_mask()

    def _tokenizer(self):
        return prepare_lib.load_tokenizer(os.path.join(self.data_dir, self.meta["tokenizer"]))


def parse_documents(serialized: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """A batch of serialized documents -> (tokens, sentence_lengths), ragged int32 [D, None]."""
    feats = tf.io.parse_example(serialized, {
        "tokens": tf.io.RaggedFeature(tf.int64), "sentence_lengths": tf.io.RaggedFeature(tf.int64)})
    return tf.cast(feats["tokens"], tf.int32), tf.cast(feats["sentence_lengths"], tf.int32)


def parse_bert_records(serialized: tf.Tensor, seq_len: int,
                       max_predictions: int) -> dict[str, tf.Tensor]:
    """A batch of google-research/bert records -> int32 features, float32 masked_lm_weights."""
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


def zero_bert_record(seq_len: int, max_predictions: int) -> bytes:
    """A serialized all-zero google-research/bert instance: padding rows of eval batches."""
    def ints(n):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[0] * n))
    feature = {k: ints(seq_len) for k in ("input_ids", "input_mask", "segment_ids")}
    feature.update({k: ints(max_predictions) for k in ("masked_lm_positions", "masked_lm_ids")})
    feature["masked_lm_weights"] = tf.train.Feature(
        float_list=tf.train.FloatList(value=[0.0] * max_predictions))
    feature["next_sentence_labels"] = ints(1)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
