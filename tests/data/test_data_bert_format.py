"""TFRecords from google-research/bert's create_pretraining_data.py are read as they are."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bertjax.data import pretraining
from bertjax.data.errors import DataError

L, P = 16, 4


def _write(path, rng, n):
    """n random instances in the original's format (int64 lists, float weights)."""
    rows = []
    with tf.io.TFRecordWriter(str(path)) as w:
        for _ in range(n):
            row = {"input_ids": rng.integers(0, 100, L), "input_mask": rng.integers(0, 2, L),
                   "segment_ids": rng.integers(0, 2, L),
                   "masked_lm_positions": rng.integers(0, L, P),
                   "masked_lm_ids": rng.integers(0, 100, P),
                   "masked_lm_weights": rng.integers(0, 2, P).astype(np.float32),
                   "next_sentence_labels": rng.integers(0, 2, 1)}
            feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=v))
                       if v.dtype == np.float32 else
                       tf.train.Feature(int64_list=tf.train.Int64List(value=v))
                       for k, v in row.items()}
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            w.write(example.SerializeToString())
            rows.append(row)
    return rows


def _key(row):
    return tuple(np.concatenate([np.ravel(row[k]).astype(np.float64) for k in sorted(row)]))


@pytest.fixture(scope="module")
def bert_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    rng = np.random.default_rng(0)
    rows = [_write(d / "part-0.tfrecord", rng, 13), _write(d / "part-1.tfrecord", rng, 9)]
    return str(d / "part-*.tfrecord"), rows


def test_training_reads_values_exactly_from_this_hosts_file(bert_files):
    pattern, rows = bert_files
    it = pretraining.make_pretraining_iterator(pattern, batch_size=4, seq_len=L, max_predictions=P,
                                               host_index=1, host_count=2)
    assert it.files[0].endswith("part-1.tfrecord") and len(it.files) == 1
    spec = it.element_spec
    assert spec["input_ids"] == ((4, L), np.int32)
    assert spec["masked_lm_weights"] == ((4, P), np.float32)
    assert spec["next_sentence_labels"] == ((4,), np.int32)
    own = {_key(r) for r in rows[1]}
    for _ in range(6):  # more than one epoch
        b = next(it)
        for i in range(4):
            assert _key({k: v[i] for k, v in b.items()}) in own


def test_eval_covers_every_record_once_across_hosts(bert_files):
    pattern, rows = bert_files
    hosts = [list(pretraining.make_eval_iterator(pattern, batch_size=4, seq_len=L,
                                                 max_predictions=P, host_index=h, host_count=2))
             for h in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == 3  # 22 records: 11 per host in 3 batches of 4
    seen = []
    for b in (b for h in hosts for b in h):
        for i in np.nonzero(b["example_mask"])[0]:
            seen.append(_key({k: v[i] for k, v in b.items() if k != "example_mask"}))
        pad = b["example_mask"] == 0
        assert (b["input_ids"][pad] == 0).all() and (b["masked_lm_weights"][pad] == 0).all()
    assert sorted(seen) == sorted(_key(r) for part in rows for r in part)


def test_shape_mismatch_and_whole_word_are_refused(bert_files):
    pattern, _ = bert_files
    with pytest.raises(DataError, match="max_seq_length=16"):
        pretraining.make_pretraining_iterator(pattern, batch_size=4, seq_len=128, max_predictions=P)
    with pytest.raises(DataError, match="already masked"):
        pretraining.make_eval_iterator(pattern, batch_size=4, seq_len=L, max_predictions=P,
                                       whole_word=True)
