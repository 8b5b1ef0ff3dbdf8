"""The tf.data pre-training pipeline: masking statistics, structure, hosts, determinism, resume.

Tolerances of the statistics (over >= 100k masked tokens, so one standard error of a 10% share is
about 0.001): masked share of regular tokens 0.15 +- 0.005 (the per-sequence budget is rounded);
80/10/10 split +- 0.01; IsNext rate 0.5 +- 0.03 (~6k correlated examples, and one-sentence
documents are always random); mean non-padding length between 0.80 L and 0.953 L for NSP (0.953 L
is the expected target length with short_seq_prob 0.1; document ends make sequences shorter) and
above 0.85 L for packed MLM-only sequences (only the sentence that does not fit is left out).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from bertjax.data import pretraining, sources, tokenizer as tok_lib
from bertjax.data.errors import DataError

L, P = 128, 20


def collect(it, min_masked: int = 0, batches: int = 0) -> dict[str, np.ndarray]:
    """Concatenated batches: at least `batches` of them and `min_masked` masked tokens."""
    out, masked = [], 0
    while len(out) < batches or masked < min_masked:
        out.append(next(it))
        masked += int(out[-1]["masked_lm_weights"].sum())
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def originals(b: dict[str, np.ndarray]) -> np.ndarray:
    """input_ids with the masked positions restored to their labels."""
    ids = b["input_ids"].copy()
    rows, slots = np.nonzero(b["masked_lm_weights"])
    ids[rows, b["masked_lm_positions"][rows, slots]] = b["masked_lm_ids"][rows, slots]
    return ids


def check_structure(b: dict[str, np.ndarray], nsp: bool) -> None:
    ids, mask, seg = originals(b), b["input_mask"], b["segment_ids"]
    lengths = mask.sum(1)
    assert (mask == (np.arange(L)[None] < lengths[:, None])).all()  # padding only at the end
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] != 0).all()
    assert (ids[:, 0] == tok_lib.CLS_ID).all()
    assert (ids[np.arange(len(ids)), lengths - 1] == tok_lib.SEP_ID).all()
    if nsp:
        first_sep = np.argmax(ids == tok_lib.SEP_ID, axis=1)
        assert ((ids == tok_lib.SEP_ID).sum(1) == 2).all()
        assert (seg == ((np.arange(L)[None] > first_sep[:, None]) & (mask == 1))).all()
        assert set(np.unique(b["next_sentence_labels"])) == {0, 1}
    else:
        assert (seg == 0).all() and (b["next_sentence_labels"] == 0).all()
    # Prediction slots: used ones first, ascending positions inside the sequence; the rest zero.
    w = b["masked_lm_weights"]
    assert set(np.unique(w)) <= {0.0, 1.0}
    assert (np.diff(w, axis=1) <= 0).all()
    pos = b["masked_lm_positions"]
    assert (np.where(w[:, 1:] > 0, np.diff(pos, axis=1), 1) > 0).all()
    assert (pos[w == 0] == 0).all() and (b["masked_lm_ids"][w == 0] == 0).all()
    assert (pos[w > 0] < np.repeat(lengths, P).reshape(-1, P)[w > 0]).all()


@pytest.mark.parametrize("nsp", [True, False])
def test_masking_statistics(prepared, nsp):
    it = pretraining.make_pretraining_iterator(prepared, batch_size=64, seq_len=L,
                                               max_predictions=P, seed=0, nsp=nsp)
    b = collect(it, min_masked=100_000)
    check_structure(b, nsp)
    ids, orig, w = b["input_ids"], originals(b), b["masked_lm_weights"] > 0
    rows = np.nonzero(w)[0]
    pos = b["masked_lm_positions"][w]
    labels, seen = orig[rows, pos], ids[rows, pos]
    n = len(labels)
    assert n >= 100_000
    assert (labels >= tok_lib.NUM_SPECIAL).all()  # never [PAD] [UNK] [CLS] [SEP] [MASK]
    assert abs(n / (orig >= tok_lib.NUM_SPECIAL).sum() - 0.15) < 0.005
    assert abs((seen == tok_lib.MASK_ID).mean() - 0.8) < 0.01
    assert abs((seen == labels).mean() - 0.1) < 0.01
    replaced = (seen != tok_lib.MASK_ID) & (seen != labels)
    assert abs(replaced.mean() - 0.1) < 0.01
    assert (seen[replaced] >= tok_lib.NUM_SPECIAL).all()
    unmasked = np.ones_like(ids, bool)
    unmasked[rows, pos] = False
    assert (ids[unmasked] == orig[unmasked]).all()  # nothing else was changed
    mean_len = b["input_mask"].sum(1).mean()
    if nsp:
        assert abs(b["next_sentence_labels"].mean() - 0.5) < 0.03
        assert 0.80 * L <= mean_len <= 0.953 * L
    else:
        assert mean_len >= 0.85 * L


def test_whole_word_masking_masks_every_piece(prepared):
    starts = tok_lib.Tokenizer.load(os.path.join(prepared, "tokenizer.model")).word_start_mask()
    it = pretraining.make_pretraining_iterator(prepared, batch_size=64, seq_len=L,
                                               max_predictions=P, seed=1, whole_word=True)
    b = collect(it, min_masked=30_000)
    check_structure(b, nsp=True)
    orig = originals(b)
    masked = np.zeros_like(orig)
    rows, slots = np.nonzero(b["masked_lm_weights"])
    masked[rows, b["masked_lm_positions"][rows, slots]] = 1
    regular = orig >= tok_lib.NUM_SPECIAL
    prev_regular = np.pad(regular[:, :-1], ((0, 0), (1, 0)))
    word_start = regular & (starts[orig] | ~prev_regular)
    word = np.cumsum(word_start, axis=1) + np.arange(len(orig))[:, None] * (L + 1)  # global id
    size = np.bincount(word[regular], minlength=word.max() + 1)
    hit = np.bincount(word[regular], weights=masked[regular], minlength=word.max() + 1)
    assert ((hit == 0) | (hit == size)).all()  # every chosen word completely
    assert ((hit > 0) & (size >= 2)).sum() > 1000  # ... and many of them have several pieces
    assert (orig[masked == 1] >= tok_lib.NUM_SPECIAL).all()
    assert 0.13 < masked.sum() / regular.sum() <= 0.155  # a word that does not fit ends the choice


def _ngrams(seq, n=6):
    return {tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)}


def test_hosts_read_disjoint_files_that_cover_every_document(prepared, read_shard):
    its = [pretraining.make_pretraining_iterator(prepared, batch_size=32, seq_len=L,
                                                 max_predictions=P, host_index=h, host_count=2)
           for h in range(2)]
    meta_files = sources.Source(prepared, "train").files
    assert not set(its[0].files) & set(its[1].files)
    assert sorted(its[0].files + its[1].files) == sorted(meta_files)
    ids = [[i for f in it.files for i, _ in read_shard(f)] for it in its]
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(i for f in meta_files for i, _ in read_shard(f))
    # Segment A of every instance is text of one of this host's own documents.
    for it in its:
        own = set().union(*(_ngrams(t) for f in it.files for _, t in read_shard(f)))
        b = collect(it, batches=4)
        orig = originals(b)
        for row in orig:
            a = row[1:np.argmax(row == tok_lib.SEP_ID)]
            assert _ngrams(a) <= own
    with pytest.raises(DataError, match="only 4 data files for 5 hosts"):
        pretraining.make_pretraining_iterator(prepared, batch_size=8, seq_len=L,
                                              max_predictions=P, host_index=0, host_count=5)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_same_seed_same_batches_and_exact_resume(prepared, tmp_path):
    def make(seed=7):
        return pretraining.make_pretraining_iterator(
            prepared, batch_size=16, seq_len=L, max_predictions=P, seed=seed, host_index=1,
            host_count=2, whole_word=True)

    reference = [next(it) for it in [make()] for _ in range(12)]
    assert _same(reference, [next(it) for it in [make()] for _ in range(12)])
    assert not _same(reference[:3], [next(it) for it in [make(seed=8)] for _ in range(3)])
    interrupted = make()
    head = [next(interrupted) for _ in range(5)]
    prefix = interrupted.save(str(tmp_path / "data_host1"))
    resumed = make()
    resumed.restore(prefix)
    assert _same(head + [next(resumed) for _ in range(7)], reference)
    with pytest.raises(DataError, match="no data-iterator state"):
        make().restore(str(tmp_path / "missing"))


def test_eval_is_fixed_padded_and_in_lockstep(prepared):
    kw = dict(batch_size=8, seq_len=L, max_predictions=P, seed=3)
    single = pretraining.make_eval_iterator(prepared, **kw)
    everything = list(single)
    masks = np.concatenate([b["example_mask"] for b in everything])
    total = int(masks.sum())
    assert total > 8 and len(masks) == -(-total // 8) * 8  # padded up to whole batches only
    assert masks[:total].all() and not masks[total:].any()
    single.reset()
    assert _same(everything, list(single))
    assert _same(everything, list(pretraining.make_eval_iterator(prepared, **kw)))
    hosts = [list(pretraining.make_eval_iterator(prepared, host_index=h, host_count=3, **kw))
             for h in range(3)]
    assert len({len(h) for h in hosts}) == 1  # the same number of batches everywhere
    assert sum(b["example_mask"].sum() for h in hosts for b in h) == total  # nothing dropped
    for b in (b for h in hosts for b in h):
        pad = b["example_mask"] == 0
        assert b["example_mask"].dtype == np.float32
        assert (b["input_ids"][pad] == 0).all() and (b["masked_lm_weights"][pad] == 0).all()
        check_structure({k: v[~pad] for k, v in b.items()}, nsp=True)


def test_corrupt_record_while_training_names_the_file(prepared, tmp_path):
    import shutil

    out = tmp_path / "corrupt"
    shutil.copytree(prepared, out)
    victim = out / "train-00002-of-00004.tfrecord"
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x55
    victim.write_bytes(bytes(data))
    it = pretraining.make_pretraining_iterator(str(out), batch_size=16, seq_len=L,
                                               max_predictions=P)
    with pytest.raises(DataError, match=f"{victim} is corrupt"):
        for _ in range(1000):
            next(it)


def test_argument_errors(prepared):
    kw = dict(batch_size=8, seq_len=L, max_predictions=P)
    with pytest.raises(DataError, match="model vocab_size is 500"):
        pretraining.make_pretraining_iterator(prepared, model_vocab_size=500, **kw)
    with pytest.raises(DataError, match="max_predictions 200"):
        pretraining.make_pretraining_iterator(prepared, batch_size=8, seq_len=L,
                                              max_predictions=200)
    with pytest.raises(DataError, match="host_index 2 is out of range"):
        pretraining.make_pretraining_iterator(prepared, host_index=2, host_count=2, **kw)
    with pytest.raises(DataError, match="no metadata.json"):
        pretraining.make_pretraining_iterator(os.path.dirname(prepared), **kw)
