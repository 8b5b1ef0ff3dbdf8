"""Packing NSP pairs into shared rows (bertjax/data/packing.py) and the packed training pipeline.

The same deterministic pair stream (the eval ordering of the prepared slice) is built once with
one pair per row and once packed: unpacking the packed rows by their pack ids must give back
exactly the same pairs, each once, with positions restarting and NSP slots on their [CLS].
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from bertjax.data import pretraining, sources, tokenizer as tok_lib
from bertjax.data.errors import DataError

L, P, M = 128, 20, 3


def _rows(prepared, pairs_per_row):
    source = sources.Source(prepared, "eval")
    ds = pretraining.document_instances(source.files, seq_len=L, nsp=True, short_seq_prob=0.1,
                                        seed=5, host=0, training=False, doc_buffer=0,
                                        pairs_per_row=pairs_per_row)
    return [{k: v.numpy() for k, v in row.items()} for row in ds]


def _pair(tokens, types, label):
    return tuple(tokens.tolist()), tuple(types.tolist()), int(label)


def test_packed_rows_hold_every_pair_once_with_positions_and_nsp_slots(prepared):
    single = _rows(prepared, 1)
    expected = collections.Counter()
    for r in single:
        n = int((r["tokens"] > 0).sum())
        types = (np.arange(n) >= r["seg_a"]).astype(np.int32)
        expected[_pair(r["tokens"][:n], types, r["label"])] += 1

    packed = _rows(prepared, M)
    found = collections.Counter()
    for r in packed:
        ids, pack = r["tokens"], r["pack_ids"]
        n_pairs = int(pack.max())
        assert 1 <= n_pairs <= M
        real = pack > 0
        assert (real == (ids > 0)).all() and real[: real.sum()].all()  # padding only at the end
        assert r["nsp_weights"].tolist() == [1.0] * n_pairs + [0.0] * (M - n_pairs)
        for slot in range(n_pairs):
            span = np.nonzero(pack == slot + 1)[0]
            assert (np.diff(span) == 1).all()  # one contiguous span per pair
            start = r["nsp_positions"][slot]
            assert start == span[0] and ids[start] == tok_lib.CLS_ID
            assert (r["position_ids"][span] == np.arange(len(span))).all()
            found[_pair(ids[span], r["type_ids"][span], r["nsp_labels"][slot])] += 1
        assert (r["position_ids"][~real] == 0).all() and (r["type_ids"][~real] == 0).all()
        assert (r["nsp_positions"][n_pairs:] == 0).all() and (r["nsp_labels"][n_pairs:] == 0).all()
    assert found == expected
    fill_single = np.mean([(r["tokens"] > 0).mean() for r in single])
    fill_packed = np.mean([(r["pack_ids"] > 0).mean() for r in packed])
    assert len(packed) < len(single) and fill_packed > fill_single
    assert fill_packed > 0.95  # first-fit decreasing leaves little room in a group's rows


def test_packed_training_batches_mask_real_tokens_and_resume_exactly(prepared, tmp_path):
    def make():
        return pretraining.make_pretraining_iterator(
            prepared, batch_size=8, seq_len=L, max_predictions=P, seed=2, pairs_per_row=M)

    it = make()
    spec = it.element_spec
    assert spec["next_sentence_positions"][0] == spec["next_sentence_labels"][0] == (8, M)
    assert spec["pack_ids"][0] == spec["position_ids"][0] == (8, L)
    batches = [next(it) for _ in range(30)]
    for b in batches:
        w = b["masked_lm_weights"] > 0
        rows = np.nonzero(w)[0]
        picked = b["masked_lm_positions"][w]
        assert (b["pack_ids"][rows, picked] > 0).all()  # never on padding
        assert (b["masked_lm_ids"][w] >= tok_lib.NUM_SPECIAL).all()  # never [CLS]/[SEP]
        assert (b["input_mask"] == (b["pack_ids"] > 0)).all()
        used = b["next_sentence_weights"] > 0
        cls = np.take_along_axis(b["input_ids"], b["next_sentence_positions"], axis=1)
        assert (cls[used] == tok_lib.CLS_ID).all()
    # Most pairs nearly fill a row; short ones fill the gaps (one pair per row: ~92% here).
    assert sum(int(b["next_sentence_weights"].sum()) for b in batches) > 30 * 8
    assert np.mean([b["input_mask"].mean() for b in batches]) > 0.97
    interrupted = make()
    head = [next(interrupted) for _ in range(2)]
    prefix = interrupted.save(str(tmp_path / "packed"))
    resumed = make()
    resumed.restore(prefix)
    again = head + [next(resumed) for _ in range(4)]
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(batches[:6], again) for k in x)


@pytest.mark.parametrize("kwargs, message", [
    ({"pairs_per_row": 0}, "pairs_per_row 0 must be at least 1"),
    ({"pairs_per_row": 2, "nsp": False}, "already packed across documents"),
])
def test_packing_argument_errors(prepared, kwargs, message):
    with pytest.raises(DataError, match=message):
        pretraining.make_pretraining_iterator(prepared, batch_size=8, seq_len=L,
                                              max_predictions=P, **kwargs)
